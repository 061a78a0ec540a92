"""snnexp export: the NIR graph checked against NIR's own equations and, round trip (nir.write -> nir.read ->
a second framework's importer), against Norse and snnTorch run on the same inputs, spike for spike.

`pytest tests/test_export.py -s` prints the agreement figures."""

import contextlib
import io
import shutil
import warnings
from functools import partial

import nir
import numpy as np
import pytest
import torch

from conftest import run_snnexp
from snnexp.data import digits
from snnexp.errors import CheckpointError
from snnexp.export import ExportError, chain, export_checkpoint, to_nir
from snnexp.nn.models import SpecNet, SpikingResNet
from snnexp.nn.neurons import IF, LIF, PLIF, STBPLIF, SpikingNeuron
from snnexp.nn.neurons.functional import lif_multistep_reference
from snnexp.nn.norms import BatchNormOverTime, NeuNorm, NoNorm
from snnexp.nn.surrogate import ATan
from snnexp.train.build import model_from_checkpoint
from snnexp.train.checkpoint import load as load_checkpoint

DT = 1e-4
T = 8


# --- inputs, our spikes, the peers' spikes ----------------------------------------------------------------------

def digit_inputs(n: int, spikes: bool) -> torch.Tensor:
    """[T, n, 1, 8, 8]: test digits fed at every step as they are (direct coding, what the networks are trained
    on), or as Bernoulli spike trains with the pixel value as probability (seeded)."""
    x = digits().test.tensors[0][:n]
    x = x.unsqueeze(0).expand(T, *x.shape)
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(0)) if spikes else x.contiguous()


def our_spikes(model, x_seq):
    """Spikes [T, N, ...] of each spiking layer of our network, in order, and its output."""
    layers = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: layers.append(out.detach()))
             for m in model.modules() if isinstance(m, SpikingNeuron)]
    with torch.no_grad():
        out = model.eval()(x_seq)
    for h in hooks:
        h.remove()
    return layers, out


def neuron_names(graph):
    return [name for name in chain(graph) if isinstance(graph.nodes[name], (nir.LIF, nir.IF))]


def node_types(graph):
    return [type(graph.nodes[name]).__name__ for name in chain(graph)]


def peer_spikes(peer, graph, x_seq, reset=lambda peer: None, output=lambda o: o):
    """Run an imported graph one sample and one time step at a time, unbatched (NIR shapes have no batch
    dimension), recording the spikes of each neuron node (a forward hook on the peer's module of that name)."""
    names = neuron_names(graph)
    modules = dict(peer.named_modules())
    steps = {name: [] for name in names}
    hooks = [modules[name].register_forward_hook(
        lambda mod, inp, out, name=name: steps[name].append(out[0] if isinstance(out, tuple) else out))
        for name in names]
    outs = []
    with torch.no_grad():
        for b in range(x_seq.shape[1]):
            reset(peer)
            state = None
            for t in range(x_seq.shape[0]):
                o, state = peer(x_seq[t, b], state)
                outs.append(output(o))
    for h in hooks:
        h.remove()
    n, steps_n = x_seq.shape[1], x_seq.shape[0]
    layers = [torch.stack(steps[name]).unflatten(0, (n, steps_n)).transpose(0, 1) for name in names]
    return layers, torch.stack(outs).unflatten(0, (n, steps_n)).transpose(0, 1)


class NIRThreshold(torch.nn.Module):
    """NIR's Threshold node by its definition, z = 1 where x > threshold (Norse 1.1 has no importer for it)."""

    def __init__(self, node: nir.Threshold):
        super().__init__()
        self.threshold = torch.as_tensor(node.threshold)

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)


def norse_import(graph):
    """norse.torch.from_nir(graph, dt=...) with the graph's dt, plus NIR's Threshold (which Norse 1.1 cannot
    map: its from_nir stops with a KeyError); every other node is Norse's own mapping."""
    norse_nir = pytest.importorskip("norse.torch.utils.import_nir")
    import nirtorch

    def node_map(node):
        if isinstance(node, nir.Threshold):
            return NIRThreshold(node)
        return norse_nir._import_norse_module(node, dt=float(graph.metadata["dt"]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nirtorch.load is deprecated in favour of nir_to_torch
        return nirtorch.load(graph, node_map)


def snntorch_import(graph):
    snn = pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")  # snnTorch's importer runs the graph with nirtorch
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its threshold scaling
        peer = import_from_nir(graph)

    def reset(net):
        for m in net.modules():
            if isinstance(m, snn.Leaky):
                m.reset_mem()

    return peer, reset


def round_trip(graph, tmp_path):
    path = tmp_path / "net.nir"
    nir.write(path, graph)
    return nir.read(path)


def agreement(ours, theirs, names, label):
    """Per neuron layer: the fraction of (time step, sample, neuron) whose spike is the same; printed."""
    figures = {}
    for name, a, b in zip(names, ours, theirs):
        assert a.shape == b.shape, name
        figures[name] = (a == b).float().mean().item()
        print(f"{label}: {name}: {figures[name]:.6f} of {a.numel()} spikes agree; ours {int(a.sum())}, peer "
              f"{int(b.sum())}")
    return figures


def train_briefly(model, steps=40, seed=0):
    """A few Adam steps on the digits (direct input, MSE on the rates), then eval mode: a trained network."""
    torch.manual_seed(seed)
    x, y = digits().train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(y), (64,))
        rate = model(x[idx].unsqueeze(0).expand(4, -1, -1, -1, -1)).mean(0)
        rate = rate.unflatten(-1, (10, -1)).mean(-1)
        loss = torch.nn.functional.mse_loss(rate, torch.nn.functional.one_hot(y[idx], 10).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def spec_net(spec, neuron, norm=partial(BatchNormOverTime), outputs=10):
    return SpecNet(spec, (1, 8, 8), outputs, neuron=neuron, norm=norm)


# --- the CLI on the default network --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """The default run (digits, convnet {c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10, PLIF, BN), trained for two
    epochs, and `snnexp export` of its checkpoint."""
    cwd = tmp_path_factory.mktemp("export")
    run_snnexp("train", "trainer.epochs=2", "trainer.progress=false", "hydra.run.dir=run", cwd=cwd)
    job = cwd / "sweep" / "neuron=plif,trainer.T=4" / "checkpoints"  # named like a sweep's job: '=' and ','
    job.mkdir(parents=True)
    shutil.copy(cwd / "run" / "checkpoints" / "best.pt", job)
    proc = run_snnexp("export", "checkpoint=sweep/neuron=plif,trainer.T=4/checkpoints/best.pt", "format=nir",
                      "out=digits.nir", "hydra.run.dir=ex", cwd=cwd)
    return cwd, proc.stdout


def test_export_writes_the_default_network_as_nir(default_export):
    cwd, stdout = default_export
    graph = nir.read(cwd / "digits.nir")
    types = node_types(graph)
    # BN folded into the convs; max pooling of spikes = sum pooling + threshold; the voting layer a Linear
    assert types == ["Input", "Conv2d", "LIF", "SumPool2d", "Threshold", "Conv2d", "LIF", "SumPool2d", "Threshold",
                     "Flatten", "Linear", "LIF", "Linear", "Output"]
    assert float(graph.metadata["dt"]) == DT and int(graph.metadata["time_steps"]) == 4
    assert "wrote" in stdout and "digits.nir" in stdout and "plif1" in stdout and "SumPool2d" in stdout
    # the PLIF layers' learned tau, in time steps, times dt
    model, _ = model_from_checkpoint(load_checkpoint(cwd / "run" / "checkpoints" / "best.pt"))
    plifs = [m for m in model if isinstance(m, PLIF)]
    lifs = [graph.nodes[name] for name in neuron_names(graph)]
    for plif, node in zip(plifs, lifs):
        assert np.allclose(node.tau, plif.tau * DT, rtol=1e-6) and np.all(node.r == 1) and np.all(node.v_reset == 0)
    assert abs(plifs[0].tau - 2.0) > 1e-4  # trained away from tau0


def test_norse_runs_the_default_export_with_the_same_spikes(default_export, tmp_path):
    """Every spike of every layer, on the test digits as trained (direct input) and as spike trains."""
    cwd, _ = default_export
    graph = nir.read(cwd / "digits.nir")
    model, _ = model_from_checkpoint(load_checkpoint(cwd / "run" / "checkpoints" / "best.pt"))
    peer = norse_import(graph)
    names = neuron_names(graph)
    for spikes in (False, True):
        x = digit_inputs(64, spikes)
        ours, out = our_spikes(model, x)
        theirs, peer_out = peer_spikes(peer, graph, x)
        figures = agreement(ours, theirs, names, f"norse, default PLIF convnet, {'spike' if spikes else 'direct'} "
                                                 f"input")
        assert all(f == 1.0 for f in figures.values())
        assert all(layer.sum() > 0 for layer in ours)  # the layers do spike
        assert torch.allclose(out, peer_out, atol=1e-6)  # the voting layer's average of the same spikes


def test_export_of_a_checkpoint_written_before_export_existed(default_export, tmp_path):
    """Older checkpoints do not record the input shape: the dataset is opened to find it."""
    cwd, _ = default_export
    state = load_checkpoint(cwd / "run" / "checkpoints" / "best.pt")
    del state["input_shape"], state["num_classes"]
    torch.save(state, tmp_path / "old.pt")
    out, graph = export_checkpoint(tmp_path / "old.pt")
    assert out == tmp_path / "old.nir" and out.is_file()
    assert graph.nodes["input"].input_type["input"].tolist() == [1, 8, 8]


# --- the other neurons, against the peers ----------------------------------------------------------------------

AVG_NET = "c8k3s1-BN-SN-APk2s2-FC10-BN-SN"  # the pooling snnTorch imports (AvgPool2d); BN folded into a Linear


@pytest.mark.parametrize("neuron", [
    pytest.param(partial(LIF, tau=2.0), id="lif"),
    pytest.param(partial(PLIF, tau0=2.0), id="plif"),
    pytest.param(partial(STBPLIF, k=0.2, v_threshold=0.5), id="stbp"),  # decay_input false: r = tau
])
def test_snntorch_runs_the_export_with_the_same_spikes(neuron, tmp_path):
    """snnTorch's importer (dt = 1e-4 built in) steps mem = beta mem + I with beta = 1 - dt / tau_nir and fires
    on mem > v_threshold / (r dt / tau_nir), reset to zero: our neuron exactly."""
    model = train_briefly(spec_net(AVG_NET, neuron))
    graph = round_trip(to_nir(model, (1, 8, 8), dt=DT), tmp_path)
    peer, reset = snntorch_import(graph)
    x = digit_inputs(64, spikes=True)
    ours, out = our_spikes(model, x)
    theirs, peer_out = peer_spikes(peer, graph, x, reset=reset)
    figures = agreement(ours, theirs, neuron_names(graph), f"snntorch, {AVG_NET}, {neuron.func.__name__}")
    assert all(f == 1.0 for f in figures.values()) and torch.equal(out, peer_out)
    assert all(layer.sum() > 0 for layer in ours)


def test_norse_runs_an_if_network_with_the_same_spikes(tmp_path):
    """IF: Norse steps v[t] = v[t-1] + I[t], fires on v > v_th, resets to 0."""
    model = train_briefly(spec_net("c8k3s1-BN-SN-MPk2s2-FC100-SN-APk10s10", partial(IF)))
    graph = round_trip(to_nir(model, (1, 8, 8), dt=DT), tmp_path)
    x = digit_inputs(64, spikes=True)
    ours, _ = our_spikes(model, x)
    theirs, _ = peer_spikes(norse_import(graph), graph, x)
    figures = agreement(ours, theirs, neuron_names(graph), "norse, IF convnet")
    assert all(f == 1.0 for f in figures.values()) and all(layer.sum() > 0 for layer in ours)


# --- against NIR's equations, for what no peer reads -------------------------------------------------------------

def nir_euler(node, currents: np.ndarray, dt: float) -> np.ndarray:
    """A NIR LIF or IF node stepped by its definition: tau v' = (v_leak - v) + r I (IF: v' = r I, one input per
    step), forward Euler with step dt; spike where v > v_threshold, then v = v_reset."""
    v = np.array(node.v_reset, dtype=np.float64)
    out = []
    for current in currents:
        if isinstance(node, nir.LIF):
            v = v + dt / node.tau.astype(np.float64) * (node.v_leak - v + node.r * current)
        else:
            v = v + node.r * current
        z = v > node.v_threshold
        v = np.where(z, node.v_reset, v)
        out.append(z.astype(np.float64))
    return np.stack(out)


@pytest.mark.parametrize("neuron", [
    pytest.param(LIF(tau=2.0), id="lif"),
    pytest.param(LIF(tau=3.5, decay_input=False, v_reset=0.3), id="lif-no-decay-input-reset-0.3"),
    pytest.param(LIF(tau=1.25, v_threshold=0.7, v_reset=-0.2), id="lif-reset-below-0"),
    pytest.param(PLIF(tau0=4.0), id="plif"),
    pytest.param(STBPLIF(k=0.25, v_threshold=0.6), id="stbp"),
    pytest.param(IF(v_reset=0.1), id="if-reset-0.1"),
])
def test_the_nir_node_is_our_neuron_under_euler_steps_of_dt(neuron):
    """NIR's ODE, integrated with the graph's dt, gives our spikes (docs/science.md, section 1) step for step,
    also where the peers' importers cannot follow (v_leak != 0, r != 1)."""
    torch.manual_seed(0)
    x = 1.5 * torch.randn(50, 4, 30, dtype=torch.float64) + 0.5  # currents that drive every neuron to fire
    tau_inv = None if isinstance(neuron, IF) else 1.0 / neuron.tau
    ours = lif_multistep_reference(x, tau_inv, ATan(), neuron.v_threshold, neuron.v_reset,
                                   getattr(neuron, "decay_input", True))
    from snnexp.export import neuron_node

    for dt in (DT, 1e-3):
        node = neuron_node(neuron, (4, 30), dt)
        spikes = nir_euler(node, x.numpy(), dt)
        assert spikes.sum() > 200
        assert np.array_equal(spikes, ours.numpy())


# --- what NIR cannot express: a message, never a different graph --------------------------------------------------

@pytest.mark.parametrize("build, message", [
    (lambda: spec_net("c8k3s1-SN-BN-FC10-SN", partial(LIF), norm=partial(NeuNorm)), "NeuNorm has no NIR node"),
    (lambda: spec_net("c8k3s1-BN-SN-FC10-SN", partial(LIF, v_reset=None)), "soft reset"),
    (lambda: spec_net("c8k3s1-SN-BN-FC10-SN", partial(LIF)), "BatchNormOverTime follows LIF, not a conv or FC"),
    (lambda: spec_net("c8k3s1-MPk2s2-BN-SN-FC10-SN", partial(LIF), norm=partial(NoNorm)),
     "max pooling of real values has no NIR node"),
    (lambda: SpikingResNet(18, (3, 32, 32), 10, partial(LIF), partial(BatchNormOverTime), width=4),
     "not SpikingResNet"),
])
def test_layers_nir_cannot_express_stop_the_export_with_a_message(build, message):
    with pytest.raises(ExportError, match=message):
        to_nir(build(), (1, 8, 8) if not message.startswith("not Spiking") else (3, 32, 32))


def test_dropout_and_norm_none_are_left_out_as_the_identity():
    model = spec_net("c8k3s1-BN-SN-MPk2s2-DP-FC10-BN-SN", partial(LIF), norm=partial(NoNorm))
    assert node_types(to_nir(model, (1, 8, 8))) == ["Input", "Conv2d", "LIF", "SumPool2d", "Threshold", "Flatten",
                                                    "Linear", "LIF", "Output"]


def test_export_cli_errors(default_export, tmp_path):
    cwd, _ = default_export
    proc = run_snnexp("export", "checkpoint=run/checkpoints/best.pt", "format=onnx", "hydra.run.dir=e1", cwd=cwd,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "snnexp: error: format=onnx: snnexp export writes nir (format=nir)"
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ExportError, match="dt=0.0: the time step must be > 0"):
        export_checkpoint(cwd / "run" / "checkpoints" / "best.pt", dt=0.0)


# --- the spiking transformers: refused at the first layer NIR cannot express ------------------------------------------

def tiny_transformer(name, **kwargs):
    from snnexp.nn.models import QKFormer, SpikeDrivenTransformer, Spikformer

    cls = {"spikformer": Spikformer, "spike_driven_transformer": SpikeDrivenTransformer, "qkformer": QKFormer}[name]
    return cls((1, 8, 8), 10, partial(LIF), partial(BatchNormOverTime), embed_dim=16, heads=2, **kwargs).eval()


def first_block(model):
    from snnexp.nn.models.transformers import Block

    return next(i for i, m in enumerate(model) if isinstance(m, Block))


@pytest.mark.parametrize("name, kwargs, attention, product", [
    ("spikformer", dict(depth=1, patch_size=2), "SpikingSelfAttention", "Q K^T V"),
    ("spike_driven_transformer", dict(depth=1, pooling="0000"), "SpikeDrivenSelfAttention",
     "Q (x) SN(SUM_tokens(K (x) V))"),
    ("qkformer", dict(depths=[1, 1]), "QKAttention", "SN(SUM(Q)) (x) K"),
], ids=["spikformer", "spike_driven_transformer", "qkformer"])
def test_a_transformer_is_refused_at_its_attention(name, kwargs, attention, product):
    """NIR's nodes (nir 1.0) are weighted sums with fixed weights and neurons: none multiplies two signals, which
    every attention does; the tokeniser before it is expressible, so the attention is the first block named."""
    model = tiny_transformer(name, **kwargs)
    block = first_block(model)
    with pytest.raises(ExportError) as e:
        to_nir(model, (1, 8, 8))
    assert str(e.value).startswith(f"layer {block} (Block.attention: {attention}, model={name}): {product} "
                                   f"multiplies spike signals with each other; NIR's nodes are weighted sums")
    assert "no node for a product of two signals" in str(e.value) and "model=convnet" in str(e.value)


def test_a_transformer_without_blocks_is_refused_at_its_residual_sum():
    """depth=0: no attention; the tokeniser's residual (x + SN(BN(conv(x)))) NIR could express, snnexp does not map."""
    model = tiny_transformer("spikformer", depth=0, patch_size=2)
    with pytest.raises(ExportError, match=r"^model=spikformer without attention blocks: its residual sums, which NIR "
                                          r"could express \(a node sums the edges into it\), are not written"):
        to_nir(model, (1, 8, 8))


def test_export_cli_refuses_a_transformer_checkpoint(default_export, tmp_path):
    """The default run's checkpoint with a tiny Spikformer's config and weights in it: `snnexp export` says which
    block NIR cannot express, exit code 2, no traceback."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from snnexp.cli import conf_dir
    from snnexp.train.build import build_model

    cwd, _ = default_export
    state = load_checkpoint(cwd / "run" / "checkpoints" / "best.pt")
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=spikformer", "model.embed_dim=16",
                                                                        "model.heads=2"])
    state["config"] = OmegaConf.to_container(cfg, resolve=True)
    state["model"] = build_model(cfg, [1, 8, 8], 10).state_dict()
    torch.save(state, tmp_path / "spikformer.pt")
    proc = run_snnexp("export", f"checkpoint={tmp_path / 'spikformer.pt'}", "hydra.run.dir=ex", cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    block = first_block(model_from_checkpoint(load_checkpoint(tmp_path / "spikformer.pt"))[0])
    assert proc.stderr.startswith(f"snnexp: error: layer {block} (Block.attention: SpikingSelfAttention, "
                                  f"model=spikformer): Q K^T V multiplies spike signals")
    assert not (tmp_path / "spikformer.nir").exists()
