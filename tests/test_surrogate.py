"""Surrogate spike functions against docs/science.md, section 2.

Forward: Heaviside, H(x) = 1 for x >= 0.  Backward: the table's derivative, written out here with
`math` (independently of snnexp.nn.surrogate) and evaluated at several points, for default and other
parameter values.
"""

import math

import pytest
import torch

from snnexp.nn.surrogate import ATan, FastSigmoid, Rect, Sigmoid, Surrogate, Triangle

F64 = torch.float64
POINTS = [-2.0, -0.6, -0.5, -0.3, -0.25, -0.1, -1e-3, 0.0, 1e-3, 0.05, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0, 3.0]


def rect_d(x, a):
    return 1.0 / a if abs(x) < a / 2 else 0.0


def sigmoid_d(x, alpha):
    s = 1.0 / (1.0 + math.exp(-alpha * x))
    return alpha * s * (1.0 - s)


def atan_d(x, alpha):
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


def fast_sigmoid_d(x, slope):
    return 1.0 / (1.0 + slope * abs(x)) ** 2


def triangle_d(x, w):
    return max(0.0, 1.0 - abs(x) / w) / w


CASES = [
    # (surrogate module, independent formula, parameter)
    (lambda: Rect(), rect_d, 1.0),  # default width a = 1
    (lambda: Rect(width=0.5), rect_d, 0.5),
    (lambda: Rect(width=2.0), rect_d, 2.0),
    (lambda: Sigmoid(), sigmoid_d, 4.0),  # default alpha = 4
    (lambda: Sigmoid(alpha=1.5), sigmoid_d, 1.5),
    (lambda: Sigmoid(alpha=10.0), sigmoid_d, 10.0),
    (lambda: ATan(), atan_d, 2.0),  # default alpha = 2
    (lambda: ATan(alpha=0.5), atan_d, 0.5),
    (lambda: ATan(alpha=5.0), atan_d, 5.0),
    (lambda: FastSigmoid(), fast_sigmoid_d, 25.0),  # default slope = 25
    (lambda: FastSigmoid(slope=3.0), fast_sigmoid_d, 3.0),
    (lambda: Triangle(), triangle_d, 1.0),  # default width = 1
    (lambda: Triangle(width=0.4), triangle_d, 0.4),
    (lambda: Triangle(width=3.0), triangle_d, 3.0),
]
IDS = [f"{f.__name__}-{p}" for _, f, p in CASES]


@pytest.mark.parametrize("cls, formula", [(Rect, rect_d), (Triangle, triangle_d)])
@pytest.mark.parametrize("width, height", [(1.0, 0.3), (0.5, 4.0), (2.0, 2.0)])
def test_height_scales_the_window_apart_from_its_width(cls, formula, width, height):
    """Ledinauskas 2020 tune the surrogate's height and width separately: with `height` set, the derivative
    is the unit-area window of that width rescaled to peak at `height` (formula x width x height)."""
    x = torch.tensor(POINTS, dtype=F64, requires_grad=True)
    cls(width=width, height=height)(x).sum().backward()
    expected = torch.tensor([formula(p, width) * width * height for p in POINTS], dtype=F64)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)
    assert x.grad.max().item() == pytest.approx(height)


@pytest.mark.parametrize("make, formula, param", CASES, ids=IDS)
def test_forward_is_heaviside(make, formula, param):
    x = torch.tensor(POINTS, dtype=F64)
    y = make()(x)
    expected = torch.tensor([1.0 if p >= 0 else 0.0 for p in POINTS], dtype=F64)
    assert y.dtype == F64 and y.shape == x.shape
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    # float32 and multi-dimensional inputs too; x = 0 spikes
    z = torch.tensor([[-1e-6, 0.0], [1e-6, -5.0]])
    torch.testing.assert_close(make()(z), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), rtol=0, atol=0)


@pytest.mark.parametrize("make, formula, param", CASES, ids=IDS)
def test_backward_matches_reference_formula(make, formula, param):
    x = torch.tensor(POINTS, dtype=F64, requires_grad=True)
    make()(x).sum().backward()
    expected = torch.tensor([formula(p, param) for p in POINTS], dtype=F64)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make, formula, param", CASES, ids=IDS)
def test_backward_is_chained_with_upstream_gradient(make, formula, param):
    # d(sum_i c_i H(x_i))/dx_i = c_i * surrogate'(x_i)
    x = torch.tensor([-0.2, 0.0, 0.1, 0.4], dtype=F64, requires_grad=True)
    c = torch.tensor([3.0, -2.0, 0.5, 7.0], dtype=F64)
    (make()(x) * c).sum().backward()
    expected = torch.tensor([ci * formula(p, param) for ci, p in zip(c.tolist(), x.tolist())], dtype=F64)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_some_hand_values():
    # Rect a=0.5: 1/a = 2 inside |x| < 0.25, 0 at and beyond the edge
    x = torch.tensor([0.0, 0.2, -0.24, 0.25, -0.25, 0.3], dtype=F64, requires_grad=True)
    Rect(width=0.5)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0, 0.0], dtype=F64))
    # ATan alpha=2 at 0: (2/2)/(1+0) = 1;  at x = 1/pi: 1/(1 + (pi/2*2/pi)^2) = 1/2
    x = torch.tensor([0.0, 1 / math.pi], dtype=F64, requires_grad=True)
    ATan(alpha=2.0)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 0.5], dtype=F64))
    # Sigmoid alpha=4 at 0: 4 * 1/2 * 1/2 = 1
    x = torch.tensor([0.0], dtype=F64, requires_grad=True)
    Sigmoid(alpha=4.0)(x).sum().backward()
    assert x.grad.item() == pytest.approx(1.0)
    # FastSigmoid slope 25 at 0.04: 1/(1+1)^2 = 1/4;  Triangle w=2 at 0.5: (1 - 0.25)/2 = 0.375
    x = torch.tensor([0.04], dtype=F64, requires_grad=True)
    FastSigmoid(slope=25.0)(x).sum().backward()
    assert x.grad.item() == pytest.approx(0.25)
    x = torch.tensor([0.5], dtype=F64, requires_grad=True)
    Triangle(width=2.0)(x).sum().backward()
    assert x.grad.item() == pytest.approx(0.375)


STAND_INS = [
    # (surrogate, smooth stand-in whose derivative the backward must be)
    (ATan(), lambda x: torch.atan(math.pi / 2 * 2.0 * x) / math.pi + 0.5),
    (ATan(alpha=3.5), lambda x: torch.atan(math.pi / 2 * 3.5 * x) / math.pi + 0.5),
    (Sigmoid(alpha=4.0), lambda x: torch.sigmoid(4.0 * x)),
    (Sigmoid(alpha=0.7), lambda x: torch.sigmoid(0.7 * x)),
    # SuperSpike: x / (1 + slope |x|) has derivative 1 / (1 + slope |x|)^2
    (FastSigmoid(slope=25.0), lambda x: x / (1 + 25.0 * x.abs())),
]


@pytest.mark.parametrize("surrogate, stand_in", STAND_INS, ids=lambda v: repr(v) if isinstance(v, Surrogate) else None)
def test_backward_is_derivative_of_stand_in(surrogate, stand_in):
    x = torch.linspace(-2.0, 2.0, 41, dtype=F64).requires_grad_()
    stand_in(x).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    surrogate(x).sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_atan_stand_in_limits():
    # the stand-in (1/pi) atan(pi/2 alpha x) + 1/2 goes from 0 to 1, is 1/2 at 0, and its derivative
    # integrates to 1: the surrogate gradient is a proper smoothing of the unit step
    alpha = 2.0
    xs = torch.linspace(-200.0, 200.0, 400001, dtype=F64, requires_grad=True)
    ATan(alpha)(xs).sum().backward()
    integral = torch.trapezoid(xs.grad, xs.detach()).item()
    stand_in_span = (math.atan(math.pi / 2 * alpha * 200.0) - math.atan(-math.pi / 2 * alpha * 200.0)) / math.pi
    assert integral == pytest.approx(stand_in_span, rel=1e-4)


@pytest.mark.parametrize("make", [Rect, Triangle])
def test_width_surrogates_integrate_to_one(make):
    # the 1/a height of Rect and the 1/w of Triangle make the area under the surrogate exactly 1
    for width in (0.3, 1.0, 2.5):
        xs = torch.linspace(-5.0, 5.0, 200001, dtype=F64, requires_grad=True)
        make(width=width)(xs).sum().backward()
        assert torch.trapezoid(xs.grad, xs.detach()).item() == pytest.approx(1.0, abs=1e-3)
