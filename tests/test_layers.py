"""Time-major layers, readouts and the rate loss against docs/science.md, sections 3 and 4."""

import pytest
import torch
from torch import nn

from snnexp.nn.layers import SeqDropout
from snnexp.nn.losses import MSERate
from snnexp.nn.norms import BatchNormOverTime, ThresholdDependentBatchNorm
from snnexp.nn.readouts import RateReadout, VotingReadout


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- BN through time


def _seq_with_time_varying_stats(shape, seed):
    # each time step has its own offset and scale, so per-step statistics would differ from the fold's
    T = shape[0]
    x = torch.randn(shape, generator=gen(seed), dtype=torch.float64)
    offsets = torch.arange(T, dtype=torch.float64).view(T, *([1] * (len(shape) - 1)))
    return x * (1 + offsets) + 3 * offsets


@pytest.mark.parametrize(
    "shape, reference",
    [((4, 3, 5, 6, 7), nn.BatchNorm2d), ((4, 3, 5), nn.BatchNorm1d), ((3, 2, 5, 9), nn.BatchNorm1d)],
)
def test_bn_through_time_equals_bn_on_time_batch_fold(shape, reference):
    T, B, C = shape[:3]
    x = _seq_with_time_varying_stats(shape, 0)
    ours = BatchNormOverTime(C).double()
    ref = reference(C).double()
    with torch.no_grad():
        w = torch.rand(C, generator=gen(1), dtype=torch.float64) + 0.5
        b = torch.randn(C, generator=gen(2), dtype=torch.float64)
        for m in (ours, ref):
            m.weight.copy_(w)
            m.bias.copy_(b)
    ours.train(), ref.train()
    for _ in range(2):
        y = ours(x)
        y_ref = ref(x.flatten(0, 1)).unflatten(0, (T, B))
        assert y.shape == x.shape
        torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x.flatten(0, 1)).unflatten(0, (T, B)))


def test_bn_through_time_statistics_span_time_and_batch():
    # With weight 1, bias 0: per channel, mean 0 and (biased) variance 1 over (T, B, H, W) together,
    # while single time steps are NOT normalised on their own (the input's offset grows with t).
    x = _seq_with_time_varying_stats((4, 3, 2, 5, 5), 5)
    y = BatchNormOverTime(2).double().train()(x)
    dims = (0, 1, 3, 4)
    torch.testing.assert_close(y.mean(dims), torch.zeros(2, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.var(dims, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)
    per_step_mean = y.mean((1, 3, 4))  # [T, C]
    assert (per_step_mean[0] < -0.5).all() and (per_step_mean[-1] > 0.5).all()


@pytest.mark.parametrize("alpha, v_th", [(1.0, 1.0), (0.5, 1.5), (2.0, 0.25)])
def test_tdbn_std_is_alpha_times_threshold(alpha, v_th):
    bn = ThresholdDependentBatchNorm(3, alpha=alpha, v_threshold=v_th)
    torch.testing.assert_close(bn.weight.detach(), torch.full((3,), alpha * v_th))
    torch.testing.assert_close(bn.bias.detach(), torch.zeros(3))
    g = gen(6)
    scales = torch.tensor([0.1, 3.0, 20.0]).view(1, 1, 3, 1, 1)
    x = (torch.randn((4, 8, 3, 6, 6), generator=g) * scales + 5.0).double()
    y = bn.double().train()(x)
    assert y.shape == x.shape
    std = y.std((0, 1, 3, 4), unbiased=False)
    torch.testing.assert_close(std, torch.full((3,), alpha * v_th, dtype=torch.float64), rtol=1e-3, atol=0)
    torch.testing.assert_close(y.mean((0, 1, 3, 4)), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)


# ---------------------------------------------------------------- dropout


def test_seq_dropout_one_mask_for_all_steps():
    torch.manual_seed(0)
    drop = SeqDropout(p=0.5).train()
    x = torch.rand((6, 4, 3, 50)) + 0.5  # strictly positive, so a zero means "dropped"
    y = drop(x)
    assert y.shape == x.shape
    dropped = y == 0
    # the positions zeroed at t = 0 are zeroed at every step, and nothing else is
    for t in range(6):
        assert torch.equal(dropped[t], dropped[0])
    # kept units are scaled by 1 / (1 - p) = 2
    torch.testing.assert_close(y[~dropped], 2 * x[~dropped])
    frac = dropped[0].float().mean().item()
    assert 0.35 < frac < 0.65
    # one mask per sample (not one for the whole batch)
    assert not torch.equal(dropped[0, 0], dropped[0, 1])


def test_seq_dropout_identity_in_eval_and_p_zero():
    x = torch.rand((3, 2, 10))
    assert torch.equal(SeqDropout(0.5).eval()(x), x)
    assert torch.equal(SeqDropout(0.0).train()(x), x)
    with pytest.raises(ValueError):
        SeqDropout(1.0)
    with pytest.raises(ValueError):
        SeqDropout(-0.1)


# ---------------------------------------------------------------- readouts


def test_rate_readout_is_mean_over_time():
    # T = 4, B = 2, K = 3; rates by hand: sum over T / 4
    s = torch.tensor(
        [
            [[1, 0, 0], [0, 1, 1]],
            [[1, 1, 0], [0, 0, 1]],
            [[1, 0, 0], [0, 1, 1]],
            [[0, 0, 0], [1, 0, 1]],
        ],
        dtype=torch.float32,
    )
    rate = RateReadout()(s)
    # sample 0: [3/4, 1/4, 0];  sample 1: [1/4, 2/4, 4/4]
    torch.testing.assert_close(rate, torch.tensor([[0.75, 0.25, 0.0], [0.25, 0.5, 1.0]]))


def test_voting_readout_averages_each_population():
    # population P = 2, K = 3 classes -> 6 output neurons: neurons (0,1) class 0, (2,3) class 1, (4,5) class 2
    # t0: [1,0, 1,1, 0,0];  t1: [1,1, 0,0, 0,1]
    # neuron rates: [1, 0.5, 0.5, 0.5, 0, 0.5] -> class scores: [0.75, 0.5, 0.25]
    s = torch.tensor([[[1, 0, 1, 1, 0, 0]], [[1, 1, 0, 0, 0, 1]]], dtype=torch.float32)
    score = VotingReadout(population=2)(s)
    assert score.shape == (1, 3)
    torch.testing.assert_close(score, torch.tensor([[0.75, 0.5, 0.25]]))


def test_voting_readout_population_three_and_one():
    # P = 3, K = 2, T = 1, B = 2: sample 0 [1,1,0 | 0,0,1] -> [2/3, 1/3];  sample 1 [0,0,0 | 1,1,1] -> [0, 1]
    s = torch.tensor([[[1, 1, 0, 0, 0, 1], [0, 0, 0, 1, 1, 1]]], dtype=torch.float64)
    torch.testing.assert_close(VotingReadout(3)(s), torch.tensor([[2 / 3, 1 / 3], [0.0, 1.0]], dtype=torch.float64))
    # P = 1 is the plain rate
    torch.testing.assert_close(VotingReadout(1)(s), s[0])
    with pytest.raises(ValueError):
        VotingReadout(0)


# ---------------------------------------------------------------- loss


def test_mse_rate_against_hand_one_hot():
    rate = torch.tensor([[0.5, 0.25, 0.0], [0.0, 1.0, 0.75]])
    target = torch.tensor([0, 2])
    # one-hot: [[1,0,0],[0,0,1]];  differences: [-0.5, 0.25, 0], [0, 1, -0.25]
    # squares: 0.25 + 0.0625 + 0 + 0 + 1 + 0.0625 = 1.375;  mean over 6 entries = 1.375 / 6
    loss = MSERate()(rate, target)
    assert loss.item() == pytest.approx(1.375 / 6)
    # perfect rates give zero loss
    assert MSERate()(torch.tensor([[0.0, 1.0]]), torch.tensor([1])).item() == 0.0


# ---------------------------------------------------------------- direct coding: the first layers run once


@pytest.mark.parametrize("spec", ["{c6k3s1-BN-SN-MPk2s2}*2-FC10-SN", "DP-FC16-BN-SN-FC10-SN"])
@pytest.mark.parametrize("norm", [BatchNormOverTime, ThresholdDependentBatchNorm])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_repeated_input_runs_the_first_layers_once_with_the_numbers_of_t_copies(spec, norm, momentum):
    """Direct coding's [T, B, ...] view of one image (stride 0 in time) against the same image copied T times:
    the layers before the first neuron run on [B, ...] once, and the spikes, every parameter's gradient and the BN
    running statistics (momentum or cumulative) are those of the T*B fold, in float64."""
    import copy
    from functools import partial

    from snnexp.nn.encoders import DirectEncoder
    from snnexp.nn.models import SpecNet
    from snnexp.nn.neurons import PLIF

    torch.manual_seed(0)
    net = SpecNet(spec, (1, 8, 8), 10, partial(PLIF, v_threshold=0.3), partial(norm, momentum=momentum),
                  dropout=0.3).double()
    twin = copy.deepcopy(net)
    seen = {}
    for name, model in (("once", net), ("copies", twin)):
        first = next(m.module for m in model if hasattr(m, "module"))
        first.register_forward_pre_hook(lambda mod, inp, name=name: seen.update({name: inp[0].shape[0]}))
    x = torch.rand(6, 1, 8, 8, generator=gen(1), dtype=torch.float64)
    weights = torch.randn(4, 6, 10, generator=gen(2), dtype=torch.float64)
    for step in range(2):  # two training steps: the running statistics are updated twice
        outs = []
        for model, x_seq in ((net, DirectEncoder()(x, 4)), (twin, x.unsqueeze(0).repeat(4, 1, 1, 1, 1))):
            torch.manual_seed(10 + step)  # the same dropout mask
            out = model.train()(x_seq)
            (out * weights).sum().backward()
            outs.append(out)
        assert torch.equal(outs[0], outs[1]) and outs[0].sum() > 0
    assert seen == {"once": 6, "copies": 24}
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, b), c in zip(net.named_buffers(), twin.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-12, msg=name)
    assert torch.equal(net.eval()(DirectEncoder()(x, 4)), twin.eval()(x.unsqueeze(0).repeat(4, 1, 1, 1, 1)))
