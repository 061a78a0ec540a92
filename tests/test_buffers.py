"""The output blocks the CPU kernels keep (ops/kernels/buffers.py): reused once no tensor uses them, never while
one does (a view, an autograd saved tensor), bounded, and bypassed below glibc's mapping threshold."""

import torch

from snnexp.nn.neurons import LIF
from snnexp.ops.kernels import buffers

BIG = (9, 1 << 20)  # 36 MiB of float32: above the threshold


def test_a_freed_block_is_handed_out_again_and_a_used_one_never():
    buffers.clear()
    a = buffers.empty_strided(BIG, (BIG[1], 1), torch.float32)
    a_ptr = a.data_ptr()
    view = a[3]  # a view keeps the block in use after the tensor is gone
    del a
    b = buffers.empty_strided(BIG, (BIG[1], 1), torch.float32)
    assert b.data_ptr() != a_ptr
    del view
    c = buffers.empty_strided(BIG, (BIG[1], 1), torch.float32)
    assert c.data_ptr() == a_ptr  # no tensor uses it any more: reused, not mapped afresh
    assert b.data_ptr() != c.data_ptr()


def test_small_outputs_and_the_bound():
    buffers.clear()
    small = buffers.empty_strided((4, 5), (5, 1), torch.float32)
    assert small.shape == (4, 5) and not buffers._blocks
    held = [buffers.empty_strided((n, 1 << 20), (1 << 20, 1), torch.float32) for n in range(8, 20)]
    assert sum(map(len, buffers._blocks.values())) <= buffers.LIMIT
    assert sum(n * len(b) for n, b in buffers._blocks.items()) <= buffers.LIMIT_BYTES
    assert all(len(v) <= buffers.PER_SIZE for v in buffers._blocks.values())
    assert len({t.data_ptr() for t in held}) == len(held)


def test_spikes_kept_by_the_caller_are_never_overwritten():
    buffers.clear()
    neuron = LIF()
    x1, x2 = torch.randn(8, 4, 1 << 18) + 0.5, torch.randn(8, 4, 1 << 18) + 0.5  # 32 MiB each
    s1 = neuron(x1.requires_grad_())
    copy = s1.detach().clone()
    s2 = neuron(x2.requires_grad_())  # while s1 (and its saved input) is alive
    s2.sum().backward()
    assert torch.equal(s1, copy) and not torch.equal(s1, s2)
    (s1 * 2).sum().backward()
    assert torch.equal(s1, copy)
