"""The recurrent spiking layer RFCn (snnexp.nn.recurrent) against its equations written out here, in float64:

    I[t] = BN(W_in x)[t] + W_rec s[t-1],  s[-1] = 0        (BN: the configured norm; none in most tests)
    H[t] = charge(V[t-1], I[t]);  s[t] = Heaviside(H[t] - V_th);  V[t] = reset(H[t], s[t])     (docs/science.md, 1)

and what walks a network through it: the neuron's single-step interface (step == forward), the spec token, the
rsnn model, activity and cost counts worked out by hand, the NIR export stepped by NIR's own equations, and a
training run of the CLI."""

import json
import math
from functools import partial

import nir
import numpy as np
import pytest
import torch

from conftest import run_snnexp
from snnexp.errors import ModelError, SpecError
from snnexp.export import chain, describe, to_nir
from snnexp.nn.layers import Repeated
from snnexp.nn.models import RSNN, SpecNet, format_spec, parse_spec
from snnexp.nn.models.spec import Layer
from snnexp.nn.neurons import IF, LIF, PLIF, STBPLIF
from snnexp.nn.norms import BatchNormOverTime, NoNorm
from snnexp.nn.recurrent import RecurrentFC
from snnexp.report.activity import Activity, spiking_layers
from snnexp.report.cost import static_metrics

F64 = torch.float64
ALPHA = 2.0


def spike(u):
    """Heaviside(u) forward (1 at u = 0), the derivative of atan(pi/2 alpha u) / pi backward: written here, not
    taken from snnexp.nn.surrogate."""
    smooth = torch.atan(math.pi / 2 * ALPHA * u) / math.pi
    return (u >= 0).to(u.dtype) + (smooth - smooth.detach())  # exactly 0 forward


def explicit(x, w_in, w_rec, tau, decay_input, v_th, v_reset, detach_reset=False, norm=lambda d: d):
    """The layer's equations step by step; tau None is IF, v_reset None a soft reset; tau may be a tensor; `norm`
    maps the input currents W_in x [T, B, n]."""
    rest = 0.0 if v_reset is None else v_reset
    v = torch.full((x.shape[1], w_in.shape[0]), rest, dtype=x.dtype)
    s, out = torch.zeros_like(v), []
    drive = norm(x @ w_in.T)
    for t in range(x.shape[0]):
        i = drive[t] + s @ w_rec.T
        if tau is None:
            h = v + i
        elif decay_input:
            h = v + (i - (v - rest)) / tau
        else:
            h = v - (v - rest) / tau + i
        s = spike(h - v_th)
        r = s.detach() if detach_reset else s
        v = h - v_th * r if v_reset is None else h * (1 - r) + v_reset * r
        out.append(s)
    return torch.stack(out)


NEURONS = {  # name: (module, explicit-formula arguments tau, decay_input, v_th, v_reset, detach_reset)
    "lif": (lambda: LIF(tau=2.0), (2.0, True, 1.0, 0.0)),
    "lif-soft-no-decay": (lambda: LIF(tau=3.0, decay_input=False, v_reset=None), (3.0, False, 1.0, None)),
    "lif-detach-reset": (lambda: LIF(tau=1.5, v_reset=-0.25, detach_reset=True), (1.5, True, 1.0, -0.25, True)),
    "if": (lambda: IF(v_threshold=0.75), (None, True, 0.75, 0.0)),
    "plif": (lambda: PLIF(tau0=2.5), None),
    "stbp": (lambda: STBPLIF(k=0.25), (1 / 0.75, False, 0.5, 0.0)),
}


def layer_with(neuron, F=5, n=7, seed=0):
    torch.manual_seed(seed)
    layer = RecurrentFC(F, n, neuron, bias=False).to(F64)
    with torch.no_grad():  # strong enough weights that the recurrence decides spikes
        layer.input.module.weight.normal_(0.4, 1.0)
        layer.recurrent.weight.normal_(0.0, 1.0)
    return layer


@pytest.mark.parametrize("name", sorted(NEURONS))
def test_forward_and_gradients_follow_the_equations(name):
    build, args = NEURONS[name]
    layer = layer_with(build())
    x = torch.rand(12, 3, 5, dtype=F64, requires_grad=True)
    w_in, w_rec = layer.input.module.weight, layer.recurrent.weight
    if name == "plif":
        args = (1 / torch.sigmoid(layer.neuron.w), True, 1.0, 0.0)  # the learned tau, differentiated too
    ours = layer(x)
    theirs = explicit(x, w_in, w_rec, *args)
    assert torch.equal(ours, theirs)
    assert 0.1 < ours.mean() < 0.9  # neither silent nor saturated
    g = torch.randn_like(ours)
    params = [x, w_in, w_rec] + ([layer.neuron.w] if name == "plif" else [])
    got = torch.autograd.grad((ours * g).sum(), params)
    want = torch.autograd.grad((theirs * g).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert a.abs().sum() > 0


def test_bn_normalises_the_input_currents_over_time_and_batch():
    torch.manual_seed(1)
    layer = RecurrentFC(5, 7, LIF(tau=2.0), BatchNormOverTime(7), bias=False).to(F64)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5), layer.norm.bias.uniform_(0.6, 1.2)
        layer.recurrent.weight.normal_(0.0, 1.0)
    x = torch.rand(12, 3, 5, dtype=F64, requires_grad=True)
    gamma, beta = layer.norm.weight, layer.norm.bias

    def bn(d):  # per neuron, over the T x B values, biased variance, eps 1e-5
        mean, var = d.mean((0, 1)), d.var((0, 1), unbiased=False)
        return (d - mean) / torch.sqrt(var + 1e-5) * gamma + beta

    ours = layer(x)
    theirs = explicit(x, layer.input.module.weight, layer.recurrent.weight, 2.0, True, 1.0, 0.0, norm=bn)
    assert torch.equal(ours, theirs) and 0.1 < ours.mean() < 0.9
    g = torch.randn_like(ours)
    params = [x, layer.input.module.weight, gamma, beta]
    for a, b in zip(torch.autograd.grad((ours * g).sum(), params), torch.autograd.grad((theirs * g).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_recurrent_weights_matter():
    layer = layer_with(LIF(tau=2.0))
    x = torch.rand(12, 3, 5, dtype=F64)
    out = layer(x)
    (grad,) = torch.autograd.grad(out.sum(), layer.recurrent.weight)
    assert grad.abs().sum() > 0 and (grad != 0).float().mean() > 0.5  # the gradient reaches W_rec
    with torch.no_grad():
        layer.recurrent.weight.zero_()
    without = layer(x)
    assert not torch.equal(out, without)
    # without W_rec, each step's input is W_in x[t] alone: the plain neuron on the input currents
    assert torch.equal(without, LIF(tau=2.0, backend="reference")(x @ layer.input.module.weight.T))


def test_repeated_input_is_the_sequence_of_copies():
    """Direct coding: RFC(Repeated(x, T)) == RFC on the T copies, outputs and gradients."""
    layer = layer_with(PLIF(tau0=2.0))
    x = torch.rand(3, 5, dtype=F64, requires_grad=True)
    copies = x.unsqueeze(0).repeat(6, 1, 1)
    a, b = layer(Repeated(x, 6)), layer(copies)
    assert torch.equal(a, b)
    g = torch.randn_like(a)
    ga = torch.autograd.grad((a * g).sum(), [x, *layer.parameters()])
    gb = torch.autograd.grad((b * g).sum(), [x, *layer.parameters()])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v)


# -- the single-step interface ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(NEURONS))
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_looping_step_is_forward(name, backend):
    neuron = NEURONS[name][0]().to(F64)
    neuron.backend = backend
    torch.manual_seed(1)
    x = (1.5 * torch.randn(10, 4, 6, dtype=F64) + 0.6).requires_grad_()
    forward = neuron(x)
    state, stepped = neuron.initial_state(x[0]), []
    for x_t in x:
        s, state = neuron.step(x_t, state)
        stepped.append(s)
    stepped = torch.stack(stepped)
    assert torch.equal(forward, stepped) and 0 < forward.mean() < 1
    g = torch.randn_like(forward)
    params = [x, *neuron.parameters()]
    for a, b in zip(torch.autograd.grad((forward * g).sum(), params), torch.autograd.grad((stepped * g).sum(), params)):
        torch.testing.assert_close(a, b)


def test_initial_state_is_rest():
    x = torch.rand(2, 3)
    assert torch.equal(LIF(v_reset=-0.5).initial_state(x), torch.full_like(x, -0.5))
    assert torch.equal(LIF(v_reset=None).initial_state(x), torch.zeros_like(x))


# -- spec and model ---------------------------------------------------------------------------------------------

def test_the_spec_token():
    nodes = parse_spec("FC10-RFC256-{RFC8-DP}*2-FC20-SN")
    assert nodes[0] == Layer("fc", (10,)) and nodes[1] == Layer("rfc", (256,))
    assert format_spec(nodes) == "FC10-RFC256-{RFC8-DP}*2-FC20-SN"
    assert parse_spec(format_spec(nodes)) == nodes
    for bad, problem in (("RFC", "unknown token 'RFC'"), ("RFC0-FC2-SN", "needs sizes >= 1"), ("RFCx", "unknown")):
        with pytest.raises(SpecError, match=problem) as e:
            parse_spec(bad)
        assert "RFCn (recurrent spiking)" in str(e.value)


def net(spec, input_shape, outputs, neuron=partial(LIF), norm=partial(BatchNormOverTime)):
    return SpecNet(spec, input_shape, outputs, neuron, norm)


def test_the_spec_builds_recurrent_layers_after_a_feature_map_or_fc_bn():
    model = net("c4k3s2-BN-SN-RFC8-FC3-SN", (1, 8, 8), 3)
    rfc = next(m for m in model if isinstance(m, RecurrentFC))
    assert rfc.input.module.in_features == 4 * 4 * 4 and rfc.recurrent.weight.shape == (8, 8)
    assert isinstance(rfc.neuron, LIF) and rfc.neuron is not model[-1]  # a neuron of its own
    torch.manual_seed(0)
    model = net("FC16-BN-RFC8-FC3-SN", (10,), 3, neuron=partial(IF, v_threshold=0.3))
    x = torch.rand(4, 10)
    repeated, copies = x.unsqueeze(0).expand(5, 4, 10), x.unsqueeze(0).repeat(5, 1, 1)
    model.eval()  # BN's running statistics: both calls see the same
    a, b = model(repeated), model(copies)
    assert torch.equal(a, b) and a.sum() > 0


def test_rsnn_writes_its_spec_from_the_class_count():
    make = partial(RSNN, input_shape=[700], neuron=partial(LIF), norm=partial(NoNorm))
    assert make([256], num_outputs=20).spec == "RFC256-FC20-SN"
    assert make([256, 128], num_outputs=35, dropout=0.2).spec == "RFC256-DP-RFC128-DP-FC35-SN"
    assert make([64], num_outputs=20, recurrent=False).spec == "FC64-SN-FC20-SN"
    with pytest.raises(ModelError, match="at least one hidden layer"):
        make([], num_outputs=20)


# -- activity and cost, counted by hand --------------------------------------------------------------------------

def hand_net():
    """RFC2 on 2 inputs with IF neurons (threshold 1, hard reset to 0): W_in = [[1, 0], [0, 0.5]], W_rec = [[0, 0],
    [1, 0]] (neuron 0's spike adds 1 to neuron 1's next input). Input x = [1, 1] at each of 3 steps:
        t0: I = [1, 0.5]            H = [1, 0.5]  s = [1, 0]  V = [0, 0.5]
        t1: I = [1, 0.5 + 1]        H = [1, 2]    s = [1, 1]  V = [0, 0]
        t2: I = [1, 0.5 + 1 + 0]    H = [1, 1.5]  s = [1, 1]
    5 spikes of 6. Operations (all inputs 0/1: ACs): W_in, 2 non-zero weights, one per input column, both inputs
    on at 3 steps: 6; W_rec at t1 on s0 = [1, 0]: column 0 has 1 non-zero weight: 1; at t2 on [1, 1]: 1 + 0 = 1.
    Dense: W_in 3 steps x 4, W_rec 2 steps x 4 (nothing is computed at t0, where s[-1] = 0)."""
    model = net("RFC2", (2,), 2, neuron=partial(IF, v_threshold=1.0), norm=partial(NoNorm))
    with torch.no_grad():
        model[0].input.module.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
        model[0].recurrent.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    return model.eval()


@pytest.mark.parametrize("repeated", [True, False], ids=["direct-coding", "sequence"])
def test_activity_counts_by_hand(repeated):
    model = hand_net()
    x = torch.ones(1, 2)
    x_seq = x.unsqueeze(0).expand(3, 1, 2) if repeated else x.unsqueeze(0).repeat(3, 1, 1)
    assert list(spiking_layers(model)) == ["00_RecurrentFC"]  # the layer, not its stepped neuron
    with torch.no_grad(), Activity(model, spiking_layers(model)) as activity:
        out = model(x_seq)
        activity.batch(out.mean(0), torch.tensor([0]))
    s = activity.summary()
    assert out[:, 0].tolist() == [[1, 0], [1, 1], [1, 1]]
    assert s.layer_spikes_per_sample == {"00_RecurrentFC": 5}
    assert s.firing_rate == {"00_RecurrentFC": pytest.approx(5 / 6)}
    np.testing.assert_allclose(s.neuron_rates["00_RecurrentFC"], [3 / 3, 2 / 3])
    assert s.raster["00_RecurrentFC"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert s.layer_acs_per_sample == {"00.input_Linear": 6, "00.recurrent_Linear": 2}
    assert s.effective_macs_per_sample == 0 and s.effective_acs_per_sample == 8
    assert s.dense_ops_per_sample == 3 * 4 + 2 * 4


def test_cost_includes_the_recurrent_weights():
    m = static_metrics(hand_net())
    assert m["parameter_count"] == 4 + 4  # W_in, W_rec; no bias
    assert m["connection_sparsity"] == pytest.approx((2 + 3) / 8)
    assert m["footprint_bytes"] == 8 * 4


# -- NIR export ------------------------------------------------------------------------------------------------

def nir_run(graph, x: np.ndarray) -> np.ndarray:
    """Step the exported graph (input -> fc -> recurrent subgraph -> fc -> lif -> output) by NIR's definitions:
    Linear y = W x; LIF tau v' = (v_leak - v) + r I, forward Euler with the graph's dt, spike where v > v_threshold,
    then v = v_reset; the recurrent edge feeds the subgraph neuron's spikes of step t-1 through w_rec at step t."""
    dt = float(graph.metadata["dt"])
    names = chain(graph)[1:-1]
    assert [type(graph.nodes[n]).__name__ for n in names] == ["Affine", "NIRGraph", "Linear", "LIF"]  # W_in + BN
    fc1, sub, fc2, lif = (graph.nodes[n] for n in names)
    assert sorted(sub.edges) == sorted([("input", "neuron"), ("neuron", "w_rec"), ("w_rec", "neuron"),
                                        ("neuron", "output")])
    hidden, w_rec = sub.nodes["neuron"], sub.nodes["w_rec"].weight

    def lif_step(node, v, current):
        v = v + dt / node.tau * (node.v_leak - v + node.r * current)
        z = v > node.v_threshold
        return z.astype(np.float64), np.where(z, node.v_reset, v)

    v1 = np.broadcast_to(hidden.v_reset, (x.shape[1], w_rec.shape[0])).astype(np.float64)
    v2 = np.broadcast_to(lif.v_reset, (x.shape[1], fc2.weight.shape[0])).astype(np.float64)
    s1, out = np.zeros_like(v1), []
    for x_t in x:
        s1, v1 = lif_step(hidden, v1, x_t @ fc1.weight.T + fc1.bias + s1 @ w_rec.T)
        s2, v2 = lif_step(lif, v2, s1 @ fc2.weight.T)
        out.append(s2)
    return np.stack(out)


def test_the_nir_export_is_the_recurrent_network(tmp_path):
    torch.manual_seed(0)
    model = net("RFC12-FC4-SN", (6,), 4, neuron=partial(LIF, tau=2.0, v_threshold=0.5))
    with torch.no_grad():
        model[0].input.module.weight.mul_(3.0)  # strong enough for the default init to spike,
        model[0].recurrent.weight.mul_(3.0)  # and for the recurrence to change spikes
        model[1].module.weight.mul_(4.0)
        bn = model[0].norm  # trained-looking running statistics, folded into W_in by the export
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    graph = to_nir(model.eval(), [6])
    nir.write(tmp_path / "net.nir", graph)
    graph = nir.read(tmp_path / "net.nir")
    assert any("w_rec -> neuron (recurrent)" in line for line in describe(to_nir(model, [6])))
    x = (torch.rand(30, 5, 6) < 0.5).float()
    with torch.no_grad():
        ours = model(x).numpy()
        hidden = model[0](x)
    theirs = nir_run(graph, x.numpy().astype(np.float64))
    assert hidden.mean() > 0.1 and ours.mean() > 0.1
    # NIR fires on v > threshold, we on v >= threshold: they may differ only where v lands on it exactly
    assert (ours == theirs).mean() > 0.999


# -- the CLI --------------------------------------------------------------------------------------------------

def test_train_rsnn_on_digits_reports_the_recurrent_layer(tmp_path):
    # the default norm (BN on the input currents) makes the recurrent layer fire from the first step
    run_snnexp("train", "model=rsnn", "model.hidden=[16]", "neuron=if", "trainer.T=4", "trainer.epochs=1",
               "trainer.max_steps=3", "trainer.batch_size=32", "trainer.progress=false", "hydra.run.dir=run",
               cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # 8 x 8 images: 00 flattens them, 01 is RFC16, 02 the FC layer, 03 its neurons
    assert set(metrics["firing_rate"]) == {"01_RecurrentFC", "03_IF"}
    assert 0 < metrics["firing_rate"]["01_RecurrentFC"] < 1
    assert metrics["layer_acs_per_sample"]["01.recurrent_Linear"] > 0  # spikes drive the recurrent synapses
    assert metrics["layer_macs_per_sample"]["01.input_Linear"] > 0  # direct coding: the analog image
