"""Spiking transformers: Spikformer (Zhou et al. 2023), the Spike-driven Transformer (Yao et al. 2023) and QKFormer
(Zhou et al. 2024), time-major [T, B, C, H, W] -> [T, B, num_outputs], with the configured neuron and norm.

Each is a tokeniser (convolutions that cut the image into a grid of tokens: the papers' spiking patch splitting or
patch embedding), transformer blocks (attention and a token-wise MLP, each added to its input:
x = x + attention(x); x = x + mlp(x)) and a head (the mean over tokens, a linear classifier and the configured
neuron, which a membrane readout replaces by non-spiking outputs: the papers' head). The attentions are those of
snnexp.nn.attention; the architectures, and where our code and SpikingJelly's differ from the papers' code, are in
docs/science.md, section 5, "Spiking transformers".

The tokeniser adapts to the input: every 2x2 reduction is a max pool (3x3, stride 2, padding 1: ceil(n / 2)), and
`patch_size` (a power of 2) sets how many there are. Left unset (null) it is the smallest that leaves a grid of at
most 8 x 8 tokens (GRID), the papers' grid for CIFAR10 (32 x 32, patch 4) and CIFAR10-DVS (128 x 128, patch 16): the
built-in 8 x 8 digits get patch 1, N-MNIST's 34 x 34 frames patch 8 (5 x 5 tokens). The Spike-driven Transformer's
`pooling` and QKFormer's `stem` are chosen by the same rule when left unset. Like every snnexp network the layers run
through run_layers (direct coding's repeated image goes through the first convolution once) and list the runs of
layers they run in order (`layer_runs`), so that snnexp.nn.fusion joins their BN-SN pairs into one op.
"""

import math
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from snnexp.config import require
from snnexp.errors import ModelError
from snnexp.nn.attention import QKAttention, SpikeDrivenSelfAttention, SpikingSelfAttention, conv_norm
from snnexp.nn.layers import SeqFlatten, SeqToANN, materialize, run_layers
from snnexp.nn.pooling import MaxPool2d
from snnexp.nn.weight_standardization import attach_weight_norms

__all__ = ["QKFormer", "SpikeDrivenTransformer", "Spikformer"]


def pool() -> SeqToANN:
    """The tokenisers' 2x reduction: max pool 3x3, stride 2, padding 1."""
    return SeqToANN(MaxPool2d(3, 2, 1))


class Residual(nn.Module):
    """run_layers(body, x) + run_layers(shortcut, x); no shortcut: + x."""

    def __init__(self, body: Sequence[nn.Module], shortcut: Sequence[nn.Module] = ()):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x):
        return run_layers(self.body, x) + (run_layers(self.shortcut, x) if len(self.shortcut) else x)

    def layer_runs(self):
        return [[f"body.{i}" for i in range(len(self.body))], [f"shortcut.{i}" for i in range(len(self.shortcut))]]


class Block(nn.Module):
    """A transformer block: x = x + attention(x); x = x + mlp(x)."""

    def __init__(self, attention: nn.Module, mlp: Sequence[nn.Module]):
        super().__init__()
        self.attention = attention
        self.mlp = nn.Sequential(*mlp)

    def forward(self, x):
        x = x + self.attention(x)
        return x + run_layers(self.mlp, x)

    def layer_runs(self):
        return [[f"mlp.{i}" for i in range(len(self.mlp))]]


def spiking_mlp(dim: int, ratio: float, neuron: Callable, norm: Callable) -> List[nn.Module]:
    """Spikformer's and QKFormer's MLP: SN(BN(SN(BN(x W1)) W2)), token-wise, hidden width dim * ratio."""
    hidden = _hidden(dim, ratio)
    return [*conv_norm(dim, hidden, norm), neuron(), *conv_norm(hidden, dim, norm), neuron()]


def membrane_mlp(dim: int, ratio: float, neuron: Callable, norm: Callable) -> List[nn.Module]:
    """The Spike-driven Transformer's MLP, spikes taken from the potentials it is given: BN(SN(BN(SN(x) W1)) W2)."""
    hidden = _hidden(dim, ratio)
    return [neuron(), *conv_norm(dim, hidden, norm), neuron(), *conv_norm(hidden, dim, norm)]


def _hidden(dim: int, ratio: float) -> int:
    hidden = int(dim * ratio)
    if hidden < 1:
        raise ModelError(f"model.mlp_ratio={ratio}: the MLP's hidden width dim x ratio must be >= 1")
    return hidden


def head(dim: int, num_outputs: int, neuron: Callable, spikes_first: bool = False) -> List[nn.Module]:
    """The mean over tokens [T, B, C, H, W] -> [T, B, C] (after a neuron, `spikes_first`), a linear classifier and
    the configured neuron (replaced by non-spiking outputs under a membrane readout)."""
    layers = [SeqToANN(nn.AdaptiveAvgPool2d(1)), SeqFlatten()] + ([neuron()] if spikes_first else [])
    return layers + [SeqToANN(nn.Linear(dim, num_outputs)), neuron()]


def _image_shape(input_shape: Sequence[int], name: str) -> tuple:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        raise ModelError(f"model={name} takes images or event frames [C, H, W], but this dataset gives samples of "
                         f"shape {list(shape)}: use an image or event dataset, or a network for feature vectors "
                         f"(model=mlp, rsnn)")
    return shape


GRID = 8  # an unset patch size leaves at most GRID x GRID tokens (module docstring)


def _reductions(patch_size: Optional[int], most: int, shape: tuple, name: str) -> int:
    """The tokeniser's 2x reductions for `patch_size`: log2 of it, at most `most`, leaving a grid of tokens; None:
    the fewest that leave at most GRID x GRID tokens (module docstring)."""
    if patch_size is None:
        return next((n for n in range(most + 1) if max(-(-size // 2**n) for size in shape[1:]) <= GRID), most)
    if patch_size < 1 or patch_size & (patch_size - 1) or patch_size > 2 ** most:
        raise ModelError(f"model.patch_size={patch_size}: {name}'s tokeniser reduces the image by a power of 2, up "
                         f"to {2 ** most}: choose one of {', '.join(str(2 ** i) for i in range(most + 1))}")
    if min(shape[1:]) < patch_size:
        raise ModelError(f"model.patch_size={patch_size} is larger than the {shape[1]} x {shape[2]} input: it would "
                         f"leave no grid of tokens; choose a patch size <= {min(shape[1:])}")
    return int(math.log2(patch_size))


def _check(**values) -> None:
    """The RULES ranges (snnexp.config) of the settings given, as model.<name>."""
    for name, value in values.items():
        require(f"model.{name}", value)


def _width(dim: int, parts: int, name: str) -> None:
    if dim < parts or dim % parts:
        raise ModelError(f"model.embed_dim={dim}: {name} divides the width into {parts} (its tokeniser's stages), "
                         f"so it must be a positive multiple of {parts}")


class _Transformer(nn.Sequential):
    """The three models' common ground: layers run in order (run_layers), fusion's layer runs, lazy parameters
    shaped (norm=neunorm's)."""

    def __init__(self, layers: List[nn.Module], input_shape: tuple):
        super().__init__(*layers)
        materialize(self, input_shape)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> [T, B, num_outputs]; direct coding's repeated input runs the first layers once."""
        return run_layers(self, x_seq)

    def layer_runs(self):
        return [[str(i) for i in range(len(self))]]


class Spikformer(_Transformer):
    """Spikformer (Zhou et al., ICLR 2023): spiking patch splitting, `depth` blocks of spiking self-attention and
    MLP, and a linear head on the mean over tokens.

    Spiking patch splitting: four conv3x3-BN-SN stages of embed_dim/8, /4, /2 and embed_dim channels, the last
    log2(patch_size) of them followed by a max pool of the spikes, then a relative position embedding
    x + SN(BN(conv3x3(x))). Blocks: x + SSA(x), then x + MLP(x) (snnexp.nn.attention.SpikingSelfAttention)."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, neuron: Callable, norm: Callable,
                 embed_dim: int = 384, depth: int = 4, heads: int = 12, mlp_ratio: float = 4.0,
                 patch_size: Optional[int] = 4,
                 scale: float = 0.125, attention_threshold: Optional[float] = 0.5):
        shape = _image_shape(input_shape, "spikformer")
        _check(embed_dim=embed_dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, scale=scale,
               attention_threshold=attention_threshold)
        _width(embed_dim, 8, "Spikformer")
        pools = _reductions(patch_size, 4, shape, "Spikformer")
        layers, cin = [], shape[0]
        for stage, width in enumerate((embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim)):
            layers += [*conv_norm(cin, width, norm, kernel=3), neuron()] + ([pool()] if stage >= 4 - pools else [])
            cin = width
        layers.append(Residual([*conv_norm(embed_dim, embed_dim, norm, kernel=3), neuron()]))
        for _ in range(depth):
            attention = SpikingSelfAttention(embed_dim, heads, neuron, norm, scale, attention_threshold)
            layers.append(Block(attention, spiking_mlp(embed_dim, mlp_ratio, neuron, norm)))
        super().__init__(layers + head(embed_dim, num_outputs, neuron), shape)


class SpikeDrivenTransformer(_Transformer):
    """Spike-driven Transformer v1 (Yao et al., NeurIPS 2023): its blocks add potentials, not spikes (the membrane
    shortcut), so that no product in the network has a non-spike operand besides the first convolution's input.

    Tokeniser: conv3x3-BN-SN stages of embed_dim/8, /4, /2 channels and a conv3x3-BN of embed_dim (each with a max
    pool after it where `pooling` has a 1, the fourth pool before the spikes of the last stage), then a relative
    position embedding x + BN(conv3x3(SN(x))). Blocks: x + SDSA(x), then x + MLP(x) with the MLP's spikes taken from
    the potentials it is given. Head: the mean over tokens of the potentials, SN, a linear classifier."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, neuron: Callable, norm: Callable,
                 embed_dim: int = 512, depth: int = 2, heads: int = 8, mlp_ratio: float = 4.0,
                 pooling: Union[str, int, None] = "1111", attention_threshold: Optional[float] = 0.5):
        shape = _image_shape(input_shape, "spike_driven_transformer")
        _check(embed_dim=embed_dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
               attention_threshold=attention_threshold)
        _width(embed_dim, 8, "the Spike-driven Transformer")
        if pooling is None:  # the fewest pools, at the last stages, that leave at most GRID x GRID tokens
            pools = _reductions(None, 4, shape, "the Spike-driven Transformer")
            pooling = "0" * (4 - pools) + "1" * pools
        pooling = str(pooling).zfill(4)
        if len(pooling) != 4 or set(pooling) - {"0", "1"}:
            raise ModelError(f"model.pooling={pooling!r}: four 0/1 digits, one per tokeniser stage, 1 where a max pool "
                             f"halves the map (e.g. '1111' for 128 x 128 frames, '0011' for 32 x 32 images)")
        _reductions(2 ** pooling.count("1"), 4, shape, "the Spike-driven Transformer")
        layers, cin = [], shape[0]
        for stage, width in enumerate((embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim)):
            layers += [*conv_norm(cin, width, norm, kernel=3)]
            layers += ([neuron()] if stage < 3 else []) + ([pool()] if pooling[stage] == "1" else [])
            cin = width
        layers.append(Residual([neuron(), *conv_norm(embed_dim, embed_dim, norm, kernel=3)]))
        for _ in range(depth):
            attention = SpikeDrivenSelfAttention(embed_dim, heads, neuron, norm, attention_threshold)
            layers.append(Block(attention, membrane_mlp(embed_dim, mlp_ratio, neuron, norm)))
        super().__init__(layers + head(embed_dim, num_outputs, neuron, spikes_first=True), shape)


class QKFormer(_Transformer):
    """QKFormer (Zhou et al., NeurIPS 2024): a hierarchy of stages, each a patch embedding then its blocks, with
    Q-K attention (token or channel, `qk_attention`) in every stage but the last and spiking self-attention in the
    last, where the grid of tokens is smallest.

    `depths` lists the blocks of each stage (the authors' code: CIFAR10 [1, 1, 2], the DVS datasets [1, 1]); the last
    stage has embed_dim channels, each one before half as many. Every patch embedding is a body of conv3x3-BN-SN
    layers plus a shortcut, conv1x1-BN-SN with the stride of the body's pools, the two added (spikes + spikes):

    - the first (`stem`): `cifar` (the CIFAR10 code) conv3x3-BN-SN to half the first stage's width, then the body
      conv3x3-BN-SN, no pooling; `dvs` (the CIFAR10-DVS and DVS128 Gesture code) conv3x3-BN-SN to an eighth, then
      the body conv3x3-BN-MP-SN three times, each doubling the width and halving the map (a 128 x 128 frame: 16 x 16
      tokens); `imagenet` (the ImageNet code, SpikingJelly's `model.qkformer`) conv3x3-BN-MP-SN to half, then the
      body conv3x3-BN-MP-SN, conv3x3-BN-SN; None: cifar up to 32 x 32, dvs above;
    - each later one: conv3x3-BN-SN, conv3x3-BN-MP-SN (`imagenet`: the pool after the first conv), halving the map
      and doubling the width."""

    STEMS = ("cifar", "dvs", "imagenet")

    def __init__(self, input_shape: Sequence[int], num_outputs: int, neuron: Callable, norm: Callable,
                 embed_dim: int = 384, depths: Sequence[int] = (1, 1, 2), heads: int = 8, mlp_ratio: float = 4.0,
                 stem: Optional[str] = "cifar", qk_attention: str = "token", scale: float = 0.125,
                 attention_threshold: Optional[float] = 0.5):
        shape = _image_shape(input_shape, "qkformer")
        depths = list(depths)
        _check(embed_dim=embed_dim, depths=depths, heads=heads, mlp_ratio=mlp_ratio, scale=scale,
               attention_threshold=attention_threshold)
        if stem is None:  # as the authors chose: no pooling up to CIFAR10's 32 x 32, three pools for larger frames
            stem = "cifar" if max(shape[1:]) <= 32 else "dvs"
        if stem not in self.STEMS:
            raise ModelError(f"model.stem={stem!r}: choose one of {', '.join(self.STEMS)}")
        stages = len(depths)
        first = {"cifar": 2, "dvs": 8, "imagenet": 2}[stem]  # the first conv's width: the first stage's / this
        _width(embed_dim, 2 ** (stages - 1) * first, "QKFormer")
        halvings = {"cifar": 0, "dvs": 3, "imagenet": 2}[stem] + stages - 1
        if min(shape[1:]) < 2 ** halvings:
            raise ModelError(f"the {shape[1]} x {shape[2]} input leaves no grid of tokens after QKFormer's {halvings} "
                             f"halvings (model.stem={stem}, {stages} stages): use stem=cifar (no pooling in the first "
                             f"patch embedding) or fewer stages (model.depths)")
        dims = [embed_dim // 2 ** (stages - 1 - i) for i in range(stages)]
        layers, cin = [], shape[0]
        for stage, (dim, depth) in enumerate(zip(dims, depths)):
            layers += self.stem(shape[0], dim, stem, neuron, norm) if stage == 0 else \
                [self.stage_embedding(cin, dim, stem == "imagenet", neuron, norm)]
            for _ in range(depth):
                if stage < stages - 1:
                    attention = QKAttention(dim, heads, neuron, norm, qk_attention, attention_threshold)
                else:
                    attention = SpikingSelfAttention(dim, heads, neuron, norm, scale, attention_threshold)
                layers.append(Block(attention, spiking_mlp(dim, mlp_ratio, neuron, norm)))
            cin = dim
        super().__init__(layers + head(embed_dim, num_outputs, neuron), shape)

    @staticmethod
    def stem(cin: int, dim: int, stem: str, neuron: Callable, norm: Callable) -> List[nn.Module]:
        """The first patch embedding (class docstring): its first conv, then the body and shortcut."""
        if stem == "cifar":
            width = dim // 2
            body = [*conv_norm(width, dim, norm, kernel=3), neuron()]
            shortcut = _shortcut(width, dim, 1, neuron, norm)
            return [*conv_norm(cin, width, norm, kernel=3), neuron(), Residual(body, shortcut)]
        if stem == "dvs":
            width, body = dim // 8, []
            for w in (dim // 4, dim // 2, dim):
                body += [*conv_norm(w // 2, w, norm, kernel=3), pool(), neuron()]
            return [*conv_norm(cin, width, norm, kernel=3), neuron(), *body[:4],
                    Residual(body[4:], _shortcut(dim // 4, dim, 4, neuron, norm))]
        width = dim // 2
        return [*conv_norm(cin, width, norm, kernel=3), pool(), neuron(),
                Residual([*conv_norm(width, dim, norm, kernel=3), pool(), neuron(),
                          *conv_norm(dim, dim, norm, kernel=3), neuron()], _shortcut(width, dim, 2, neuron, norm))]

    @staticmethod
    def stage_embedding(cin: int, cout: int, pool_first: bool, neuron: Callable, norm: Callable) -> Residual:
        """A later stage's patch embedding: conv3x3-BN-SN, conv3x3-BN-MP-SN (`pool_first`: conv3x3-BN-MP-SN,
        conv3x3-BN-SN) + conv1x1_stride2-BN-SN, halving the map and doubling the width."""
        first = [*conv_norm(cin, cout, norm, kernel=3)] + ([pool()] if pool_first else []) + [neuron()]
        second = [*conv_norm(cout, cout, norm, kernel=3)] + ([] if pool_first else [pool()]) + [neuron()]
        return Residual(first + second, _shortcut(cin, cout, 2, neuron, norm))


def _shortcut(cin: int, cout: int, stride: int, neuron: Callable, norm: Callable) -> List[nn.Module]:
    """QKFormer's patch-embedding shortcut: conv1x1 with the body's stride, BN, SN."""
    layers = [SeqToANN(nn.Conv2d(cin, cout, 1, stride, bias=False)), norm(cout)]
    attach_weight_norms(layers)
    return layers + [neuron()]
