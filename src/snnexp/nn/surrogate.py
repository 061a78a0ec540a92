"""Spike functions: Heaviside step forward, the derivative of a smooth stand-in backward.

Each surrogate is a small module so that Hydra can build it from `conf/surrogate/*.yaml`
and a neuron can call it as `spike = surrogate(v - v_threshold)`. Formulas: docs/science.md, section 2.
"""

import math
from typing import Dict, Optional

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

    def kernel_args(self) -> Optional[tuple]:
        """(name, a, b) for the fused neuron kernels (snnexp/nn/neurons/kernels), or None for a surrogate they
        do not know: neurons then use the reference implementation."""
        return None

    def steepness(self) -> Dict[str, float]:
        """The parameters, as configured, that make the gradient steeper (named when a loss goes non-finite)."""
        return {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SpikeFn.apply(x, self)


def _peak(width: float, height: Optional[float]) -> float:
    """A window's height: given, or 1/width so that the derivative integrates to 1 like the step it
    replaces. Ledinauskas et al. 2020 tune height and width apart to keep deep SNNs' gradients in range."""
    return 1.0 / width if height is None else float(height)


class Rect(Surrogate):
    """STBP's rectangular window: `height` (default 1/a) where |x| < a/2, else 0."""

    def __init__(self, width: float = 1.0, height: Optional[float] = None):
        super().__init__()
        self.width, self.height = float(width), _peak(width, height)
        self._height_given = height is not None

    def grad(self, x):
        return (x.abs() < self.width / 2).to(x.dtype) * self.height

    def kernel_args(self):
        return ("rect", self.width, self.height)

    def steepness(self):
        return {"height": self.height} if self._height_given else {}

    def extra_repr(self):
        return f"width={self.width}, height={self.height}"


class Sigmoid(Surrogate):
    """sigma(alpha x); derivative alpha * s * (1 - s)."""

    def __init__(self, alpha: float = 4.0):
        super().__init__()
        self.alpha = float(alpha)

    def grad(self, x):
        s = torch.sigmoid(self.alpha * x)
        return self.alpha * s * (1 - s)

    def kernel_args(self):
        return ("sigmoid", self.alpha, 0.0)

    def steepness(self):
        return {"alpha": self.alpha}

    def extra_repr(self):
        return f"alpha={self.alpha}"


class ATan(Surrogate):
    """(1/pi) atan(pi/2 alpha x) + 1/2; derivative (alpha/2) / (1 + (pi/2 alpha x)^2). PLIF's choice."""

    def __init__(self, alpha: float = 2.0):
        super().__init__()
        self.alpha = float(alpha)

    def grad(self, x):
        return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)

    def kernel_args(self):
        return ("atan", self.alpha, 0.0)

    def steepness(self):
        return {"alpha": self.alpha}

    def extra_repr(self):
        return f"alpha={self.alpha}"


class FastSigmoid(Surrogate):
    """SuperSpike: derivative 1 / (1 + slope |x|)^2."""

    def __init__(self, slope: float = 25.0):
        super().__init__()
        self.slope = float(slope)

    def grad(self, x):
        return 1.0 / (1 + self.slope * x.abs()) ** 2

    def kernel_args(self):
        return ("fast_sigmoid", self.slope, 0.0)

    def steepness(self):
        return {"slope": self.slope}

    def extra_repr(self):
        return f"slope={self.slope}"


class Triangle(Surrogate):
    """Derivative max(0, 1 - |x|/w) * height, height 1/w by default."""

    def __init__(self, width: float = 1.0, height: Optional[float] = None):
        super().__init__()
        self.width, self.height = float(width), _peak(width, height)
        self._height_given = height is not None

    def grad(self, x):
        return torch.clamp(1 - x.abs() / self.width, min=0) * self.height

    def kernel_args(self):
        return ("triangle", self.width, self.height)

    def steepness(self):
        return {"height": self.height} if self._height_given else {}

    def extra_repr(self):
        return f"width={self.width}, height={self.height}"
