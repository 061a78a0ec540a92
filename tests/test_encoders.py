"""Input encoders against docs/science.md, section 4: direct, Poisson (Bernoulli) and latency coding."""

import math

import torch

from snnexp.nn.encoders import DirectEncoder, LatencyEncoder, PoissonEncoder


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- direct coding


def test_direct_repeats_image_every_step():
    x = torch.rand((3, 1, 4, 5), generator=gen(0))
    out = DirectEncoder()(x, T=6)
    assert out.shape == (6, 3, 1, 4, 5)
    for t in range(6):
        assert torch.equal(out[t], x)


def test_direct_keeps_real_values_for_flat_input():
    x = torch.tensor([[0.25, 0.5, 0.0], [1.0, 0.125, 0.75]])
    out = DirectEncoder()(x, T=2)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out, torch.stack([x, x]))


# ---------------------------------------------------------------- Poisson / Bernoulli rate coding


def test_poisson_values_are_binary_and_shape_time_major():
    x = torch.rand((2, 1, 6, 6), generator=gen(1))
    out = PoissonEncoder()(x, T=7, generator=gen(2))
    assert out.shape == (7, 2, 1, 6, 6)
    assert out.dtype == x.dtype
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_poisson_rate_converges_to_pixel_value():
    p = torch.tensor([0.0, 0.05, 0.2, 0.37, 0.5, 0.64, 0.81, 0.95, 1.0]).repeat(2, 1)  # [B=2, 9]
    T = 20000
    rate = PoissonEncoder()(p, T=T, generator=gen(3)).mean(0)
    # binomial std of the rate: sqrt(p (1 - p) / T) <= 0.5 / sqrt(20000) ~= 0.0035; allow 5 sigma
    tol = 5 * 0.5 / math.sqrt(T)
    assert (rate - p).abs().max().item() < tol
    # p = 0 never fires, p = 1 always fires
    assert rate[:, 0].eq(0).all() and rate[:, -1].eq(1).all()


def test_poisson_same_seed_same_spikes_and_other_seed_differs():
    x = torch.full((4, 50), 0.5)
    a = PoissonEncoder()(x, T=10, generator=gen(7))
    b = PoissonEncoder()(x, T=10, generator=gen(7))
    c = PoissonEncoder()(x, T=10, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_poisson_steps_are_not_copies():
    # a fresh draw at every step: with p = 0.5 over 100 pixels two steps agreeing everywhere is ~2^-100
    out = PoissonEncoder()(torch.full((1, 100), 0.5), T=5, generator=gen(9))
    for t in range(1, 5):
        assert not torch.equal(out[t], out[0])


# ---------------------------------------------------------------- latency / time to first spike


def test_latency_one_spike_at_hand_computed_step():
    # T = 5: step = round((1 - p) * 4): p=1 -> 0, 0.75 -> 1, 0.5 -> 2, 0.25 -> 3, 0 -> 4
    x = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0]])
    out = LatencyEncoder()(x, T=5)
    assert out.shape == (5, 1, 5)
    expected = torch.eye(5).unsqueeze(1)  # pixel j spikes at step j
    assert torch.equal(out, expected)


def test_latency_rounding_hand_values():
    # T = 8, (T - 1) = 7: p=0.9 -> 0.7 -> 1;  p=0.6 -> 2.8 -> 3;  p=0.35 -> 4.55 -> 5;  p=0.1 -> 6.3 -> 6
    x = torch.tensor([[0.9, 0.6], [0.35, 0.1]])
    out = LatencyEncoder()(x, T=8)
    assert out.shape == (8, 2, 2)
    assert torch.equal(out.sum(0), torch.ones(2, 2))  # exactly one spike per pixel
    first = out.argmax(0)
    assert first.tolist() == [[1, 3], [5, 6]]


def test_latency_brighter_spikes_earlier_on_random_image():
    x = torch.rand((3, 1, 8, 8), generator=gen(4))
    T = 16
    out = LatencyEncoder()(x, T=T)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out.sum(0), torch.ones_like(x))
    first = out.argmax(0).flatten().float()
    p = x.flatten()
    order = torch.argsort(p, descending=True)
    # spike times are non-decreasing as brightness decreases
    assert (first[order].diff() >= 0).all()
    # and each is the nearest step to (1 - p)(T - 1)
    assert ((first - (1 - p) * (T - 1)).abs() <= 0.5 + 1e-5).all()


def test_latency_threshold_silences_dark_pixels():
    # threshold 0.4: p = 0.25 and 0 stay silent; p = 1, 0.75, 0.5 spike at steps 0, 1, 2 (T = 5)
    x = torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0]])
    out = LatencyEncoder(threshold=0.4)(x, T=5)
    assert out.sum(0).tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    assert out[0, 0, 0] == 1 and out[1, 0, 1] == 1 and out[2, 0, 2] == 1
    assert out.sum() == 3
