"""Spiking attention: the self-attention of Spikformer (SSA), the spike-driven self-attention of the Spike-driven
Transformer (SDSA), and QKFormer's Q-K token and channel attention (QKTA, QKCA). Equations: docs/science.md,
section 5, "Spiking transformers".

All of them work on token maps [T, B, C, H, W]: a token is a position of the map and its C channels are its
features, so the papers' token-wise linear layers (Linear, Conv1d) are 1x1 convolutions here, and the configured
norm (`norm=bn`, `tdbn`, ...) normalises them as it normalises any feature map. Inside the attention the C channels
are split into `heads` groups of d = C / heads, held as [T, B, heads, d, L] with L = H * W tokens.

None of them uses a softmax: Q, K and V are spikes, and what combines them is a `SpikeProduct`, an einsum that
report/activity.py counts as synaptic operations (accumulates where an operand is spikes). The projections run as
conv-BN-SN runs that snnexp.nn.fusion joins into one op where the kernels apply (`layer_runs`).
"""

import math
from typing import Callable, List, Sequence

import torch
from torch import nn

from snnexp.errors import ModelError
from snnexp.nn.layers import SeqToANN, run_layers
from snnexp.nn.weight_standardization import attach_weight_norms

__all__ = ["QKAttention", "SpikeDrivenSelfAttention", "SpikeProduct", "SpikingSelfAttention", "attention_neuron",
           "conv_norm"]


class SpikeProduct(nn.Module):
    """torch.einsum(equation, *operands) as a module, so that its synaptic operations are counted (`operations`)
    and the network summary shows where the attention's products are."""

    def __init__(self, equation: str):
        super().__init__()
        self.equation = equation

    def forward(self, *operands: torch.Tensor) -> torch.Tensor:
        return torch.einsum(self.equation, *operands)

    def operations(self, *operands: torch.Tensor):
        """(effective, dense, accumulates) of one call, counted as NeuroBench counts a layer's: effective = the terms
        of the einsum's sums whose operands are all non-zero (for a one-operand sum: its non-zero entries), dense =
        all terms; accumulates (ACs) when an operand is spikes (every entry -1, 0 or 1), else multiply-accumulates.
        One einsum over the operands' 0/1 indicators (float64: exact to 2^53), summed to a scalar."""
        inputs = self.equation.split("->")[0]
        terms = inputs.replace("...", "").split(",")
        nonzero = [(x != 0).to(torch.float64) for x in operands]
        effective = torch.einsum(f"{inputs}->{'...' if '...' in inputs else ''}", *nonzero).sum()
        sizes = {}  # each letter's size (a letter of size 1 in one operand broadcasts to the others')
        for t, x in zip(terms, operands):
            for letter, n in zip(t, x.shape[x.dim() - len(t):]):
                sizes[letter] = max(sizes.get(letter, 1), n)
        lead = torch.broadcast_shapes(*(x.shape[:x.dim() - len(t)] for t, x in zip(terms, operands)))
        dense = math.prod(lead) * math.prod(sizes.values())
        spikes = any(bool(((x == 0) | (x.abs() == 1)).all()) for x in operands)
        return int(effective), int(dense), spikes

    def extra_repr(self):
        return f"'{self.equation}'"


def conv_norm(cin: int, cout: int, norm: Callable[[int], nn.Module], kernel: int = 1) -> list:
    """A token-wise (1x1) or k x k convolution and the configured norm: the papers' Linear-BN / Conv-BN. No bias:
    the norm's shift stands in for it (the authors' code has biases before some of its BNs, which subtract them
    again: they change only the parameter count). norm=sws standardises the convolution's weight."""
    layers = [SeqToANN(nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False)), norm(cout)]
    attach_weight_norms(layers)
    return layers


def attention_neuron(neuron: Callable[..., nn.Module], threshold) -> nn.Module:
    """The neuron that fires on the attention's sums: the configured one, with its threshold set to `threshold`
    (the papers' 0.5; None keeps the configured threshold)."""
    return neuron() if threshold is None else neuron(v_threshold=float(threshold))


def _heads(dim: int, heads: int, where: str) -> int:
    if heads < 1 or dim % heads:
        raise ModelError(f"{where}: {dim} channels cannot be split into {heads} heads: choose model.heads dividing "
                         f"{dim} (or a width that {heads} divides)")
    return dim // heads


class _Attention(nn.Module):
    """What the three attentions share: the split into heads and the layer runs of their projections."""

    projections: Sequence[str] = ()

    def split(self, x: torch.Tensor, parts: int) -> List[torch.Tensor]:
        """[T, B, parts * C, H, W] -> `parts` tensors [T, B, heads, d, L]."""
        T, B, _, H, W = x.shape
        return list(x.reshape(T, B, parts, self.heads, self.head_dim, H * W).unbind(2))

    def layer_runs(self):
        """The names of the layers run one after the other (snnexp.nn.fusion joins their BN-SN)."""
        return [[f"{p}.{i}" for i in range(len(getattr(self, p)))] for p in self.projections]

    def extra_repr(self):
        return f"dim={self.dim}, heads={self.heads}"


class SpikingSelfAttention(_Attention):
    """Spikformer's SSA (Zhou et al. 2023): Q, K, V = SN(BN(X W)), spikes [L, d] per head, and

        SSA(X) = SN(BN(SN_a(Q K^T V * s) W_o))

    with a fixed scale s (0.125) and no softmax: Q K^T V are products of spikes, all >= 0. The product is taken as
    Q (K^T V), whose cost grows with L d^2 rather than L^2 d (the same numbers: they are sums of integers). SN_a is
    the configured neuron with threshold `attention_threshold`. Q, K and V come from one projection of 3C channels,
    which is the three apart (BN and SN act per channel). [T, B, C, H, W] spikes -> [T, B, C, H, W] spikes."""

    projections = ("qkv", "proj")

    def __init__(self, dim: int, heads: int, neuron: Callable, norm: Callable, scale: float = 0.125,
                 attention_threshold=0.5):
        super().__init__()
        self.dim, self.heads, self.scale = dim, heads, float(scale)
        self.head_dim = _heads(dim, heads, "spiking self-attention")
        self.qkv = nn.Sequential(*conv_norm(dim, 3 * dim, norm), neuron())
        self.kv = SpikeProduct("...cl,...el->...ce")  # K^T V: [d, d] per head
        self.qkv_product = SpikeProduct("...ce,...cl->...el")  # Q (K^T V), channel-major
        self.attention_neuron = attention_neuron(neuron, attention_threshold)
        self.proj = nn.Sequential(*conv_norm(dim, dim, norm), neuron())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(run_layers(self.qkv, x), 3)
        attention = self.qkv_product(self.kv(k, v), q) * self.scale
        return run_layers(self.proj, self.attention_neuron(attention).reshape(x.shape))

    def extra_repr(self):
        return super().extra_repr() + f", scale={self.scale}"


class SpikeDrivenSelfAttention(_Attention):
    """The Spike-driven Transformer's SDSA (Yao et al. 2023), with its membrane shortcut: X is the block's input
    before any spike (potentials), S = SN(X), Q, K, V = SN(BN(S W)), and

        SDSA(X) = BN(Q (x) SN_a(SUM_tokens(K (x) V)) W_o)

    with (x) the element-wise product: SUM_tokens(K (x) V) counts, for each channel of each head, the tokens where
    both K and V fire, SN_a turns the counts into a channel mask, and Q is masked by it. No matrix product at all.
    The block adds it to X. [T, B, C, H, W] potentials -> [T, B, C, H, W] potentials."""

    projections = ("q", "k", "v")

    def __init__(self, dim: int, heads: int, neuron: Callable, norm: Callable, attention_threshold=0.5):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.head_dim = _heads(dim, heads, "spike-driven self-attention")
        self.shortcut_neuron = neuron()
        self.q = nn.Sequential(*conv_norm(dim, dim, norm), neuron())
        self.k = nn.Sequential(*conv_norm(dim, dim, norm), neuron())
        self.v = nn.Sequential(*conv_norm(dim, dim, norm), neuron())
        self.kv = SpikeProduct("...cl,...cl->...c")  # SUM_tokens(K (x) V), per channel of a head
        self.mask = SpikeProduct("...c,...cl->...cl")  # Q (x) mask
        self.attention_neuron = attention_neuron(neuron, attention_threshold)
        self.proj = nn.Sequential(*conv_norm(dim, dim, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shortcut_neuron(x)
        q, k, v = (self.split(run_layers(p, s), 1)[0] for p in (self.q, self.k, self.v))
        masked = self.mask(self.attention_neuron(self.kv(k, v)), q)
        return run_layers(self.proj, masked.reshape(x.shape))


class QKAttention(_Attention):
    """QKFormer's Q-K attention (Zhou et al. 2024): Q, K = SN(BN(X W)) spikes, and

        token (QKTA):    A = SN_a(SUM_channels(Q)), one value per token,    QKA(X) = SN(BN((A (x) K) W_o))
        channel (QKCA):  A = SN_a(SUM_tokens(Q)), one value per channel,

    per head: Q's sums become a 0/1 mask that selects K's tokens (or channels). Linear in the tokens, no V.
    [T, B, C, H, W] spikes -> [T, B, C, H, W] spikes."""

    projections = ("qk", "proj")
    KINDS = {"token": ("...cl->...l", "...l,...cl->...cl"), "channel": ("...cl->...c", "...c,...cl->...cl")}

    def __init__(self, dim: int, heads: int, neuron: Callable, norm: Callable, kind: str = "token",
                 attention_threshold=0.5):
        super().__init__()
        if kind not in self.KINDS:
            raise ModelError(f"model.qk_attention={kind!r}: choose token or channel")
        self.dim, self.heads, self.kind = dim, heads, kind
        self.head_dim = _heads(dim, heads, "Q-K attention")
        self.qk = nn.Sequential(*conv_norm(dim, 2 * dim, norm), neuron())
        self.q_sum = SpikeProduct(self.KINDS[kind][0])
        self.mask = SpikeProduct(self.KINDS[kind][1])
        self.attention_neuron = attention_neuron(neuron, attention_threshold)
        self.proj = nn.Sequential(*conv_norm(dim, dim, norm), neuron())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.split(run_layers(self.qk, x), 2)
        masked = self.mask(self.attention_neuron(self.q_sum(q)), k)
        return run_layers(self.proj, masked.reshape(x.shape))

    def extra_repr(self):
        return super().extra_repr() + f", kind={self.kind}"
