"""Learnable synaptic delays (snnexp.nn.delays, the spec token DFCn[dM]; Hammouamri et al. 2024): the layer against
an explicit shift-and-sum and the Gaussian formula, the gradients of the positions, the sigma schedule and the
rounding of their code, the optimizer groups, the spec token, a run through the CLI, the presets, and the error
without the dcls package."""

import json
import math
import sys
from functools import partial

import pytest
import torch
from hydra import compose, initialize_config_dir

from audio_writers import make_shd
from conftest import run_snnexp
from snnexp.cli import conf_dir
from snnexp.config import validate
from snnexp.errors import ConfigError, ExportError, ModelError, SpecError
from snnexp.export import to_nir
from snnexp.nn import delays
from snnexp.nn.delays import DelayedFC, sigma_at
from snnexp.nn.models import SpecNet, format_spec, parse_spec
from snnexp.nn.neurons import IF, LIF
from snnexp.nn.norms import BatchNormOverTime, NoNorm
from snnexp.report.activity import Activity, spiking_layers


def layer_with_delays(d, F=4, n=3, M=6, seed=0, bias=False):
    """A DelayedFC whose positions put synapse (j, i) at delay d[j][i]: P = M/2 - d."""
    torch.manual_seed(seed)
    layer = DelayedFC(F, n, M, bias=bias)
    with torch.no_grad():
        layer.positions.copy_(M // 2 - torch.as_tensor(d, dtype=torch.float32))
    return layer


def shift_and_sum(x, w, d, bias=None):
    """I_j[t] = sum_i w_ji x_i[t - d_ji] (+ b_j), x_i[s] = 0 for s < 0, written out synapse by synapse."""
    T, B, F = x.shape
    out = torch.zeros(T, B, w.shape[0], dtype=x.dtype)
    for j in range(w.shape[0]):
        for i in range(F):
            k = int(d[j][i])
            out[k:, :, j] += w[j, i] * x[: T - k, :, i]
    return out if bias is None else out + bias


def gaussian_kernel(w, P, sigma, M):
    """The formula of the module docstring, tap c = P + M/2 at the bump's centre: [n, F, M + 1]."""
    taps = torch.arange(M + 1, dtype=P.dtype)
    g = torch.exp(-0.5 * ((taps - (P[..., None] + M / 2)) / (abs(sigma) + 0.27)) ** 2)
    return w[..., None] * g / (g.sum(-1, keepdim=True) + 1e-7)


@pytest.mark.parametrize("bias", [False, True])
def test_integer_delays_are_a_shift_and_sum(bias):
    d = [[0, 1, 6, 3], [2, 2, 0, 5], [6, 4, 1, 0]]
    layer = layer_with_delays(d, bias=bias).eval()
    x = torch.rand(9, 2, 4).round() * torch.randint(1, 4, (9, 2, 4))  # spike counts
    assert torch.equal(layer.delays(), torch.tensor(d))
    expected = shift_and_sum(x, layer.weight.detach(), d, None if layer.bias is None else layer.bias.detach())
    torch.testing.assert_close(layer(x), expected)


def test_a_delay_past_the_last_step_drops_the_spike():
    layer = layer_with_delays([[6]], F=1, n=1).eval()
    x = torch.zeros(5, 1, 1)
    x[0] = 1.0  # arrives at step 6 > T - 1
    assert torch.count_nonzero(layer(x)) == 0


def test_the_training_kernel_is_the_gaussian_formula_at_fractional_positions():
    layer = DelayedFC(5, 3, 8)
    with torch.no_grad():
        layer.positions.uniform_(-4, 4)
        layer.sigma.fill_(1.7)
    P, w = layer.positions.detach().clone(), layer.weight.detach()
    expected = gaussian_kernel(w, P, 1.7, 8)
    torch.testing.assert_close(layer.kernel(), expected)
    # and the layer convolves with it causally: tap c acts on x[t - (M - c)]
    x = torch.rand(12, 2, 5)
    out = torch.zeros(12, 2, 3)
    for c in range(9):
        k = 8 - c
        out[k:] += torch.einsum("tbi,ji->tbj", x[: 12 - k], expected[:, :, c])
    torch.testing.assert_close(layer(x), out)


def test_positions_are_clamped_to_the_kernel_in_training():
    layer = DelayedFC(2, 2, 4)
    with torch.no_grad():
        layer.positions.copy_(torch.tensor([[-9.0, 3.0], [0.5, 2.5]]))
    layer(torch.rand(3, 1, 2))
    assert torch.equal(layer.positions.detach(), torch.tensor([[-2.0, 2.0], [0.5, 2.0]]))


def test_gradients_reach_every_position_and_match_finite_differences():
    torch.manual_seed(1)
    layer = DelayedFC(4, 3, 6)
    layer(torch.rand(2, 1, 4))  # a kernel built in float32 first: DCLS caches its index grid in its builder ...
    layer.double()  # ... which the layer makes anew for each kernel
    with torch.no_grad():
        layer.positions.uniform_(-2.5, 2.5)
        layer.sigma.fill_(2.0)
    x, g = torch.rand(10, 2, 4, dtype=torch.float64), torch.randn(10, 2, 3, dtype=torch.float64)
    (layer(x) * g).sum().backward()
    grad = layer.positions.grad.clone()
    assert torch.isfinite(grad).all() and (grad != 0).all()
    eps = 1e-6
    for j, i in [(0, 0), (1, 2), (2, 3)]:
        losses = []
        for sign in (1, -1):
            with torch.no_grad():
                layer.positions[j, i] += sign * eps
                losses.append(float((layer(x) * g).sum()))
                layer.positions[j, i] -= sign * eps
        assert grad[j, i].item() == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=1e-5)


def their_sigmas(sig_init, epochs):
    """The sigma of each epoch in their training loop (model.py / snn_delays.py decrease_sig, float32 tensor)."""
    final_epoch = epochs // 4
    sig, used = torch.tensor(float(sig_init)), []
    for epoch in range(epochs):
        used.append(float(sig))
        if epoch < final_epoch and float(sig) > 0.23:
            sig = sig * (0.23 / sig_init) ** (1 / final_epoch)
    return used


@pytest.mark.parametrize("M, epochs", [(24, 150), (30, 60), (24, 7)])
def test_sigma_follows_their_schedule_epoch_by_epoch(M, epochs):
    net = SpecNet(f"DFC8d{M}-BN-SN-DFC4d{M}-SN", [10], 4, partial(LIF), partial(BatchNormOverTime))
    layers = delays.delayed_layers(net)
    ours = []
    for epoch in range(1, epochs + 1):  # the loop's numbering: epoch 1 trains with sigma_init
        ours.append(float(layers[0].sigma))
        delays.end_epoch(net, epoch, epochs)
    assert ours == pytest.approx(their_sigmas(M // 2, epochs), rel=1e-5)
    assert float(layers[1].sigma) == pytest.approx(0.23 if epochs >= 4 else M // 2)
    assert sigma_at(epochs, epochs, M / 2) + 0.27 == pytest.approx(0.5 if epochs >= 4 else M / 2 + 0.27)


def test_a_run_shorter_than_four_epochs_keeps_sigma_and_the_state_dict_carries_it():
    layer = DelayedFC(3, 2, 10)
    layer.end_epoch(2, 3)  # E_d = int(0.25 x 3) = 0: their final_epoch 0, sigma unchanged
    assert float(layer.sigma) == 5.0
    with torch.no_grad():
        layer.positions[0, 0] = 5.2  # the epoch's last step moved it past M / 2
    layer.end_epoch(10, 40)
    assert float(layer.positions.detach()[0, 0]) == 5.0
    again = DelayedFC(3, 2, 10)
    again.load_state_dict(layer.state_dict())
    assert float(again.sigma) == pytest.approx(sigma_at(10, 40, 5.0)) == pytest.approx(0.23)


def test_eval_rounds_each_delay_as_their_round_pos_and_one_tap_kernel():
    """Their test pass: P.round_(), sigma 0 and DCLS's 'max' version, i.e. one tap of weight w at round(P)."""
    from DCLS.construct.modules import ConstructKernel1d

    layer = DelayedFC(4, 2, 6)
    with torch.no_grad():
        layer.positions.copy_(torch.tensor([[0.5, 1.5, -2.49, 2.51], [-0.5, 0.2, -3.0, 1.7]]))
    P = layer.positions.detach()
    theirs = ConstructKernel1d(2, 4, 1, 1, (7,), "max")(layer.weight.detach()[..., None], P.round()[None, ..., None],
                                                        torch.zeros(1, 2, 4, 1))
    torch.testing.assert_close(layer.eval().kernel(), theirs)
    assert torch.equal(layer.delays(), torch.tensor([[3, 1, 5, 0], [3, 3, 6, 1]]))  # halves to even: 0.5 -> 0
    assert torch.count_nonzero(layer.kernel(), dim=-1).eq(1).all()


def test_param_groups_give_the_positions_100_times_the_learning_rate():
    net = SpecNet("DFC6d4-BN-SN-DFC3d4-SN", [5], 3, partial(LIF), partial(BatchNormOverTime))
    params = list(net.parameters())
    groups = delays.param_groups(params, net, 1e-3)
    positions = [m.positions for m in delays.delayed_layers(net)]
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in positions]
    assert groups[1]["lr"] == pytest.approx(0.1) and groups[1]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) + len(positions) == len(params)
    opt = torch.optim.Adam(groups, lr=1e-3, weight_decay=1e-5)
    before = [p.detach().clone() for p in (positions[0], net[0].weight)]
    net(torch.rand(8, 4, 5)).sum().backward()
    opt.step()  # Adam's first step moves each parameter by about its learning rate
    moved = [(p.detach() - b).abs().max().item() for p, b in zip((positions[0], net[0].weight), before)]
    assert moved[0] == pytest.approx(0.1, rel=0.01) and moved[1] == pytest.approx(1e-3, rel=0.01)
    plain = SpecNet("FC6-BN-SN-FC3-SN", [5], 3, partial(LIF), partial(BatchNormOverTime))
    assert delays.param_groups(list(plain.parameters()), plain, 1e-3) == list(plain.parameters())


def test_the_spec_token():
    assert format_spec(parse_spec("DFC256-BN-SN-{DFC128d30-BN-SN}*2-DFC20d2-SN")) == \
        "DFC256-BN-SN-{DFC128d30-BN-SN}*2-DFC20d2-SN"
    net = SpecNet("DFC8-BN-SN-DFC3d4-SN", [2, 5, 5], 3, partial(LIF), partial(BatchNormOverTime))
    first, second = delays.delayed_layers(net)
    assert (first.in_features, first.out_features, first.max_delay) == (50, 8, 24)  # flattened, the default M
    assert (second.max_delay, float(second.sigma)) == (4, 2.0)
    assert net(torch.rand(6, 2, 2, 5, 5)).shape == (6, 2, 3)
    for bad, problem in [("DFC8d5-SN", "needs an even maximum delay"), ("DFC8d0-SN", "needs sizes >= 1"),
                         ("DFC8d2000-SN", "needs an even maximum delay d in 2..1000"), ("DFCx-SN", "unknown token")]:
        with pytest.raises(SpecError, match=problem) as e:
            parse_spec(bad)
        assert "DFCn[dM] (linear with learned delays of 0..M steps, M even)" in str(e.value)
    with pytest.raises(ModelError, match="even maximum delay"):
        DelayedFC(3, 2, 3)


def hand_net():
    """DFC2d2 on 2 inputs into IF neurons: weights [[1, 0], [0, 0.5]], delays [[1, 0], [2, 2]]."""
    net = SpecNet("DFC2d2-SN", [2], 2, partial(IF, v_threshold=1.0), partial(NoNorm))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5]]))
        net[0].positions.copy_(1 - torch.tensor([[1.0, 0.0], [2.0, 2.0]]))
    return net.eval()


def test_activity_counts_a_delayed_layer_as_an_fc_layer_of_its_weights():
    """Input spikes [1, 1], [0, 1], [1, 0]: 2 + 1 + 1 spikes, each driving the non-zero weights of its column (one
    each): 4 ACs whatever the delays; dense 3 steps x 2 x 2."""
    model = hand_net()
    x = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    with torch.no_grad(), Activity(model, spiking_layers(model)) as activity:
        activity.batch(model(x).mean(0), torch.tensor([0]))
    s = activity.summary()
    assert s.layer_acs_per_sample == {"00_DelayedFC": 4}
    assert s.dense_ops_per_sample == 3 * 4


def test_the_nir_export_refuses_a_delayed_layer():
    with pytest.raises(ExportError, match="DelayedFC"):
        to_nir(hand_net(), [2])


def test_without_dcls_the_layer_names_the_extra(monkeypatch):
    for name in ("DCLS", "DCLS.construct", "DCLS.construct.modules"):
        monkeypatch.setitem(sys.modules, name, None)  # import DCLS... raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'snnexp\[delays\]'"):
        DelayedFC(3, 2)


def train_args(spec):
    return ("train", "dataset=shd", "dataset.data_dir=data", "dataset.cache_dir=cache", "dataset.workers=1",
            "model=convnet", f"model.spec={spec}", "trainer.T=16", "trainer.batch_size=4", "trainer.epochs=1",
            "trainer.max_steps=2", "hydra.run.dir=run")


def test_a_delay_network_trains_on_shd_files_through_the_cli(tmp_path):
    make_shd(tmp_path / "data")
    run_snnexp(*train_args("DFC16d4-BN-SN-DP-DFC20d4-SN"), cwd=tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step"] == 2 and 0 <= metrics["test_acc"] <= 1
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    weights = state["model"]
    assert {"0.positions", "0.sigma", "4.positions"} <= set(weights)
    assert math.isfinite(float(weights["0.positions"].sum())) and float(weights["0.sigma"]) == 2.0
    out = run_snnexp("eval", "checkpoint=run/checkpoints/last.pt", "hydra.run.dir=ev", cwd=tmp_path).stdout
    assert "test_acc" in out  # the test pass of the rounded delays
    # NeuroBench counts Linear and Conv layers only: its numbers would leave the delayed synapses out
    proc = run_snnexp("eval", "checkpoint=run/checkpoints/last.pt", "neurobench=true", "hydra.run.dir=nb", cwd=tmp_path,
                      check=False)
    assert proc.returncode == 2 and "NeuroBench counts the synaptic operations of Linear and Conv layers only" in \
        proc.stderr and "Traceback" not in proc.stderr


def test_without_dcls_a_run_stops_with_one_line(tmp_path, monkeypatch):
    make_shd(tmp_path / "data")
    for name in ("DCLS", "DCLS.construct", "DCLS.construct.modules"):
        monkeypatch.setitem(sys.modules, name, None)
    proc = run_snnexp(*train_args("DFC16d4-BN-SN-DFC20d4-SN"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"snnexp: error: {delays.MISSING_DCLS}"


@pytest.mark.parametrize("name, spec, T, channels, tau, batch, epochs, acc", [
    ("hammouamri_delays_shd", "DFC256d24-BN-SN-DP-DFC256d24-BN-SN-DP-DFC20d24-SN", 176, 140, 1.005, 256, 150, 0.9507),
    ("hammouamri_delays_ssc", "{DFC512d30-BN-SN-DP}*3-DFC35d30-SN", 160, 140, 1.5, 128, 60, 0.8069),
])
def test_the_presets_hold_their_code_settings(name, spec, T, channels, tau, batch, epochs, acc):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}"])
    validate(cfg)
    assert (cfg.model.spec, cfg.trainer.T, cfg.dataset.channels, cfg.dataset.bin_ms) == (spec, T, channels, 10)
    neuron = cfg.neuron
    assert (neuron.tau, neuron.decay_input, neuron.v_threshold, neuron.v_reset, neuron.detach_reset) == \
        (tau, False, 1, 0, True)
    assert cfg.surrogate._target_.endswith("ATan") and cfg.surrogate.alpha == 5
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 1e-5) and cfg.sched.T_max == epochs
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (batch, epochs)
    assert cfg.readout.reduce == "mean" and cfg.readout.tau == tau and cfg.paper.test_acc == acc
    assert cfg.model.dropout == (0.4 if name.endswith("shd") else 0.25)


def test_the_training_loop_narrows_the_kernel_and_moves_positions_at_their_own_rate(tmp_path):
    """Through `snnexp train`: after each whole epoch sigma follows sigma_at (4 epochs: it reaches its final value
    after the first, int(4 / 4) = 1), and the positions are a parameter group of their own at 100 x optim.lr without
    weight decay, as the authors' second optimizer."""
    make_shd(tmp_path / "data")
    args = [a for a in train_args("DFC16d4-BN-SN-DFC20d4-SN") if not a.startswith(("trainer.epochs", "trainer.max"))]
    run_snnexp(*args, "trainer.epochs=4", "optim.weight_decay=1e-5", cwd=tmp_path)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert float(state["model"]["0.sigma"]) == pytest.approx(sigma_at(4, 4, 2.0))
    weights, positions = state["optimizer"]["param_groups"]
    assert positions["initial_lr"] == pytest.approx(100 * weights["initial_lr"]) and positions["weight_decay"] == 0
    assert weights["weight_decay"] == 1e-5 and len(positions["params"]) == 2  # one position tensor a DFC layer
