"""The adaptive LIF (neuron=alif, docs/science.md, section 1, "Adaptive LIF"): spikes, traces and gradients against
the equations written out here, the threshold's adaptation, parity with Norse's LSNN, the config checks and a
training run through the CLI."""

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_snnexp
from snnexp.errors import ConfigError, ExportError
from snnexp.nn.neurons import ALIF, LIF, SpikingNeuron
from snnexp.nn.neurons.adaptive import alif_multistep
from snnexp.nn.neurons.repeated import Repeated
from snnexp.nn.surrogate import ATan, FastSigmoid

ALPHA = 2.0  # the ATan surrogate's alpha in (a)


class _Spike(torch.autograd.Function):
    """Heaviside forward; backward the derivative of (1/pi) atan(pi/2 alpha x) + 1/2, written out here."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (ALPHA / 2) / (1 + (math.pi / 2 * ALPHA * x) ** 2)


def explicit_alif(x, k, k_a, beta, v_th, v_reset, decay_input, detach_reset):
    """The equations of docs/science.md as written there, with 1/tau = k and 1/tau_adapt = k_a (floats or
    tensors): the spikes, V and the threshold theta of each step."""
    rest = 0.0 if v_reset is None else v_reset
    v, a = torch.full_like(x[0], rest), torch.zeros_like(x[0])
    spikes, vs, thetas = [], [], []
    for t in range(x.shape[0]):
        if decay_input:
            h = v + (x[t] - (v - rest)) * k
        else:
            h = v - (v - rest) * k + x[t]
        theta = v_th + beta * a
        s = _Spike.apply(h - theta)
        r = s.detach() if detach_reset else s
        v = h * (1 - r) + rest * r if v_reset is not None else h - theta * r
        a = (1 - k_a) * a + k_a * s
        spikes.append(s), vs.append(v), thetas.append(theta)
    return torch.stack(spikes), torch.stack(vs), torch.stack(thetas)


@pytest.mark.parametrize("v_reset", [0.0, -0.2, None], ids=["hard", "hard_-0.2", "soft"])
@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("learn", [True, False], ids=["learned", "fixed"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["reset_in_grad", "detach_reset"])
def test_spikes_traces_and_gradients_follow_the_equations(v_reset, decay_input, learn, detach_reset):
    torch.manual_seed(0)
    tau, tau_adapt, beta = 3.0, 7.0, 1.3
    x = (torch.rand(40, 3, 5, dtype=torch.float64) * (3.0 if decay_input else 1.2)).requires_grad_()
    n = ALIF(tau=tau, tau_adapt=tau_adapt, beta=beta, learn_tau=learn, learn_tau_adapt=learn,
             decay_input=decay_input, v_threshold=1.0, v_reset=v_reset, detach_reset=detach_reset,
             surrogate=ATan(ALPHA)).double()
    spikes = n(x)
    weights = torch.randn_like(spikes)
    (spikes * weights).sum().backward()

    xe = x.detach().clone().requires_grad_()
    w = torch.tensor(-math.log(tau - 1), dtype=torch.float32).double().requires_grad_()  # as the layer holds it
    wa = torch.tensor(-math.log(tau_adapt - 1), dtype=torch.float32).double().requires_grad_()
    k, ka = (torch.sigmoid(w), torch.sigmoid(wa)) if learn else (1 / tau, 1 / tau_adapt)
    s_e, v_e, theta_e = explicit_alif(xe, k, ka, beta, 1.0, v_reset, decay_input, detach_reset)
    (s_e * weights).sum().backward()

    assert 0.05 < spikes.mean().item() < 0.6  # the test sees spikes and silences
    assert torch.equal(spikes.detach(), s_e.detach())
    _, v, a = alif_multistep(x.detach(), n.tau_inv(), n.tau_adapt_inv(), n.surrogate, 1.0, beta, v_reset,
                             decay_input, detach_reset, return_state=True)
    theta = 1.0 + beta * torch.cat([torch.zeros_like(a[:1]), a[:-1]])
    torch.testing.assert_close(v, v_e.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(theta, theta_e.detach(), rtol=0, atol=1e-12)
    assert theta.max() > 1.2  # the threshold did adapt
    torch.testing.assert_close(x.grad, xe.grad, rtol=1e-10, atol=1e-12)
    if learn:
        torch.testing.assert_close(n.w.grad, w.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(n.w_adapt.grad, wa.grad, rtol=1e-10, atol=1e-12)
        assert n.w.grad.abs() > 0 and n.w_adapt.grad.abs() > 0
    else:
        assert list(n.parameters()) == [] and set(n.scalars()) == {"tau", "tau_adapt"}  # fixed: flat lines


def test_step_loop_and_repeated_input_give_forward():
    """initial_state + step over T is forward; forward(Repeated(x, T)) is forward of x repeated (direct coding)."""
    torch.manual_seed(1)
    n = ALIF(tau=2.5, tau_adapt=6.0, beta=2.0, v_reset=None).double()
    x = torch.rand(12, 4, 6, dtype=torch.float64) * 2
    state, looped = n.initial_state(x[0]), []
    for t in range(x.shape[0]):
        s, state = n.step(x[t], state)
        looped.append(s)
    assert isinstance(state, tuple) and len(state) == 2
    assert torch.equal(torch.stack(looped), n(x))
    x0 = x[0].clone().requires_grad_()
    xr = x0.detach().clone().requires_grad_()
    torch.testing.assert_close(n(Repeated(x0, 12)), n(xr.unsqueeze(0).expand(12, 4, 6)))
    n(Repeated(x0, 12)).sum().backward()
    n(xr.unsqueeze(0).expand(12, 4, 6)).sum().backward()
    torch.testing.assert_close(x0.grad, xr.grad, rtol=1e-12, atol=1e-12)


def test_beta_zero_is_our_lif():
    torch.manual_seed(2)
    x = torch.rand(20, 3, 4, dtype=torch.float64) * 2
    for v_reset in (0.0, None):
        alif = ALIF(tau=3.0, beta=0.0, learn_tau=False, v_reset=v_reset).double()
        lif = LIF(tau=3.0, v_reset=v_reset, backend="reference")
        assert torch.equal(alif(x), lif(x))


def inter_spike_intervals(spikes):
    times = torch.nonzero(spikes).flatten().tolist()
    return [b - a for a, b in zip(times, times[1:])]


def test_a_constant_input_gives_growing_intervals():
    """Each spike raises the threshold, which decays slower than the spikes come: the intervals grow (6, 6, 7, 7,
    7, 8, ... here) until the threshold's rise per spike balances its decay between spikes (about 9.5 steps, give
    or take a step); without adaptation (beta = 0) they are all equal (5: V = 1.5 (1 - 0.8^t) crosses 1 at t = 5)."""
    x = torch.full((300, 1), 1.5, dtype=torch.float64)
    adaptive = ALIF(tau=5.0, tau_adapt=60.0, beta=3.0, learn_tau=False, learn_tau_adapt=False, v_reset=0.0).double()
    isi = inter_spike_intervals(adaptive(x)[:, 0])
    assert len(isi) >= 20
    assert all(b >= a for a, b in zip(isi[:10], isi[1:10])), isi
    assert sum(isi[-10:]) / 10 > isi[0] + 2, isi
    plain = ALIF(tau=5.0, beta=0.0, learn_tau=False, learn_tau_adapt=False, v_reset=0.0).double()
    assert set(inter_spike_intervals(plain(x)[:, 0])) == {5}


def norse_lsnn(x, w, wa, beta, v_th, decay_input):
    """Norse's feed-forward LSNN (lsnn_feed_forward_step), dt = 1, its synaptic current passing the input through
    (tau_syn_inv = 1: i decays to 0 in one step, then the input is added), so its step t + 1 sees our X[t];
    1/tau_mem = sigmoid(w), 1/tau_adapt = sigmoid(wa); its threshold b jumps by beta_N = beta / (tau_adapt - 1)
    per spike (our beta / tau_adapt, then one step of decay: docs/science.md). decay_input = False feeds tau X.
    Returns its spikes, V and thresholds of steps 1..T (ours 0..T-1)."""
    lsnn = pytest.importorskip("norse.torch.functional.lsnn")
    k, ka = torch.sigmoid(w), torch.sigmoid(wa)
    zero = torch.zeros((), dtype=x.dtype)
    p = lsnn.LSNNParameters(tau_syn_inv=zero + 1, tau_mem_inv=k, tau_adapt_inv=ka, v_leak=zero, v_th=zero + v_th,
                            v_reset=zero, beta=beta * ka / (1 - ka), method="super", alpha=1.0)
    state = lsnn.LSNNFeedForwardState(v=torch.zeros_like(x[0]), i=torch.zeros_like(x[0]),
                                      b=torch.full_like(x[0], v_th))
    drive = x if decay_input else x / k
    spikes, vs, thetas = [], [], []
    for t in range(x.shape[0] + 1):
        thetas.append(state.b + (v_th - state.b) * ka)  # the threshold this step compares with
        z, state = lsnn.lsnn_feed_forward_step(drive[t] if t < x.shape[0] else zero * x[0], state, p, dt=1.0)
        spikes.append(z), vs.append(state.v)
    return torch.stack(spikes[1:]), torch.stack(vs[1:]), torch.stack(thetas[1:])


@pytest.mark.parametrize("decay_input", [True, False])
def test_parity_with_norse_lsnn(decay_input):
    """Equal spikes, membrane and threshold traces and gradients (input, both time constants). Norse's SuperSpike
    surrogate is 1 / (|x| + 1)^2, our fast_sigmoid with slope 1. Its LSNN resets hard, so only the hard reset is
    compared."""
    pytest.importorskip("norse")
    torch.manual_seed(3)
    tau, tau_adapt, beta = 4.0, 9.0, 1.5
    x = (torch.rand(60, 3, 7, dtype=torch.float64) * (3.0 if decay_input else 0.8)).requires_grad_()
    n = ALIF(tau=tau, tau_adapt=tau_adapt, beta=beta, decay_input=decay_input, v_reset=0.0,
             surrogate=FastSigmoid(slope=1.0)).double()
    spikes, v, a = alif_multistep(x, n.tau_inv(), n.tau_adapt_inv(), n.surrogate, 1.0, beta, 0.0, decay_input,
                                  return_state=True)
    weights = torch.randn_like(spikes)
    ((spikes * weights).sum() + v.sum()).backward()

    xn = x.detach().clone().requires_grad_()
    w = n.w.detach().clone().requires_grad_()
    wa = n.w_adapt.detach().clone().requires_grad_()
    zn, vn, theta_n = norse_lsnn(xn, w, wa, beta, 1.0, decay_input)
    ((zn * weights).sum() + vn.sum()).backward()

    assert 0.05 < spikes.mean().item() < 0.6
    assert torch.equal(spikes.detach(), zn.detach())
    torch.testing.assert_close(v.detach(), vn.detach(), rtol=0, atol=1e-12)
    theta = 1.0 + beta * torch.cat([torch.zeros_like(a[:1]), a[:-1]])
    torch.testing.assert_close(theta.detach(), theta_n.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, xn.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(n.w.grad, w.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(n.w_adapt.grad, wa.grad, rtol=1e-9, atol=1e-12)


def test_in_a_recurrent_layer_its_state_is_carried_step_to_step():
    """RFCn with ALIF neurons (snnexp.nn.recurrent calls initial_state / step): spikes and gradients equal the
    equations with the recurrent current I[t] = W_in x[t] + W_rec S[t-1] written out here."""
    from snnexp.nn.recurrent import RecurrentFC

    torch.manual_seed(4)
    layer = RecurrentFC(5, 6, ALIF(tau=3.0, tau_adapt=8.0, beta=1.5, v_reset=None, surrogate=ATan(ALPHA))).double()
    x = (torch.rand(30, 2, 5, dtype=torch.float64) * 8).requires_grad_()
    spikes = layer(x)
    weights = torch.randn_like(spikes)
    (spikes * weights).sum().backward()

    w_in = layer.input.module.weight.detach().clone().requires_grad_()
    w_rec = layer.recurrent.weight.detach().clone().requires_grad_()
    w = layer.neuron.w.detach().clone().requires_grad_()
    wa = layer.neuron.w_adapt.detach().clone().requires_grad_()
    k, ka = torch.sigmoid(w), torch.sigmoid(wa)
    v = a = s = torch.zeros(2, 6, dtype=torch.float64)
    out = []
    for t in range(30):
        h = v + (x[t].detach() @ w_in.T + s @ w_rec.T - v) * k
        theta = 1.0 + 1.5 * a
        s = _Spike.apply(h - theta)
        v, a = h - theta * s, (1 - ka) * a + ka * s
        out.append(s)
    out = torch.stack(out)
    (out * weights).sum().backward()
    assert 0.05 < spikes.mean().item() < 0.6
    assert torch.equal(spikes.detach(), out.detach())
    for ours, theirs in ((layer.input.module.weight, w_in), (layer.recurrent.weight, w_rec), (layer.neuron.w, w),
                         (layer.neuron.w_adapt, wa)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)


def test_learned_time_constants_start_where_configured_and_are_logged():
    n = ALIF(tau=20.0, tau_adapt=200.0)
    assert isinstance(n, SpikingNeuron)
    assert n.scalars() == pytest.approx({"tau": 20.0, "tau_adapt": 200.0}, rel=1e-5)
    assert torch.sigmoid(n.w).item() == pytest.approx(1 / 20) and torch.sigmoid(n.w_adapt).item() == pytest.approx(
        1 / 200)
    assert ALIF(learn_tau=False).scalars() == pytest.approx({"tau": 20.0, "tau_adapt": 200.0}, rel=1e-5)


def test_bad_arguments_are_refused():
    """From Python as from the command line, with the line `snnexp train` prints (config.RULES, the one place)."""
    with pytest.raises(ConfigError, match="ALIF has no fused kernel.*neuron.backend=reference"):
        ALIF(backend="fused")
    with pytest.raises(ConfigError, match=r"neuron.tau_adapt=0.5 is out of range: must be > 1"):
        ALIF(tau_adapt=0.5)
    with pytest.raises(ConfigError, match=r"neuron.beta=-1.0 is out of range: must be >= 0"):
        ALIF(beta=-1.0)


def test_export_refuses_alif():
    from snnexp.export import neuron_node

    with pytest.raises(ExportError, match="ALIF .neuron=alif. has no NIR node"):
        neuron_node(ALIF(v_reset=0.0), (4,), dt=1e-4)


def test_cli_trains_alif_and_the_time_constants_move(tmp_path):
    """`snnexp train neuron=alif ... model=mlp` on digits: the learned time constants move (tau in both ALIF
    layers; tau_adapt in the hidden layer, which spikes: the output layer has not spiked yet in 3 steps, so its
    adaptation a is still 0 and, by a[t] = a[t-1] + (S[t] - a[t-1]) / tau_adapt, tau_adapt has no gradient),
    and TensorBoard has them and the firing rates of the ALIF layers."""
    run_snnexp("train", "neuron=alif", "model=mlp", "model.hidden=[32]", "trainer.epochs=1", "trainer.max_steps=3",
               "trainer.T=6", "trainer.batch_size=32", "trainer.progress=false", "neuron.tau=2.0",
               "neuron.tau_adapt=5.0", "hydra.run.dir=run", cwd=tmp_path)
    run = tmp_path / "run"
    model = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    ws = {k: v for k, v in model.items() if k.endswith((".w", ".w_adapt"))}
    assert len(ws) == 4, list(model)  # two ALIF layers (hidden and output), each w and w_adapt
    for key in ("3.w", "5.w", "3.w_adapt"):  # layers 3 and 5: FC-BN-SN, FC10-SN
        start = -math.log((5.0 if key.endswith("w_adapt") else 2.0) - 1)
        assert abs(ws[key].item() - start) > 1e-4, (key, ws)
    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {t for t in tags if t.startswith(("tau/", "tau_adapt/", "firing_rate/"))} == {
        "tau/layer1", "tau/layer2", "tau_adapt/layer1", "tau_adapt/layer2", "firing_rate/layer1", "firing_rate/layer2"}
    assert json.loads((run / "metrics.json").read_text())["test_acc"] > 0
