"""The spiking attentions against the papers' equations (docs/science.md, section 7), computed here independently of
snnexp.nn.attention: explicit loops over small hand-made 0/1 tensors, and a few examples worked out by hand.

The neurons are IF neurons (no leak), so that at T=1 a neuron fires exactly where its input reaches its threshold,
and at T=2 a two-line loop (V += X; fire at V >= threshold; reset to 0) gives its spikes. The projections that make
Q, K and V are replaced by modules that return chosen spike patterns (and record what they were given), and the
output projection by nothing, so that each test sees the attention's formula alone; one test keeps the real layers
with identity weights and BN in eval mode with unit statistics, which give Q = K = V = X.

Layout (ours and the authors'): a [T, B, C, H, W] token map has L = H * W tokens; the C channels are `heads`
contiguous groups of d = C / heads; a fused projection of n parts (SSA's QKV, QKFormer's QK) is part-major.
"""

import functools

import pytest
import torch
from torch import nn

from snnexp.errors import ModelError
from snnexp.nn.attention import QKAttention, SpikeDrivenSelfAttention, SpikingSelfAttention
from snnexp.nn.models.transformers import Block, QKFormer, SpikeDrivenTransformer, Spikformer
from snnexp.nn.neurons import IF, LIF
from snnexp.nn.norms import BatchNormOverTime

NEURON = functools.partial(IF, v_threshold=0.5)  # projections: fire on any spike given (T=1), BN(1) = 1 - 1e-5/2
H, W = 2, 3  # L = 6 tokens


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class Given(nn.Module):
    """A projection replaced by chosen spikes: returns `spikes` whatever it is given, and records its inputs."""

    def __init__(self, spikes: torch.Tensor):
        super().__init__()
        self.spikes, self.inputs = spikes, []

    def forward(self, x):
        self.inputs.append(x)
        return self.spikes


def if_spikes(x_seq: torch.Tensor, threshold: float) -> torch.Tensor:
    """IF neuron, hard reset to 0, over the first dimension (time)."""
    v, out = torch.zeros_like(x_seq[0]), []
    for x in x_seq:
        v = v + x
        s = (v >= threshold).float()
        v = v * (1 - s)
        out.append(s)
    return torch.stack(out)


def spikes(*shape, p=0.5, seed=0) -> torch.Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def heads_to_map(x: torch.Tensor) -> torch.Tensor:
    """[T, B, heads, d, L] -> [T, B, heads * d, H, W]: head h holds channels h*d .. h*d + d - 1."""
    T, B, h, d, _ = x.shape
    return x.reshape(T, B, h * d, H, W)


def no_projections(attention: nn.Module, **given: torch.Tensor) -> nn.Module:
    """`attention` with its input projections replaced by `given` spikes ([T, B, n*C, H, W]) and its output
    projection removed: its output is then what its formula gives."""
    for name, value in given.items():
        setattr(attention, name, nn.Sequential(Given(value)))
    if hasattr(attention, "proj"):
        attention.proj = nn.Sequential()
    return attention


# -- Spikformer's SSA: SN_a(Q K^T V * s), per head ---------------------------------------------------------------------

def ssa_reference(q, k, v, scale, threshold):
    """q, k, v [T, B, heads, d, L] (channel-major); the paper's token-major Q [L, d] per head: Q K^T is [L, L]."""
    T, B, heads, d, L = q.shape
    out = torch.zeros(T, B, heads, d, L)
    for t in range(T):
        for b in range(B):
            for h in range(heads):
                Q, K, V = q[t, b, h].T, k[t, b, h].T, v[t, b, h].T  # [L, d]
                for i in range(L):
                    for e in range(d):
                        total = 0.0
                        for j in range(L):
                            total += sum(Q[i, c] * K[j, c] for c in range(d)) * V[j, e]
                        out[t, b, h, e, i] = total * scale
    return if_spikes(out, threshold)


def test_ssa_worked_example():
    """One head, d = 2, L = 3 (token-major rows): Q = [[1,0],[0,1],[1,1]], K = [[1,1],[0,1],[1,0]],
    V = [[1,0],[1,1],[0,1]]. Q K^T = [[1,0,1],[1,1,0],[2,1,1]]; Q K^T V = [[1,1],[2,1],[3,2]]; x 0.25 =
    [[.25,.25],[.5,.25],[.75,.5]]; threshold 0.4: [[0,0],[1,0],[1,1]]."""
    q = torch.tensor([[1., 0], [0, 1], [1, 1]]).T
    k = torch.tensor([[1., 1], [0, 1], [1, 0]]).T
    v = torch.tensor([[1., 0], [1, 1], [0, 1]]).T
    qkv = torch.cat([q, k, v]).reshape(1, 1, 6, 1, 3)
    attention = no_projections(SpikingSelfAttention(2, 1, NEURON, BatchNormOverTime, scale=0.25,
                                                     attention_threshold=0.4), qkv=qkv)
    out = attention(torch.zeros(1, 1, 2, 1, 3))
    expected = torch.tensor([[0., 0], [1, 0], [1, 1]]).T.reshape(1, 1, 2, 1, 3)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("T,heads,d,scale,threshold", [(1, 2, 3, 0.125, 0.5), (1, 3, 2, 0.25, 0.6),
                                                        (2, 2, 2, 0.25, 0.6)])
def test_ssa_is_the_papers_formula(T, heads, d, scale, threshold):
    B, L = 2, H * W
    q, k, v = (spikes(T, B, heads, d, L, seed=i) for i in range(3))
    qkv = torch.cat([heads_to_map(q), heads_to_map(k), heads_to_map(v)], dim=2)
    attention = no_projections(SpikingSelfAttention(heads * d, heads, NEURON, BatchNormOverTime, scale=scale,
                                                    attention_threshold=threshold), qkv=qkv)
    out = attention(torch.zeros(T, B, heads * d, H, W))
    expected = ssa_reference(q, k, v, scale, threshold)
    assert 0 < expected.mean() < 1  # the case has spikes and silences
    assert torch.equal(out, heads_to_map(expected))


def test_ssa_with_identity_projections():
    """The real layers: QKV weights [I; I; I], output weights I, BN in eval mode with unit statistics, IF neurons of
    threshold 0.5: Q = K = V = X and SSA(X) = SN_a(X X^T X * s)."""
    heads, d, T, B = 2, 2, 1, 2
    C = heads * d
    attention = SpikingSelfAttention(C, heads, NEURON, BatchNormOverTime, scale=0.25, attention_threshold=0.6).eval()
    with torch.no_grad():
        attention.qkv[0].module.weight.copy_(torch.eye(C).repeat(3, 1).reshape(3 * C, C, 1, 1))
        attention.proj[0].module.weight.copy_(torch.eye(C).reshape(C, C, 1, 1))
    x = spikes(T, B, heads, d, H * W, seed=7)
    out = attention(heads_to_map(x))
    expected = ssa_reference(x, x, x, 0.25, 0.6)
    assert 0 < expected.mean() < 1
    assert torch.equal(out, heads_to_map(expected))


# -- the Spike-driven Transformer's SDSA: Q (x) SN_a(SUM_tokens(K (x) V)), per channel ---------------------------------

def sdsa_reference(q, k, v, threshold):
    T, B, heads, d, L = q.shape
    sums = torch.zeros(T, B, heads, d)
    for t, b, h, c in ((t, b, h, c) for t in range(T) for b in range(B) for h in range(heads) for c in range(d)):
        sums[t, b, h, c] = sum(k[t, b, h, c, j] * v[t, b, h, c, j] for j in range(L))
    mask = if_spikes(sums, threshold)
    out = torch.zeros_like(q)
    for t, b, h, c, j in ((t, b, h, c, j) for t in range(T) for b in range(B) for h in range(heads)
                          for c in range(d) for j in range(L)):
        out[t, b, h, c, j] = q[t, b, h, c, j] * mask[t, b, h, c]
    return out


def sdsa(heads, d, threshold, q, k, v):
    return no_projections(SpikeDrivenSelfAttention(heads * d, heads, NEURON, BatchNormOverTime,
                                                   attention_threshold=threshold), q=q, k=k, v=v)


def test_sdsa_worked_example():
    """One head, d = 2 channels, L = 3 tokens (rows: channels): K = [[1,1,0],[0,1,1]], V = [[1,0,0],[0,1,1]];
    K (x) V = [[1,0,0],[0,1,1]], summed over tokens [1, 2]; threshold 1.5: mask [0, 1]; Q = [[1,0,1],[1,1,0]]:
    Q (x) mask = [[0,0,0],[1,1,0]]."""
    as_map = functools.partial(torch.reshape, shape=(1, 1, 2, 1, 3))
    q, k, v = (as_map(torch.tensor(m)) for m in ([[1., 0, 1], [1, 1, 0]], [[1., 1, 0], [0, 1, 1]],
                                                  [[1., 0, 0], [0, 1, 1]]))
    out = sdsa(1, 2, 1.5, q, k, v)(torch.zeros(1, 1, 2, 1, 3))
    assert torch.equal(out, as_map(torch.tensor([[0., 0, 0], [1, 1, 0]])))


@pytest.mark.parametrize("T,heads,d,threshold", [(1, 2, 3, 0.5), (1, 2, 2, 2.5), (2, 3, 2, 1.5)])
def test_sdsa_is_the_papers_masked_addition(T, heads, d, threshold):
    B, L = 2, H * W
    q, k, v = (spikes(T, B, heads, d, L, p=0.6, seed=10 + i) for i in range(3))
    out = sdsa(heads, d, threshold, *map(heads_to_map, (q, k, v)))(torch.zeros(T, B, heads * d, H, W))
    expected = sdsa_reference(q, k, v, threshold)
    assert 0 < expected.mean() < q.mean()  # the mask keeps some of Q's spikes and drops others
    assert torch.equal(out, heads_to_map(expected))


def test_sdsa_membrane_shortcut():
    """The block's input X is potentials: the attention's projections get SN(X) (threshold 1), and the block adds
    X itself, not its spikes: x + SDSA(x) = X + Q (x) mask."""
    T, B, heads, d = 1, 2, 2, 2
    x = torch.randn(T, B, heads * d, H, W, generator=torch.Generator().manual_seed(3)) + 0.5
    q, k, v = (spikes(T, B, heads, d, H * W, p=0.6, seed=20 + i) for i in range(3))
    attention = sdsa(heads, d, 1.5, *map(heads_to_map, (q, k, v)))
    attention.shortcut_neuron = IF(v_threshold=1.0)

    class Zero(nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    out = Block(attention, [Zero()])(x)
    for p in (attention.q, attention.k, attention.v):
        assert torch.equal(p[0].inputs[0], (x >= 1).float())
    assert torch.equal(out, x + heads_to_map(sdsa_reference(q, k, v, 1.5)))
    assert not torch.equal(out, out.round())  # potentials


# -- QKFormer's Q-K attention: token SN_a(SUM_channels(Q)) (x) K, channel SN_a(SUM_tokens(Q)) (x) K --------------------

def qk_reference(q, k, kind, threshold):
    T, B, heads, d, L = q.shape
    out = torch.zeros_like(k)
    if kind == "token":  # one value per token of each head: Q's spikes over the head's channels
        sums = torch.zeros(T, B, heads, L)
        for t, b, h, j in ((t, b, h, j) for t in range(T) for b in range(B) for h in range(heads) for j in range(L)):
            sums[t, b, h, j] = sum(q[t, b, h, c, j] for c in range(d))
        mask = if_spikes(sums, threshold)
        for t, b, h, c, j in ((t, b, h, c, j) for t in range(T) for b in range(B) for h in range(heads)
                              for c in range(d) for j in range(L)):
            out[t, b, h, c, j] = mask[t, b, h, j] * k[t, b, h, c, j]
    else:  # one value per channel: Q's spikes over the tokens
        sums = torch.zeros(T, B, heads, d)
        for t, b, h, c in ((t, b, h, c) for t in range(T) for b in range(B) for h in range(heads) for c in range(d)):
            sums[t, b, h, c] = sum(q[t, b, h, c, j] for j in range(L))
        mask = if_spikes(sums, threshold)
        for t, b, h, c, j in ((t, b, h, c, j) for t in range(T) for b in range(B) for h in range(heads)
                              for c in range(d) for j in range(L)):
            out[t, b, h, c, j] = mask[t, b, h, c] * k[t, b, h, c, j]
    return out


@pytest.mark.parametrize("kind,expected", [
    ("token", [[1., 0, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]]),  # sums over channels [2,1,2,0] -> tokens 0 and 2
    ("channel", [[1., 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]]),  # sums over tokens [2,1,2] -> channels 0 and 2
])
def test_qk_attention_worked_example(kind, expected):
    """One head, d = 3 channels, L = 4 tokens (rows: channels), threshold 1.5: Q = [[1,0,1,0],[1,0,0,0],[0,1,1,0]],
    K = [[1,1,0,1],[0,1,1,1],[1,0,1,0]]."""
    q = torch.tensor([[1., 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0]])
    k = torch.tensor([[1., 1, 0, 1], [0, 1, 1, 1], [1, 0, 1, 0]])
    attention = no_projections(QKAttention(3, 1, NEURON, BatchNormOverTime, kind, attention_threshold=1.5),
                               qk=torch.cat([q, k]).reshape(1, 1, 6, 2, 2))
    out = attention(torch.zeros(1, 1, 3, 2, 2))
    assert torch.equal(out, torch.tensor(expected).reshape(1, 1, 3, 2, 2))


@pytest.mark.parametrize("kind", ["token", "channel"])
@pytest.mark.parametrize("T,heads,d,threshold", [(1, 2, 3, 1.5), (2, 3, 2, 1.5)])
def test_qk_attention_is_the_papers_formula(kind, T, heads, d, threshold):
    B, L = 2, H * W
    q, k = spikes(T, B, heads, d, L, seed=30), spikes(T, B, heads, d, L, seed=31)
    qk = torch.cat([heads_to_map(q), heads_to_map(k)], dim=2)
    attention = no_projections(QKAttention(heads * d, heads, NEURON, BatchNormOverTime, kind,
                                           attention_threshold=threshold), qk=qk)
    out = attention(torch.zeros(T, B, heads * d, H, W))
    expected = qk_reference(q, k, kind, threshold)
    assert 0 < expected.mean() < k.mean()
    assert torch.equal(out, heads_to_map(expected))


# -- heads, and what the blocks add ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: SpikingSelfAttention(12, 5, NEURON, BatchNormOverTime),
    lambda: SpikeDrivenSelfAttention(12, 5, NEURON, BatchNormOverTime),
    lambda: QKAttention(12, 5, NEURON, BatchNormOverTime),
    lambda: QKAttention(12, 0, NEURON, BatchNormOverTime),
])
def test_heads_must_divide_the_width(make):
    with pytest.raises(ModelError, match=r"12 channels cannot be split into -?\d+ heads: choose model.heads"):
        make()


@pytest.mark.parametrize("build", [
    lambda: Spikformer((2, 8, 8), 4, LIF, BatchNormOverTime, embed_dim=16, depth=1, heads=3, patch_size=2),
    lambda: SpikeDrivenTransformer((2, 8, 8), 4, LIF, BatchNormOverTime, embed_dim=16, depth=1, heads=3,
                                   pooling="0011"),
    lambda: QKFormer((2, 8, 8), 4, LIF, BatchNormOverTime, embed_dim=32, depths=[1, 1], heads=3),
])
def test_models_refuse_heads_not_dividing_the_width(build):
    with pytest.raises(ModelError, match="model.heads"):
        build()


def block_outputs(model: nn.Module, x: torch.Tensor) -> list:
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
             for m in model.modules() if isinstance(m, Block)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outputs


def test_residual_streams():
    """Spikformer (and QKFormer) add spikes to spikes: a block's output is a sum of spikes, a small non-negative
    integer, and more than binary. The Spike-driven Transformer adds potentials (the membrane shortcut): its
    residual stream is real-valued."""
    torch.manual_seed(0)
    neuron = functools.partial(LIF, tau=2.0, detach_reset=True, v_threshold=0.5)  # lively at these sizes
    x = torch.rand(2, 2, 2, 8, 8) * 2
    for model in (Spikformer((2, 8, 8), 4, neuron, BatchNormOverTime, embed_dim=16, depth=2, heads=2, patch_size=2),
                  QKFormer((2, 8, 8), 4, neuron, BatchNormOverTime, embed_dim=16, depths=[1, 1], heads=2)):
        for out in block_outputs(model, x):
            assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() > 1, type(model).__name__
    sdt = SpikeDrivenTransformer((2, 8, 8), 4, neuron, BatchNormOverTime, embed_dim=16, depth=2, heads=2,
                                 pooling="0011")
    outputs = block_outputs(sdt, x)
    assert len(outputs) == 2
    for out in outputs:
        assert not torch.equal(out, out.round()) and out.min() < 0
