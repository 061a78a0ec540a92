"""norm=tebn (TemporalEffectiveBatchNorm, Duan 2022) and norm=bntt (BatchNormPerTimeStep, Kim & Panda 2021) against
their equations and their peers: SpikingJelly's TemporalEffectiveBatchNorm1d/2d and BatchNormThroughTime1d/2d, and
snnTorch's BatchNormTT1d/2d, given the same parameters; direct coding's repeated input; the runs (fusion on and off,
the first epoch's cumulative statistics, a T that does not fit); and the rename of norm=bn's class
(BatchNormThroughTime -> BatchNormOverTime) with the run folders that name the old one."""

import shutil
from functools import partial
from pathlib import Path

import pytest
import torch

from conftest import run_snnexp
from snnexp.errors import ConfigError, ExportError
from snnexp.nn.models import SpecNet
from snnexp.nn.neurons import PLIF
from snnexp.nn.norms import BatchNormOverTime, BatchNormPerTimeStep, TemporalEffectiveBatchNorm
from snnexp.train.epoch import cumulative_bn_statistics

sj_layer = pytest.importorskip("spikingjelly.activation_based.layer", reason="SpikingJelly (the bench extra) missing")
from spikingjelly.activation_based import functional as sj_functional  # noqa: E402

snntorch = pytest.importorskip("snntorch", reason="snnTorch (the bench extra) is not installed")

OLD_RUN = Path(__file__).parent / "data" / "run_bc51d88"  # `snnexp train trainer.epochs=1` at bc51d88
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
SHAPES = [(4, 6, 5, 3, 3), (3, 7, 5)]  # conv [T, B, C, H, W] and FC [T, B, C]


def inputs(shape, dtype, seed, channels_last=False):
    """x with a different offset and spread at each step (per-step statistics differ from the fold's)."""
    g = torch.Generator().manual_seed(seed)
    T = shape[0]
    t = torch.arange(T, dtype=dtype).view(T, *[1] * (len(shape) - 1))
    x = torch.randn(shape, generator=g, dtype=dtype) * (1 + t) + 2 * t - 1
    if channels_last and len(shape) == 5:
        x = torch.stack([step.contiguous(memory_format=torch.channels_last) for step in x])
    return x


def random_(*tensors, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)


def check_same_training(ours, theirs, params, shape, dtype, channels_last=False, steps=3):
    """A few training steps then eval: `ours(x)` and `theirs(x)` give the same outputs and input gradients, and the
    pairs (ours, theirs) in `params` the same gradients (parameters) or values (running statistics)."""
    for step in range(steps):
        x = inputs(shape, dtype, step, channels_last)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        weights = torch.randn(shape, generator=torch.Generator().manual_seed(100 + step), dtype=dtype)
        ya, yb = ours(xa), theirs(xb)
        torch.testing.assert_close(ya, yb, **TOLERANCE[dtype])
        (ya * weights).sum().backward()
        (yb * weights).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, **TOLERANCE[dtype])
        for a, b in params():
            torch.testing.assert_close(a.grad if a.requires_grad else a, b.grad if b.requires_grad else b,
                                       **TOLERANCE[dtype])
            if a.requires_grad:
                a.grad = b.grad = None
    x = inputs(shape, dtype, 9, channels_last)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), **TOLERANCE[dtype])


# -- TEBN ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tebn_computes_what_spikingjelly_computes(dtype, shape, momentum, channels_last):
    T, C = shape[0], shape[2]
    ours = TemporalEffectiveBatchNorm(C, T, momentum=momentum).to(dtype)
    cls = sj_layer.TemporalEffectiveBatchNorm2d if len(shape) == 5 else sj_layer.TemporalEffectiveBatchNorm1d
    theirs = cls(T, C, momentum=momentum).to(dtype)
    assert theirs.scale.shape == ours.scale.shape == (T,) and torch.equal(theirs.scale, ours.scale)  # init: ones
    random_(ours.bn.weight, ours.bn.bias, ours.scale, seed=1)
    with torch.no_grad():
        for name in ("weight", "bias"):
            getattr(theirs, name).copy_(getattr(ours.bn, name))
        theirs.scale.copy_(ours.scale)
    pairs = [(ours.bn.weight, theirs.weight), (ours.bn.bias, theirs.bias), (ours.scale, theirs.scale),
             (ours.bn.running_mean, theirs.running_mean), (ours.bn.running_var, theirs.running_var)]
    check_same_training(ours, theirs, lambda: pairs, shape, dtype, channels_last)


def test_tebn_is_one_bn_over_time_and_batch_then_a_scale_per_step():
    """The equation: y[t] = p[t] (gamma (x[t] - mean) / sqrt(var + eps) + beta), mean and (biased) var per channel over
    (T, B, H, W) together; the running variance takes the unbiased one."""
    x = inputs((4, 6, 5, 3, 3), torch.float64, 0)
    tebn = TemporalEffectiveBatchNorm(5, 4, eps=1e-3, momentum=0.5).double()
    random_(tebn.bn.weight, tebn.bn.bias, tebn.scale, seed=2)
    dims, shape = (0, 1, 3, 4), (1, 1, 5, 1, 1)
    mean, var = x.mean(dims).view(shape), x.var(dims, unbiased=False).view(shape)
    x_hat = (x - mean) / torch.sqrt(var + 1e-3)
    expected = tebn.scale.view(4, 1, 1, 1, 1) * (tebn.bn.weight.view(shape) * x_hat + tebn.bn.bias.view(shape))
    torch.testing.assert_close(tebn(x), expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tebn.bn.running_mean, 0.5 * mean.flatten())
    torch.testing.assert_close(tebn.bn.running_var, 0.5 + 0.5 * x.var(dims, unbiased=True))


# -- BNTT ----------------------------------------------------------------------------------------------------------

class SpikingJellySequence(torch.nn.Module):
    """SpikingJelly's BNTT on a sequence: its state t counts the steps, so it is reset before each."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        sj_functional.reset_net(self.layer)
        return self.layer(x)


class SnnTorchSteps(torch.nn.Module):
    """snnTorch's BNTT as its users call it: the BN of step t on x[t]."""

    def __init__(self, bntt):
        super().__init__()
        self.bntt = bntt

    def forward(self, x):
        return torch.stack([bn(x[t]) for t, bn in enumerate(self.bntt)])


def copy_bntt(ours, their_bns):
    random_(*[bn.weight for bn in ours.steps], seed=3)
    with torch.no_grad():
        for a, b in zip(ours.steps, their_bns):
            assert b.bias is None and a.bias is None and torch.equal(b.weight, torch.ones_like(b.weight))
            b.weight.copy_(a.weight)
    return lambda: [pair for a, b in zip(ours.steps, their_bns) for pair in
                    ((a.weight, b.weight), (a.running_mean, b.running_mean), (a.running_var, b.running_var))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bntt_computes_what_spikingjelly_computes(dtype, shape, momentum, channels_last):
    T, C = shape[0], shape[2]
    ours = BatchNormPerTimeStep(C, T, momentum=momentum).to(dtype)
    cls = sj_layer.BatchNormThroughTime2d if len(shape) == 5 else sj_layer.BatchNormThroughTime1d
    theirs = SpikingJellySequence(cls(T, C, momentum=momentum, step_mode="m").to(dtype))
    check_same_training(ours, theirs, copy_bntt(ours, theirs.layer.bn_list), shape, dtype, channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_bntt_computes_what_snntorch_computes(dtype, shape):
    """snnTorch's BatchNormTT2d(C, T) is a list of T BNs (bias None) that its users call one step at a time,
    bntt[t](x[t]); the same defaults (eps 1e-5, momentum 0.1, gamma 1). (Its affine=False, BNs without gamma, has no
    counterpart here: BNTT's gamma[t] is the method.)"""
    T, C = shape[0], shape[2]
    ours = BatchNormPerTimeStep(C, T).to(dtype)
    make = snntorch.BatchNormTT2d if len(shape) == 5 else snntorch.BatchNormTT1d
    theirs = SnnTorchSteps(make(C, T).to(dtype))
    check_same_training(ours, theirs, copy_bntt(ours, theirs.bntt), shape, dtype)


def test_bntt_is_a_bn_per_step_without_shift():
    """The equation: y[t] = gamma[t] (x[t] - mean[t]) / sqrt(var[t] + eps), mean[t] and (biased) var[t] per channel
    over step t's (B, H, W) alone; each step's running statistics follow its own."""
    x = inputs((4, 6, 5, 3, 3), torch.float64, 0)
    bntt = BatchNormPerTimeStep(5, 4, eps=1e-3, momentum=0.5).double()
    random_(*[bn.weight for bn in bntt.steps], seed=2)
    dims, shape = (1, 3, 4), (4, 1, 5, 1, 1)
    mean, var = x.mean(dims).view(shape), x.var(dims, unbiased=False).view(shape)
    gamma = torch.stack([bn.weight for bn in bntt.steps]).view(shape)
    torch.testing.assert_close(bntt(x), (gamma * (x - mean) / torch.sqrt(var + 1e-3)).detach(), rtol=1e-12, atol=1e-12)
    assert not [name for name, _ in bntt.named_parameters() if "bias" in name]
    for t, bn in enumerate(bntt.steps):
        torch.testing.assert_close(bn.running_mean, 0.5 * mean[t].flatten())
        torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * x[t].var((0, 2, 3), unbiased=True))


@pytest.mark.parametrize("norm", [TemporalEffectiveBatchNorm, BatchNormPerTimeStep])
@pytest.mark.parametrize("training", [True, False])
def test_the_torch_path_computes_what_the_ops_compute(norm, training, monkeypatch):
    """Where the ops of snnexp.ops.step_norms do not apply (an input whose dtype is not its parameters', as under
    autocast's bfloat16), the layer runs torch's BN (and the scaling, or a stack): the same outputs, gradients and
    running statistics, in float64; and on a bfloat16 input within its precision."""
    import snnexp.nn.norms as norms

    x = inputs((4, 6, 5, 3, 3), torch.float64, 0)
    ops = norm(5, 4).double().train(training)
    random_(*ops.parameters(), seed=4)
    apart = norm(5, 4).double().train(training)
    apart.load_state_dict(ops.state_dict())
    with monkeypatch.context() as m:
        m.setattr(norms, "takes", lambda *args: False)
        check_same_training(apart, ops, lambda: list(zip([*apart.parameters(), *apart.buffers()],
                                                         [*ops.parameters(), *ops.buffers()])), x.shape, x.dtype)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not norms.takes(x, 100, list(ops.parameters()))  # torch.compile traces the torch path
    y = norm(5, 4).eval()(x.float().bfloat16())  # float32 parameters: torch's BN on the bfloat16 input
    torch.testing.assert_close(y.double(), norm(5, 4).double().eval()(x), rtol=0.02, atol=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("norm", [TemporalEffectiveBatchNorm, BatchNormPerTimeStep])
def test_on_cuda_torch_path_computes_what_the_cpu_ops_compute(norm):
    """On CUDA the layers run torch's BN (the CPU ops are not used there): the numbers of the CPU ops, in float64."""
    import copy

    cpu = norm(5, 4).double()
    random_(*cpu.parameters(), seed=5)
    cuda = copy.deepcopy(cpu).cuda()
    for step in range(2):
        x = inputs((4, 6, 5, 3, 3), torch.float64, step)
        xa, xb = x.clone().requires_grad_(), x.cuda().requires_grad_()
        ya, yb = cpu(xa), cuda(xb)
        (ya * ya).sum().backward()
        (yb * yb).sum().backward()
        torch.testing.assert_close(ya, yb.cpu(), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(xa.grad, xb.grad.cpu(), rtol=1e-10, atol=1e-10)
    for (name, a), b in zip(cpu.named_parameters(), cuda.parameters()):
        torch.testing.assert_close(a.grad, b.grad.cpu(), rtol=1e-10, atol=1e-10, msg=name)
    for (name, a), b in zip(cpu.named_buffers(), cuda.buffers()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-10, atol=1e-10, msg=name)


# -- direct coding, fusion, the first epoch, T -------------------------------------------------------------------

@pytest.mark.parametrize("norm", [TemporalEffectiveBatchNorm, BatchNormPerTimeStep])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_repeated_input_gives_the_numbers_of_t_copies(norm, momentum):
    """Direct coding's view of one image at each step (a Repeated inside the network) against the image copied T
    times: the same spikes, parameter gradients and running statistics, in float64, over two training steps."""
    import copy

    from snnexp.nn.encoders import DirectEncoder

    torch.manual_seed(0)
    net = SpecNet("c6k3s1-BN-SN-MPk2s2-FC10-SN", (1, 8, 8), 10, partial(PLIF, v_threshold=0.3),
                  partial(norm, T=4, momentum=momentum)).double()
    with torch.no_grad():
        for p in net[1].parameters():
            p.copy_(torch.rand(p.shape, dtype=p.dtype) + 0.5)
    twin = copy.deepcopy(net)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = torch.randn(4, 6, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for _ in range(2):
        outs = []
        for model, x_seq in ((net, DirectEncoder()(x, 4)), (twin, x.unsqueeze(0).repeat(4, 1, 1, 1, 1))):
            out = model.train()(x_seq)
            (out * weights).sum().backward()
            outs.append(out)
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
        assert outs[0].sum() > 0
    for (name, a), b in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, a), b in zip(net.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("norm", [TemporalEffectiveBatchNorm, BatchNormPerTimeStep])
def test_fusion_leaves_them_apart_and_joins_the_neuron_and_pool(norm):
    import copy

    from snnexp.nn.fusion import FusedBlock, fuse_blocks

    torch.manual_seed(0)
    plain = SpecNet("c4k3-BN-SN-MPk2s2-FC10-BN-SN", (2, 8, 8), 10, PLIF, partial(norm, T=3)).double()
    fused = fuse_blocks(copy.deepcopy(plain))
    kinds = [m.extra_repr().split(":")[0] if isinstance(m, FusedBlock) else type(m).__name__ for m in fused]
    assert kinds == ["SeqToANN", norm.__name__, "SN-MP", "Joined", "SeqFlatten", "SeqToANN", norm.__name__, "PLIF"]
    x = torch.rand(3, 4, 2, 8, 8, dtype=torch.float64) * 2
    torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=0)
    assert list(fused.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("norm", [TemporalEffectiveBatchNorm, BatchNormPerTimeStep])
def test_the_first_epoch_averages_their_running_statistics(norm):
    """cumulative_bn_statistics (train/epoch.py) reaches the BNs inside: during the first epoch the running mean is
    the average of the batches' means."""
    layer = norm(3, 2)
    bns = [m for m in layer.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(bn.momentum == 0.1 for bn in bns)
    xs = [inputs((2, 8, 3), torch.float32, seed) + seed for seed in range(3)]
    with cumulative_bn_statistics(layer, True):
        assert all(bn.momentum is None for bn in bns)
        for x in xs:
            layer(x)
    assert all(bn.momentum == 0.1 for bn in bns)
    means = torch.stack([x.mean(1) for x in xs]).mean(0)  # [T, C]: each step's batch mean, averaged over batches
    expected = means.mean(0, keepdim=True) if norm is TemporalEffectiveBatchNorm else means
    torch.testing.assert_close(torch.stack([bn.running_mean for bn in bns]), expected)


@pytest.mark.parametrize("norm", [TemporalEffectiveBatchNorm, BatchNormPerTimeStep])
def test_another_number_of_steps_is_one_line_naming_trainer_t(norm):
    layer = norm(3, 4)
    with pytest.raises(ConfigError) as e:
        layer(torch.zeros(2, 5, 3))
    message = str(e.value)
    assert "\n" not in message and "built for T=4" in message and "trainer.T=4" in message and "has 2" in message
    with pytest.raises(ConfigError, match=r"norm.T=0 is out of range"):
        norm(3, 0)


@pytest.mark.parametrize("norm", [TemporalEffectiveBatchNorm, BatchNormPerTimeStep])
def test_export_refuses_them_in_a_line(norm):
    """NIR has no node whose weights change with the time step: the export says so instead of folding them as BN."""
    from snnexp.export import to_nir

    net = SpecNet("FC8-BN-SN-FC10-SN", (4,), 10, PLIF, partial(norm, T=2))
    refusal = fr"{norm.__name__} \(norm=(tebn|bntt)\) has no NIR node: its .* changes? with the time step"
    with pytest.raises(ExportError, match=refusal):
        to_nir(net, (4,))


@pytest.mark.parametrize("norm", ["tebn", "bntt"])
@pytest.mark.parametrize("join", ["true", "false"])
def test_a_short_run_trains_and_evaluates(tmp_path, norm, join):
    run_snnexp("train", f"norm={norm}", "trainer.epochs=1", "trainer.max_steps=2", f"trainer.join_layers={join}",
               "trainer.T=3", "trainer.progress=false", "hydra.run.dir=run", cwd=tmp_path)
    log = (tmp_path / "run" / "train.log").read_text()
    name = {"tebn": "TemporalEffectiveBatchNorm(\n    T=3", "bntt": "BatchNormPerTimeStep(\n    32, T=3"}[norm]
    assert name in log and ("SN-MP: one op" in log) == (join == "true") and "memory check skipped" not in log
    out = run_snnexp("eval", f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", "hydra.run.dir=eval",
                     cwd=tmp_path)
    assert "test_acc" in out.stdout or "test acc" in out.stdout + out.stderr


def test_a_t_that_does_not_fit_stops_the_run_in_a_line(tmp_path):
    proc = run_snnexp("train", "norm=tebn", "norm.T=3", "trainer.epochs=1", "trainer.max_steps=1",
                      "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "TemporalEffectiveBatchNorm was built for T=3 time steps" in proc.stderr and "trainer.T=3" in proc.stderr


# -- the rename -----------------------------------------------------------------------------------------------------

def test_the_old_name_imports_with_a_warning_and_stored_configs_map_to_the_new_one():
    import snnexp.nn.norms as norms
    from snnexp.moved import new_targets

    with pytest.warns(FutureWarning, match="BatchNormThroughTime is now BatchNormOverTime"):
        assert norms.BatchNormThroughTime is BatchNormOverTime
    for old in ("snnexp.nn.norms.BatchNormThroughTime", "snnexp.layers.BatchNormThroughTime"):
        assert new_targets({"norm": {"_target_": old}}) == {"norm": {"_target_": "snnexp.nn.norms.BatchNormOverTime"}}
    new = {"_target_": "snnexp.nn.norms.TemporalEffectiveBatchNorm"}
    assert new_targets(new) == new


@pytest.fixture
def old_name_run(tmp_path):
    """The bc51d88 run folder with its checkpoints' stored config naming norm=bn's class as the commit before the
    rename wrote it: snnexp.nn.norms.BatchNormThroughTime."""
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    for path in (run / "checkpoints").glob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert state["config"]["norm"]["_target_"] == "snnexp.layers.BatchNormThroughTime"
        state["config"]["norm"]["_target_"] = "snnexp.nn.norms.BatchNormThroughTime"
        torch.save(state, path)
    return run


def test_a_run_folder_naming_the_old_class_evaluates_and_resumes(old_name_run, tmp_path):
    import json

    from snnexp.train.evaluate import evaluate_checkpoint

    recorded = json.loads((old_name_run / "metrics.json").read_text())
    metrics = evaluate_checkpoint(old_name_run / "checkpoints" / "last.pt", "cpu", progress=False)
    assert metrics["test_loss"] == pytest.approx(recorded["test_loss"], rel=1e-6)
    run_snnexp("train", f"resume={old_name_run}", "trainer.epochs=2", "trainer.progress=false", cwd=tmp_path)
    assert json.loads((old_name_run / "metrics.json").read_text())["epoch"] == 2
