"""The parallel spiking neurons (PSN, MaskedPSN, SlidingPSN; nn/neurons/parallel.py, docs/science.md section 1):
the equations by hand, parity with SpikingJelly 2.0's PSN family (same start from the same random state; same spikes
and gradients from the same weights), the masked PSN's lambda schedule, direct coding's repeated input and layouts,
the settings they refuse, and runs through the CLI (digits, event frames, resume, eval, export)."""

import json
import zlib

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import run_snnexp
from event_writers import make_nmnist
from snnexp.cli import conf_dir
from snnexp.errors import ConfigError
from snnexp.nn.fusion import FusedBlock, fuse_blocks
from snnexp.nn.layers import Repeated
from snnexp.nn.neurons import PSN, MaskedPSN, SlidingPSN
from snnexp.nn.neurons.parallel import SHIFTED_SUMS_FROM, mask_lambda, sliding_weights
from snnexp.nn.surrogate import ATan, Sigmoid
from snnexp.report.activity import spiking_layers
from snnexp.report.metrics import LayerTags, layer_scalars
from snnexp.train import memory
from snnexp.train.build import build_model

sj = pytest.importorskip("spikingjelly.activation_based", reason="SpikingJelly (the bench extra) is not installed")
from spikingjelly.activation_based import neuron as sj_neuron  # noqa: E402
from spikingjelly.activation_based import surrogate as sj_surrogate  # noqa: E402

SURROGATES = {"atan": (lambda: ATan(2.0), lambda: sj_surrogate.ATan(alpha=2.0)),
              "sigmoid": (lambda: Sigmoid(4.0), lambda: sj_surrogate.Sigmoid(alpha=4.0))}
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
ONE_STEP = ["trainer.epochs=1", "trainer.max_steps=2", "trainer.progress=false"]


def pair(kind, T, order, surrogate, exp_init=False, backend="fused", **schedule):
    """(ours, SpikingJelly's) with the same weights: SpikingJelly's as drawn, copied into ours (threshold = -bias);
    `schedule`: the MaskedPSN's epochs and lambda_ramp."""
    ours_sg, sj_sg = SURROGATES[surrogate]
    if kind == "psn":
        ours, theirs = PSN(T, surrogate=ours_sg(), backend=backend), sj_neuron.PSN(T, surrogate_function=sj_sg())
    elif kind == "masked":
        ours = MaskedPSN(T, order=order, surrogate=ours_sg(), backend=backend, **schedule)
        theirs = sj_neuron.MaskedPSN(order, T, surrogate_function=sj_sg(), step_mode="m")
    else:
        ours = SlidingPSN(order, exp_init=exp_init, surrogate=ours_sg(), backend=backend)
        theirs = sj_neuron.SlidingPSN(order, exp_init=exp_init, surrogate_function=sj_sg(), step_mode="m")
    with torch.no_grad():
        # a trained neuron's weights: of either sign, non-causal ones too for the PSN
        theirs.weight.uniform_(0.3, 1.5).mul_(torch.randint(0, 2, theirs.weight.shape) * 2 - 1)
        theirs.bias.uniform_(-1.5, -0.5)
        ours.weight.copy_(theirs.weight)
        ours.threshold.copy_(-theirs.bias)
    return ours, theirs


def check_same(ours, theirs, x, dtype, params=True):
    """Spikes equal, gradients of the input, weights and threshold within TOLERANCE[dtype]."""
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    x = x.to(dtype).requires_grad_()
    x_sj = x.detach().clone().requires_grad_()
    s_ours, s_sj = ours(x), theirs(x_sj)
    torch.testing.assert_close(s_ours, s_sj, rtol=0, atol=0)
    assert 0 < s_ours.mean() < 1  # the case exercises firing and not firing
    weights = torch.randn(s_ours.shape, dtype=dtype)
    (s_ours * weights).sum().backward()
    (s_sj * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_sj.grad, **TOLERANCE[dtype])
    if params:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **TOLERANCE[dtype])
        torch.testing.assert_close(ours.threshold.grad, -theirs.bias.grad, **TOLERANCE[dtype])


# ------------------------------------------------------------------------------ the equations, by hand


def test_psn_equations_by_hand():
    """H = W X (every step sees every step), S[t] = 1 if H[t] >= B[t]; backward: dL/dX[j] = sum_t W[t, j] g[t] sg,
    dL/dW[t, j] = sum_n g[t] sg X[j], dL/dB[t] = -sum_n g[t] sg, with sg = surrogate'(H - B), written out in loops."""
    psn = PSN(3, surrogate=ATan(2.0)).double()
    w = torch.tensor([[1.0, 0.0, 0.5], [0.5, 1.0, 0.0], [0.25, -0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 0.8, 1.2], dtype=torch.float64)
    with torch.no_grad():
        psn.weight.copy_(w)
        psn.threshold.copy_(b[:, None])
    x = torch.tensor([[0.6, 2.0], [0.6, -1.0], [0.9, 0.5]], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.5]], dtype=torch.float64)
    s = psn(x)
    (s * g).sum().backward()
    h = [[sum(w[t, j] * x[j, n] for j in range(3)).item() for n in range(2)] for t in range(3)]
    assert h[0] == pytest.approx([1.05, 2.25]) and h[1] == pytest.approx([0.9, 0.0])  # the future counts: W[0, 2]
    assert s.tolist() == [[float(h[t][n] >= b[t]) for n in range(2)] for t in range(3)] == [[1, 1], [1, 0], [0, 1]]
    sg = [[ATan(2.0).grad(h[t][n] - b[t]).item() for n in range(2)] for t in range(3)]
    dx = [[sum(w[t, j] * g[t, n] * sg[t][n] for t in range(3)).item() for n in range(2)] for j in range(3)]
    dw = [[sum(g[t, n] * sg[t][n] * x[j, n] for n in range(2)).item() for j in range(3)] for t in range(3)]
    db = [-sum(g[t, n] * sg[t][n] for n in range(2)).item() for t in range(3)]
    torch.testing.assert_close(x.grad, torch.tensor(dx, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(psn.weight.grad, torch.tensor(dw, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(psn.threshold.grad[:, 0], torch.tensor(db, dtype=torch.float64), rtol=1e-12,
                               atol=1e-12)


def test_the_masked_psn_keeps_a_band_of_order_steps_phased_in_by_lambda():
    """W (lambda M + (1 - lambda) J), M[t, j] = 1 for t - order < j <= t: at lambda 1 step t sees t - 1 and t only."""
    m = MaskedPSN(4, order=2).double()  # no schedule: lambda stays where it is set
    with torch.no_grad():
        m.weight.fill_(1.0)
    band = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    m.lambda_.fill_(1.0)
    assert m.time_weights(4).tolist() == band
    m.lambda_.fill_(0.25)
    assert m.time_weights(4).tolist() == [[1 if v else 0.75 for v in row] for row in band]
    m.lambda_.fill_(0.0)
    x = torch.zeros(4, 1, dtype=torch.float64)
    x[3] = 1.0  # the last step's input reaches every step while the mask is off, only step 3 once it is on
    assert m(x)[:, 0].tolist() == [1, 1, 1, 1]
    m.lambda_.fill_(1.0)
    assert m(x)[:, 0].tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("T", [1, 2, 3, 7])
def test_the_sliding_psn_is_a_causal_convolution_over_time(T):
    """H[t] = sum_i w[i] X[t - order + 1 + i], nothing before step 0; its matrix is SpikingJelly's for every T."""
    order = 3
    kernel = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)
    theirs = sj_neuron.SlidingPSN(order, step_mode="m").double()
    with torch.no_grad():
        theirs.weight.copy_(kernel)
    assert torch.equal(sliding_weights(kernel, T), theirs.gen_gemm_weight(T))
    x = torch.randn(T, 5, dtype=torch.float64)
    h = sliding_weights(kernel, T) @ x
    for t in range(T):
        expected = sum(kernel[i] * x[t - order + 1 + i] for i in range(order) if t - order + 1 + i >= 0)
        torch.testing.assert_close(h[t], expected, rtol=1e-12, atol=1e-12)


def test_a_long_sliding_sequence_runs_as_shifted_sums_with_the_same_numbers():
    """Past SHIFTED_SUMS_FROM x order steps the sliding PSN sums `order` shifted inputs instead of one T x T product:
    SpikingJelly's spikes and gradients still (float64), and a repeated input still gives its T copies' results."""
    T = SHIFTED_SUMS_FROM * 3 + 5
    torch.manual_seed(3)
    ours, theirs = pair("sliding", T, order=3, surrogate="atan")
    check_same(ours, theirs, torch.randn(T, 6, 7) * 2, torch.float64)
    step = torch.randn(6, 7, dtype=torch.float64) * 2
    torch.testing.assert_close(ours(Repeated(step, T)), ours(step.expand(T, 6, 7)), rtol=0, atol=0)


# ------------------------------------------------------------------------------ parity with SpikingJelly


@pytest.mark.parametrize("kind,order,exp_init", [("psn", 0, False), ("masked", 3, False), ("sliding", 3, True),
                                                 ("sliding", 3, False)])
def test_the_same_random_state_gives_spikingjellys_weights(kind, order, exp_init):
    T = 6
    torch.manual_seed(7)
    ours = {"psn": lambda: PSN(T), "masked": lambda: MaskedPSN(T, order=order),
            "sliding": lambda: SlidingPSN(order, exp_init=exp_init)}[kind]()
    torch.manual_seed(7)
    theirs = {"psn": lambda: sj_neuron.PSN(T), "masked": lambda: sj_neuron.MaskedPSN(order, T),
              "sliding": lambda: sj_neuron.SlidingPSN(order, exp_init=exp_init)}[kind]()
    assert torch.equal(ours.weight, theirs.weight)
    assert torch.equal(ours.threshold, -theirs.bias)
    if kind == "masked":
        assert torch.equal(ours.band, theirs.mask0) and float(ours.lambda_) == float(theirs.lambda_) == 0.0


CASES = [(kind, T, shape, sg, dtype, backend) for kind in ("psn", "masked", "sliding") for T in (2, 4, 8)
         for shape in ((16, 9), (4, 3, 5, 5)) for sg in ("atan", "sigmoid") for dtype in (torch.float32, torch.float64)
         for backend in ("fused", "reference") if (sg == "atan" and backend == "fused") or (T == 4 and len(shape) == 4)]


@pytest.mark.parametrize("kind,T,shape,sg,dtype,backend", CASES)
def test_same_spikes_and_gradients_as_spikingjelly(kind, T, shape, sg, dtype, backend):
    """The step through the neuron kernel (backend fused) and through torch's definition (reference) alike."""
    torch.manual_seed(zlib.crc32(repr((kind, T, shape, sg, str(dtype), backend)).encode()))
    ours, theirs = pair(kind, T, order=2, surrogate=sg, backend=backend)
    if kind == "masked":  # half-way through the mask's phasing in (no schedule: lambda stays where it is set)
        ours.lambda_.fill_(0.5)
        theirs.lambda_ = 0.5
    check_same(ours, theirs, torch.randn(T, *shape) * 2, dtype)


@pytest.mark.parametrize("epochs,ramp", [(9, 0.125), (5, 1.0)])
def test_same_as_spikingjelly_at_every_epoch_of_the_masked_schedule(epochs, ramp):
    """Ours moves lambda by itself, epoch by epoch (a training call after an eval call); SpikingJelly's is set by hand
    to the schedule's value, as its users do: the same spikes and gradients at every epoch, in float64 and float32."""
    for dtype in (torch.float64, torch.float32):
        torch.manual_seed(epochs)
        ours, theirs = pair("masked", 4, order=2, surrogate="atan", epochs=epochs, lambda_ramp=ramp)
        seen = []
        for epoch in range(epochs):
            theirs.lambda_ = mask_lambda(epoch, epochs, 0.0, ramp)
            ours.train()
            check_same(ours, theirs, torch.rand(4, 6, 5) * 3 - 1, dtype, params=epoch < 3)
            seen.append(float(ours.lambda_))
            ours.eval()
            with torch.no_grad():
                ours(torch.zeros(4, 1, dtype=dtype))  # the epoch's test pass
        assert seen == pytest.approx([mask_lambda(e, epochs, 0.0, ramp) for e in range(epochs)])
        assert seen[0] == 0.0 and seen[-1] == 1.0 and (ramp == 0.125 or 0 < seen[1] < 1)


# ------------------------------------------------------------------------------ the schedule


def test_the_schedule_is_the_papers_and_rises_from_lambda_init():
    """min(1, 8 epoch / (epochs - 1)), the paper's training script, with the defaults; lambda_init and the ramp
    move its start and its end."""
    for epochs in (2, 5, 9, 33, 256):
        assert [mask_lambda(e, epochs) for e in range(epochs)] == [min(8 * e / (epochs - 1), 1.0)
                                                                   for e in range(epochs)]
    assert [mask_lambda(e, 5, 0.2, 0.5) for e in range(5)] == pytest.approx([0.2, 0.6, 1.0, 1.0, 1.0])
    assert mask_lambda(0, 1) == 1.0  # one epoch: the mask is on from the start


def test_without_epochs_lambda_stays_where_it_is_set_as_in_spikingjelly():
    m = MaskedPSN(4, order=2, lambda_init=0.3)
    m(torch.randn(4, 5)), m.eval(), m(torch.randn(4, 5)), m.train(), m(torch.randn(4, 5))
    assert float(m.lambda_) == pytest.approx(0.3) and m.scalars() == {"lambda": pytest.approx(0.3)}
    m.lambda_.fill_(0.7)
    m(torch.randn(4, 5))
    assert float(m.lambda_) == pytest.approx(0.7)


def test_lambda_moves_once_an_epoch_and_a_checkpoint_mid_epoch_keeps_it():
    m = MaskedPSN(4, order=2, epochs=3, lambda_ramp=1.0)
    x = torch.randn(4, 2, 3)
    assert float(m.lambda_) == 0.0  # before training, as SpikingJelly's: lambda_init
    m(x), m(x)  # epoch 1: two steps
    assert (float(m.lambda_), m.epochs_begun) == (0.0, 1)
    m.eval(), m(x), m.train(), m(x)  # its test pass, then epoch 2
    assert float(m.lambda_) == 0.5
    saved = m.state_dict()  # a checkpoint mid-epoch 2 (trainer.ckpt_every_steps, SIGTERM)
    resumed = MaskedPSN(4, order=2, epochs=3, lambda_ramp=1.0)
    resumed.load_state_dict(saved)
    resumed(x)
    assert (float(resumed.lambda_), resumed.epochs_begun) == (0.5, 2)
    resumed.eval(), resumed(x), resumed.train(), resumed(x)
    assert float(resumed.lambda_) == 1.0 and resumed.scalars() == {"lambda": 1.0}


# ------------------------------------------------------------------------------ inputs, layouts, refusals


@pytest.mark.parametrize("kind", ["psn", "masked", "sliding"])
def test_a_repeated_input_gives_what_its_t_copies_give(kind):
    """Direct coding: W (x at every step) = (row sums of W) x, the same spikes and gradients (float64)."""
    torch.manual_seed(1)
    ours, _ = pair(kind, 4, order=2, surrogate="atan")
    ours = ours.double()
    if kind == "masked":
        ours.lambda_.fill_(0.5)
    step = (torch.rand(3, 2, 5, 5, dtype=torch.float64) * 3 - 1).requires_grad_()
    copies = step.detach().clone().requires_grad_()
    g = torch.randn(4, 3, 2, 5, 5, dtype=torch.float64)
    s_once = ours(Repeated(step, 4))
    grads_once = torch.autograd.grad((s_once * g).sum(), [step, ours.weight, ours.threshold])
    s_copies = ours(copies.unsqueeze(0).expand(4, *copies.shape))
    grads_copies = torch.autograd.grad((s_copies * g).sum(), [copies, ours.weight, ours.threshold])
    assert torch.equal(s_once, s_copies) and 0 < s_once.mean() < 1
    for a, b in zip(grads_once, grads_copies):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_a_channels_last_input_is_read_in_place_and_its_layout_kept():
    torch.manual_seed(2)
    psn = PSN(4)
    x = torch.randn(4 * 2, 6, 5, 5).to(memory_format=torch.channels_last).unflatten(0, (4, 2)) * 2
    s = psn(x)
    assert s.stride() == x.stride()  # the next layer sees the layout it would have seen
    assert torch.equal(s, psn(x.contiguous()))


def test_settings_it_cannot_honour_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="trainer.T=4"):
        PSN(4)(torch.randn(5, 3))
    with pytest.raises(ConfigError, match="neuron.backend='triton' is out of range: must be fused or reference"):
        MaskedPSN(4, backend="triton")
    with pytest.raises(ConfigError, match="neuron.order=0 is out of range"):
        SlidingPSN(0)
    with pytest.raises(ConfigError, match="recurrent layer"):
        PSN(4).step(torch.zeros(3), None)
    assert SlidingPSN(2)(torch.randn(7, 3)).shape == (7, 3)  # any T


# ------------------------------------------------------------------------------ in a network and through the CLI


def compose_train(*overrides):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_not_fused_counted_as_spiking_layers_and_estimated():
    """The convnet with PSN: no BN-SN-pool block is joined (PSN runs its own forward), its three PSN layers are the
    spiking layers the activity counts, and the memory estimate probes it at T: the outputs of the PLIF net
    (test_memory.py)."""
    cfg = compose_train("neuron=psn")
    model = fuse_blocks(build_model(cfg, (1, 8, 8), 10))
    assert not any(isinstance(m, FusedBlock) for m in model.modules())
    assert list(spiking_layers(model)) == ["02_PSN", "06_PSN", "10_PSN"]
    encoder = instantiate(cfg.encoder)
    assert memory.counted_outputs(model, encoder(torch.zeros(1, 1, 8, 8), 4)) == 4096 + 4 * 4672
    assert memory.step_bytes(model, encoder, False, (1, 8, 8), T=4, batch=64) > 0
    masked = build_model(compose_train("neuron=masked_psn"), (1, 8, 8), 10)
    assert layer_scalars(masked, LayerTags(masked)) == {"lambda/layer1": 0.0, "lambda/layer2": 0.0,
                                                        "lambda/layer3": 0.0}  # TensorBoard's tags: the layers


@pytest.mark.parametrize("neuron", ["psn", "masked_psn", "sliding_psn"])
def test_each_trains_through_the_cli(tmp_path, neuron):
    run_snnexp("train", f"neuron={neuron}", *ONE_STEP, "hydra.run.dir=run", cwd=tmp_path)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 2


def test_event_frames_evaluate_and_export(tmp_path):
    make_nmnist(tmp_path / "data", per_digit=1)
    run_snnexp("train", "neuron=psn", "dataset=nmnist", "dataset.cache_dir=cache", "dataset.download=false",
               "trainer.batch_size=4", *ONE_STEP, "hydra.run.dir=run", cwd=tmp_path)  # the convnet: [T, B, 2, 34, 34]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    run_snnexp("eval", "checkpoint=run/checkpoints/last.pt", "hydra.run.dir=ev", cwd=tmp_path)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["test_acc"] == metrics["test_acc"]
    out = run_snnexp("export", "checkpoint=run/checkpoints/last.pt", cwd=tmp_path, check=False)
    assert out.returncode == 2 and "PSN (neuron=psn, masked_psn, sliding_psn) has no NIR node" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_resumed_masked_run_equals_the_uninterrupted_one(tmp_path):
    """Its lambda schedule (0, 1/2, 1 over 3 epochs) goes on from the checkpoint as if never stopped."""
    args = ["train", "neuron=masked_psn", "neuron.epochs=3", "neuron.lambda_ramp=1.0", "trainer.progress=false",
            "model=mlp", "trainer.batch_size=256"]  # 6 steps an epoch: the schedule, not the network, is tested
    run_snnexp(*args, "trainer.epochs=3", "hydra.run.dir=whole", cwd=tmp_path)
    run_snnexp(*args, "trainer.epochs=1", "hydra.run.dir=parts", cwd=tmp_path)
    run_snnexp("train", "resume=parts", "trainer.epochs=3", cwd=tmp_path)
    whole, parts = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "parts"))
    timing = ("wall_s", "train_samples_per_s")
    assert {k: v for k, v in whole.items() if k not in timing} == {k: v for k, v in parts.items() if k not in timing}
    state = torch.load(tmp_path / "parts" / "checkpoints" / "last.pt", weights_only=True)["model"]
    first = next(k.rsplit(".", 1)[0] for k in state if k.endswith(".lambda_"))  # the first masked layer
    assert float(state[f"{first}.lambda_"]) == 1.0
    assert state[f"{first}._extra_state"] == {"epochs_begun": 3, "in_epoch": False}


@pytest.mark.parametrize("args,message", [
    (["neuron=psn", "neuron.order=3"], "neuron.order: neuron (PSN) has no key 'order'; neuron=masked_psn, "
                                       "neuron=sliding_psn have it"),
    (["neuron=sliding_psn", "neuron.T=4"], "neuron (SlidingPSN) has no key 'T'"),
    (["neuron=sliding_psn", "neuron.backend=triton"], "neuron.backend='triton' is out of range"),
    (["neuron=psn", "neuron.T=8"], "neuron.T=8 differs from trainer.T=4"),
    (["neuron=masked_psn", "neuron.order=0"], "neuron.order=0 is out of range"),
    (["neuron=stbp", "neuron.k=3"], "neuron.k=3 is out of range: must be in (0, 1) (STBP's decay factor)"),
    (["neuron=psn", "model=rsnn"], "a recurrent layer (RFC, model=rsnn) cannot step it"),
])
def test_what_the_cli_refuses(tmp_path, args, message):
    out = run_snnexp("train", *args, *ONE_STEP, "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_masked_psn_takes_an_order(tmp_path):
    run_snnexp("train", "neuron=masked_psn", "neuron.order=3", *ONE_STEP, "hydra.run.dir=run", cwd=tmp_path)
