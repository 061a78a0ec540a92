"""Max pooling: `nn.MaxPool2d`, with its own CPU kernel when the windows tile the map.

The spiking convnets of the papers pool spikes with 2x2 windows at stride 2 (`MPk2s2`). There PyTorch's
backward zero-fills dL/dx and then scatters the window gradients into it through 8-byte indices: two passes
over the layer's largest tensor, a tenth of the N-MNIST net's training step (bench/bench_train_step.py).
When kernel == stride (no padding, dilation 1, floor mode) every input element lies in at most one window, so
dL/dx can be written in one dense pass from one byte per window, the position of its maximum
(ops/kernels/pool_cpu.c). Maxima, tie-breaking (the first maximum of the window in row-major order; a NaN
wins) and gradients are PyTorch's exactly (tests/test_pooling.py).

Overlapping windows (the spiking transformers' tokenisers pool 3x3 windows at stride 2, padding 1) run PyTorch's
max_pool2d forward, but what is kept for the backward is the index of each window's maximum in 2 bytes, where
PyTorch's autograd keeps the input and 8-byte indices: on Spikformer's tokeniser ([16, 8, 16, 128,
128] spikes) 16 MiB instead of 192 MiB for the first pool, which took the step's peak memory from 0.77x
SpikingJelly's to 0.66x (bench/bench_transformers.py). The backward adds each window's gradient at its maximum
(`scatter_add_`): PyTorch's gradients, summed in another order where windows overlap. Other devices and dtypes,
dilation and ceil mode run PyTorch's own max_pool2d.
"""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from snnexp.ops.fused import kernel_unavailable, prepare_cpu_kernels
from snnexp.ops.kernels import cpu
from snnexp.ops.pooled import is_channels_last


@torch.library.custom_op("snnexp::max_pool_tiled", mutates_args=())
def _pool_op(x: Tensor, kh: int, kw: int, channels_last: bool) -> Tuple[Tensor, Tensor]:
    return cpu.max_pool(x, kh, kw, channels_last)


@_pool_op.register_fake
def _(x, kh, kw, channels_last):
    N, C, H, W = x.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty(N, C, H // kh, W // kw, dtype=x.dtype, device=x.device, memory_format=fmt)
    n, h, w, c = cpu.maps_shape((N, C, H // kh, W // kw), channels_last)
    return y, torch.empty(n, h, w, c, dtype=torch.uint8, device=x.device)


@torch.library.custom_op("snnexp::max_pool_tiled_backward", mutates_args=())
def _pool_backward_op(grad_y: Tensor, pos: Tensor, x_shape: List[int], kh: int, kw: int,
                      channels_last: bool) -> Tensor:
    return cpu.max_pool_backward(grad_y, pos, x_shape, kh, kw, channels_last)


@_pool_backward_op.register_fake
def _(grad_y, pos, x_shape, kh, kw, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(x_shape, dtype=grad_y.dtype, device=grad_y.device, memory_format=fmt)


def _setup_context(ctx, inputs, output):
    x, kh, kw, channels_last = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.args = list(x.shape), kh, kw, channels_last


def _backward(ctx, grad_y, _grad_pos):
    (pos,) = ctx.saved_tensors
    return _pool_backward_op(grad_y, pos, *ctx.args), None, None, None


_pool_op.register_autograd(_backward, setup_context=_setup_context)


def max_pool_tiled(x: Tensor, kh: int, kw: int) -> Tensor:
    """max_pool2d(x, (kh, kw)) of x [N, C, H, W] (float32 / float64, CPU) through the kernel, in x's memory
    order (channels_last or NCHW; any other layout is made NCHW first)."""
    channels_last = is_channels_last(x)
    return _pool_op(x if channels_last else x.contiguous(), kh, kw, channels_last)[0]


class _CompactIndices(torch.autograd.Function):
    """max_pool2d(x, k, s, p) of x [N, C, H, W], keeping for the backward only the index of each window's maximum,
    in 2 bytes (4 for maps of 2^15 pixels and more), not x and 8-byte indices (module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, k: Tuple[int, int], s: Tuple[int, int], p: Tuple[int, int]) -> Tensor:
        y, indices = F.max_pool2d(x, k, s, p, return_indices=True)
        small = torch.int16 if x.shape[2] * x.shape[3] < 2**15 else torch.int32
        ctx.save_for_backward(indices.to(small))
        ctx.args = x.shape, is_channels_last(x)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        """Each window's gradient added at its maximum, into dL/dx in x's memory order."""
        (indices,) = ctx.saved_tensors
        (N, C, H, W), channels_last = ctx.args
        index, src = indices.long().flatten(2), grad_y.reshape(N, C, -1)
        if channels_last:  # [N, H W, C]: the channels of a pixel side by side
            grad_x = grad_y.new_zeros(N, H * W, C).scatter_add_(1, index.transpose(1, 2), src.transpose(1, 2))
            return grad_x.view(N, H, W, C).permute(0, 3, 1, 2), None, None, None
        grad_x = grad_y.new_zeros(N, C, H * W).scatter_add_(2, index, src)
        return grad_x.view(N, C, H, W), None, None, None


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d whose tiling windows run `max_pool_tiled` on the CPU (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        prepare_cpu_kernels()  # built now, not inside a traced forward

    def forward(self, x):
        kh, kw = nn.modules.utils._pair(self.kernel_size)
        if self._tiles(x, kh, kw):
            return max_pool_tiled(x, kh, kw)
        if self._keeps_compact_indices(x):
            pair = nn.modules.utils._pair
            return _CompactIndices.apply(x, (kh, kw), pair(self.stride or self.kernel_size), pair(self.padding))
        return super().forward(x)

    def _keeps_compact_indices(self, x: Tensor) -> bool:
        """Overlapping windows whose backward keeps 2 bytes per window (module docstring)."""
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
                and x.requires_grad and torch.is_grad_enabled()
                and nn.modules.utils._pair(self.dilation) == (1, 1) and not self.ceil_mode and not self.return_indices)

    def _tiles(self, x: Tensor, kh: int, kw: int) -> bool:
        pair = nn.modules.utils._pair
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
                and pair(self.stride or self.kernel_size) == (kh, kw) and pair(self.padding) == (0, 0)
                and pair(self.dilation) == (1, 1) and not self.ceil_mode and not self.return_indices
                and kh * kw <= 256 and x.shape[2] >= kh and x.shape[3] >= kw and kernel_unavailable("cpu") is None)
