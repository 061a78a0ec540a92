"""snnexp.nn.pooling.MaxPool2d against PyTorch's max_pool2d: the same maxima, the same tie-breaking and NaN rule,
the same gradients, in both memory orders; settings the kernel does not take fall back to PyTorch's."""

import pytest
import torch
import torch.nn.functional as F

from snnexp.nn.models import SpecNet
from snnexp.nn.neurons import LIF
from snnexp.nn.pooling import MaxPool2d, _pool_op, max_pool_tiled

ORDERS = [torch.channels_last, torch.contiguous_format]


def _both(x, pool, *args):
    """(y, dL/dx) of `pool` and of F.max_pool2d on the same x and the same upstream gradient."""
    a = x.detach().clone().requires_grad_()
    b = x.detach().clone().requires_grad_()
    ya, yb = pool(a), F.max_pool2d(b, *args)
    g = torch.randn(yb.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    ya.backward(g)
    yb.backward(g)
    return (ya, a.grad), (yb, b.grad)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kernel", [((3, 5, 9, 7), 2), ((4, 3, 6, 6), 3), ((2, 70, 8, 8), (2, 4)),
                                          ((2, 1, 5, 5), 2), ((2, 6, 2, 2), 2)])
def test_spikes_and_real_values_pool_as_in_pytorch(order, dtype, shape, kernel):
    """0/1 spikes (most windows tie: the gradient must go to the first maximum, as PyTorch sends it) and real
    values; maps whose size the window does not divide (the rest gets no gradient); more channels than the
    kernel's block of 64."""
    g = torch.Generator().manual_seed(0)
    for x in [(torch.rand(shape, generator=g) < 0.2).to(dtype), torch.randn(shape, generator=g, dtype=dtype)]:
        x = x.contiguous(memory_format=order)
        (y, gx), (y_ref, gx_ref) = _both(x, MaxPool2d(kernel), kernel)
        assert torch.equal(y, y_ref)
        assert torch.equal(gx, gx_ref)
        assert y.is_contiguous(memory_format=order) and gx.is_contiguous(memory_format=order)


def test_nan_wins_its_window_as_in_pytorch():
    x = torch.tensor([[[[1.0, float("nan"), 3.0, 2.0], [float("nan"), 0.0, 5.0, 5.0]]]])
    (y, gx), (y_ref, gx_ref) = _both(x, MaxPool2d(2), 2)
    assert torch.equal(y.isnan(), y_ref.isnan()) and y[0, 0, 0, 1] == 5.0
    assert torch.equal(gx, gx_ref)  # the later NaN (row 1) takes the gradient; of two 5.0s the first


@pytest.mark.parametrize("pool", [MaxPool2d(3, 2, 1), MaxPool2d(2, 1), MaxPool2d(2, ceil_mode=True),
                                  MaxPool2d(2, dilation=2)])
def test_settings_the_kernel_does_not_take_run_pytorchs(pool):
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    (y, gx), (y_ref, gx_ref) = _both(x, pool, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                                     pool.ceil_mode)
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)


@pytest.mark.parametrize("order", ORDERS)
def test_overlapping_windows_keep_two_bytes_per_window_for_the_backward(order):
    """The transformers' 3x3 stride-2 pools of spikes: what autograd keeps is an int16 index per window (not the
    input and int64 indices, as PyTorch's own pool keeps), and the gradients are PyTorch's."""
    x = (torch.rand(2, 4, 16, 12, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    x = x.contiguous(memory_format=order).requires_grad_()
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        y = MaxPool2d(3, 2, 1)(x)
    assert [(t.dtype, tuple(t.shape)) for t in kept] == [(torch.int16, (2, 4, 8, 6))]
    (_, gx), (_, gx_ref) = _both(x, MaxPool2d(3, 2, 1), 3, 2, 1)
    assert torch.equal(gx, gx_ref) and torch.equal(y, F.max_pool2d(x, 3, 2, 1))
    assert gx.is_contiguous(memory_format=order)


def test_other_layouts_and_the_custom_op_checks():
    """A layout that is neither NCHW nor channels_last is made NCHW; torch.library.opcheck checks the schema,
    the fake implementation, the autograd registration and AOT dispatch (what torch.compile relies on)."""
    x = torch.randn(3, 4, 8, 6, dtype=torch.float64).transpose(2, 3)
    assert torch.equal(max_pool_tiled(x, 2, 2), F.max_pool2d(x, 2))
    for x, channels_last in [(torch.rand(2, 3, 6, 4), False),
                             (torch.rand(2, 3, 6, 4).contiguous(memory_format=torch.channels_last), True)]:
        torch.library.opcheck(_pool_op, (x.requires_grad_(), 2, 2, channels_last))


def test_spec_networks_pool_through_it():
    net = SpecNet("c8k3s1-BN-SN-MPk2s2-FC10-SN", (1, 8, 8), 10, LIF, torch.nn.BatchNorm1d)
    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert pools and all(isinstance(m, MaxPool2d) for m in pools)
