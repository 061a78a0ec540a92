"""Direct coding's input as one explicit type: `Repeated(step, T)`, one step's tensor [B, ...] seen at each of T time
steps, the sequence [T, B, ...] never written out.

The direct encoder hands the network one image per sample at every step, as a view with a time stride of 0;
snnexp.nn.layers.run_layers turns such a view into a Repeated. A layer that can take one (its class attribute
`takes_repeated`) computes from the one step what the T copies would give:
- the layers that treat every step alike and hold no state (conv, linear, pooling, BN, dropout, flatten) their
  output for one step, computed once, again a Repeated;
- a spiking layer its spikes [T, B, ...], reading the step T times in place (the fused kernel's `steps`).
Any other layer gets the view of T copies (`expand`), as do the layers after it. Outputs, gradients and BN
statistics are those of the T copies (tests/test_layers.py checks it in float64): the gradient of the repeated
result is summed over its steps, which is what the T copies' gradients add up to, for BN too (the batch mean and
variance of T equal copies are those of one).
"""

from typing import Callable

import torch

from snnexp.ops.fused import one_block_per_step


class Repeated:
    """`step` [B, ...] at each of `T` time steps (module docstring)."""

    def __init__(self, step: torch.Tensor, T: int):
        self.step, self.T = step, int(T)

    @classmethod
    def of(cls, x_seq: torch.Tensor) -> "Repeated":
        """The Repeated of a [T, B, ...] view with time stride 0 (`repeated_in_time`)."""
        return cls(x_seq[0], x_seq.shape[0])

    def map(self, layer: Callable[[torch.Tensor], torch.Tensor]) -> "Repeated":
        """A layer that treats every step alike, run on the one step."""
        return Repeated(layer(self.step), self.T)

    def expand(self) -> torch.Tensor:
        """The sequence [T, B, ...] as a view of the step (no copy)."""
        return repeat_in_time(self.step, self.T)

    def __repr__(self) -> str:
        return f"Repeated(step of shape {tuple(self.step.shape)}, T={self.T})"


def repeated_in_time(x_seq: torch.Tensor) -> bool:
    """Whether `x_seq` is one tensor seen at every step: a view whose time dimension has stride 0."""
    return x_seq.dim() > 1 and x_seq.shape[0] > 1 and x_seq.stride(0) == 0


def repeat_in_time(y: torch.Tensor, T: int) -> torch.Tensor:
    """[B, ...] -> a [T, B, ...] view of y at every step (no copy)."""
    return _RepeatInTime.apply(y, T) if y.requires_grad else y.unsqueeze(0).expand(T, *y.shape)


class _RepeatInTime(torch.autograd.Function):
    """expand() whose backward sums the steps' gradients into y's own memory order: autograd's sum of an
    expand gives a contiguous (NCHW) gradient, and BN and convolution backward on a channels_last y with an
    NCHW gradient take a slow path that costs more than running them once saved (bench/bench_train_step.py)."""

    @staticmethod
    def forward(ctx, y, T):
        ctx.layout = (y.shape, y.stride()) if one_block_per_step(y.unsqueeze(0)) else None
        return y.unsqueeze(0).expand(T, *y.shape)

    @staticmethod
    def backward(ctx, grad):
        if ctx.layout is None:
            return grad.sum(0), None
        out = torch.empty_strided(*ctx.layout, dtype=grad.dtype, device=grad.device)
        return torch.sum(grad, 0, out=out), None
