"""Spike functions: Heaviside step forward, the derivative of a smooth stand-in backward.

Each surrogate is a small module so that Hydra can build it from `conf/surrogate/*.yaml`
and a neuron can call it as `spike = surrogate(v - v_threshold)`. Formulas: snn-reference.md, section 2.
"""

import math

import torch
from torch import nn


class _SpikeFn(torch.autograd.Function):
    """Heaviside forward; backward multiplies by `grad_fn(x)` supplied by the surrogate."""

    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


class Surrogate(nn.Module):
    """Base class: forward(x) = H(x) with dH/dx replaced by `self.grad(x)`."""

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SpikeFn.apply(x, self)


class Rect(Surrogate):
    """STBP's rectangular window: 1/a where |x| < a/2, else 0."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = float(width)

    def grad(self, x):
        return (x.abs() < self.width / 2).to(x.dtype) / self.width

    def extra_repr(self):
        return f"width={self.width}"


class Sigmoid(Surrogate):
    """sigma(alpha x); derivative alpha * s * (1 - s)."""

    def __init__(self, alpha: float = 4.0):
        super().__init__()
        self.alpha = float(alpha)

    def grad(self, x):
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class ATan(Surrogate):
    """(1/pi) atan(pi/2 alpha x) + 1/2; derivative (alpha/2) / (1 + (pi/2 alpha x)^2). PLIF's choice."""

    def __init__(self, alpha: float = 2.0):
        super().__init__()
        self.alpha = float(alpha)

    def grad(self, x):
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class FastSigmoid(Surrogate):
    """SuperSpike: derivative 1 / (1 + slope |x|)^2."""

    def __init__(self, slope: float = 25.0):
        super().__init__()
        self.slope = float(slope)

    def grad(self, x):
        return 1.0 / (1 + self.slope * x.abs()) ** 2

    def extra_repr(self):
        return f"slope={self.slope}"


class Triangle(Surrogate):
    """Derivative max(0, 1 - |x|/w) / w."""

    def __init__(self, width: float = 1.0):
        super().__init__()
        self.width = float(width)

    def grad(self, x):
        return torch.clamp(1 - x.abs() / self.width, min=0) / self.width

    def extra_repr(self):
        return f"width={self.width}"
