"""Parity of our three spiking transformers with SpikingJelly 2.0's (the `bench` extra installs it): given the same
weights and inputs, the same spikes (exactly, every neuron layer in the order they run), the same float32 scores
(within 1e-5) and the same gradients of every parameter (within 1e-4 relative), in train mode (BN batch statistics),
with the BN running statistics updated alike.

Our models follow the authors' code and papers; where SpikingJelly's departs from them the test patches SpikingJelly
to the authors' version and shows, in a test of its own, that the unpatched version differs (docs/science.md,
section 7, "SpikingJelly 2.0"):

- Spikformer: SpikingJelly's tokeniser pools the BN's output before the neuron (conv-BN-MaxPool-LIF), the authors'
  code pools the spikes after it (conv-BN-LIF-MaxPool); its scale is fixed at 0.125, ours is `scale` (the authors'
  CIFAR10-DVS code: 0.25), matched by setting SpikingJelly's `attn.scale`.
- Spike-driven Transformer: SpikingJelly adds an inner MLP residual when mlp_ratio == 1 (as the authors' code does
  when the hidden width equals the width); the paper's equations have none, and neither do we.
- Spike-driven Transformer and QKFormer: SpikingJelly builds every LIF outside the attention layers with
  detach_reset=False (the authors: True everywhere). Spikes are the same, gradients are not.
- QKFormer: SpikingJelly has only the authors' ImageNet layout (3 stages, the stem's conv-BN-MaxPool-LIF twice, the
  pool on the first conv of later stages), which is our stem='imagenet'. Our stem='cifar' (the authors' CIFAR10
  code: no pooling in the stem, the pool on the second conv of later stages) and stem='dvs' (their CIFAR10-DVS and
  DVS128 Gesture code: 2 stages, a stem of four convs with three pools and a stride-4 shortcut) have no SpikingJelly
  counterpart, so they are not compared here.

Neurons: every LIF on both sides is tau 2, hard reset to 0, detach_reset, Sigmoid(alpha=4) surrogate, threshold 1
(0.5 in the attention). SpikingJelly's are set by assigning attributes to the LIF modules it built, not by passing
`spiking_neuron`: a custom neuron class replaces SpikingJelly's per-position defaults, so its attention LIFs would
lose their 0.5 threshold (`_neuron._make_multi_step_neuron`).

Weights are copied from ours into SpikingJelly's through an explicit name map (a fused Conv1d [n, C, 1] is our 1x1
Conv2d [n, C, 1, 1] reshaped); SpikingJelly's convolution biases before a BN, which we do not have (the BN's shift
stands in for them), are set to 0. Every SpikingJelly parameter and buffer, and every one of ours, is assigned.
"""

import functools
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sj = pytest.importorskip("spikingjelly.activation_based", reason="SpikingJelly (the bench extra) is not installed")
from spikingjelly.activation_based import functional as sj_functional  # noqa: E402
from spikingjelly.activation_based import layer as sj_layer  # noqa: E402
from spikingjelly.activation_based import neuron as sj_neuron  # noqa: E402
from spikingjelly.activation_based import surrogate as sj_surrogate  # noqa: E402
from spikingjelly.activation_based.model import qkformer as sj_qkformer  # noqa: E402
from spikingjelly.activation_based.model import spike_driven_transformer as sj_sdt  # noqa: E402
from spikingjelly.activation_based.model import spikformer as sj_spikformer  # noqa: E402

from snnexp.nn import surrogate  # noqa: E402
from snnexp.nn.layers import run_layers  # noqa: E402
from snnexp.nn.models import with_output_layer  # noqa: E402
from snnexp.nn.models.transformers import QKFormer, SpikeDrivenTransformer, Spikformer  # noqa: E402
from snnexp.nn.neurons import LIF, SpikingNeuron  # noqa: E402
from snnexp.nn.norms import BatchNormOverTime  # noqa: E402

T, B, CLASSES = 4, 2, 10
NEURON = functools.partial(LIF, tau=2.0, detach_reset=True, v_reset=0.0, surrogate=surrogate.Sigmoid(alpha=4.0))
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
LOGITS_ATOL, GRAD_RTOL = 1e-5, 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# -- the name maps: (our state_dict key, SpikingJelly's) ---------------------------------------------------------------

def conv(ours: str, theirs: str) -> list:
    """A convolution or linear layer: ours is wrapped in SeqToANN (`.module`)."""
    return [(f"{ours}.module.weight", f"{theirs}.weight")]


def linear(ours: str, theirs: str) -> list:
    return [(f"{ours}.module.weight", f"{theirs}.weight"), (f"{ours}.module.bias", f"{theirs}.bias")]


def norm(ours: str, theirs: str) -> list:
    return [(f"{ours}.{k}", f"{theirs}.{k}") for k in BN_KEYS]


def conv_norm(ours_conv: str, ours_norm: str, theirs_conv: str, theirs_norm: str) -> list:
    return conv(ours_conv, theirs_conv) + norm(ours_norm, theirs_norm)


def spikformer_map(depth: int) -> tuple:
    """Ours (patch_size 4): 0-2, 3-5 conv-BN-SN; 6-9, 10-13 conv-BN-SN-MP; 14 the position embedding; then the blocks;
    then the head: mean over tokens, flatten, Linear, (neuron)."""
    stem = "patch_embed.stages"
    pairs = []
    for stage, (c, n) in enumerate(((0, 1), (3, 4), (6, 7), (10, 11))):
        pairs += conv_norm(str(c), str(n), f"{stem}.{stage}.conv_bn.block.0", f"{stem}.{stage}.conv_bn.block.1")
    pairs += conv_norm("14.body.0", "14.body.1", "patch_embed.positional_encoding.conv_bn.block.0",
                       "patch_embed.positional_encoding.conv_bn.block.1")
    for i in range(depth):
        o, s = 15 + i, f"blocks.{i}"
        pairs += conv_norm(f"{o}.attention.qkv.0", f"{o}.attention.qkv.1", f"{s}.attn.qkv_conv_bn.0",
                           f"{s}.attn.qkv_conv_bn.1")
        pairs += conv_norm(f"{o}.attention.proj.0", f"{o}.attention.proj.1", f"{s}.attn.proj_conv_bn.0",
                           f"{s}.attn.proj_conv_bn.1")
        pairs += conv_norm(f"{o}.mlp.0", f"{o}.mlp.1", f"{s}.mlp.fc1.0", f"{s}.mlp.fc1.1")
        pairs += conv_norm(f"{o}.mlp.3", f"{o}.mlp.4", f"{s}.mlp.fc2.0", f"{s}.mlp.fc2.1")
    pairs += linear(str(15 + depth + 2), "head")
    return pairs, []  # SpikingJelly's Spikformer has no biases before its BNs


def sdt_map(depth: int) -> tuple:
    """Ours (pooling '0011'): 0-2, 3-5 conv-BN-SN; 6-9 conv-BN-SN-MP; 10-12 conv-BN-MP; 13 the position embedding
    (SN, conv, BN); then the blocks; then the head: mean over tokens, flatten, SN, Linear, (neuron)."""
    pairs, zero = [], []
    for stage, (c, n) in enumerate(((0, 1), (3, 4), (6, 7))):
        pairs += conv_norm(str(c), str(n), f"patch_embed.stages.{stage}.0", f"patch_embed.stages.{stage}.1")
        zero.append(f"patch_embed.stages.{stage}.0.bias")
    pairs += conv_norm("10", "11", "patch_embed.final_stage.0", "patch_embed.final_stage.1")
    zero.append("patch_embed.final_stage.0.bias")
    pairs += conv_norm("13.body.1", "13.body.2", "patch_embed.rpe_conv", "patch_embed.rpe_bn")
    for i in range(depth):
        o, s = 14 + i, f"blocks.{i}"
        for p in "qkv":
            pairs += conv_norm(f"{o}.attention.{p}.0", f"{o}.attention.{p}.1", f"{s}.attn.{p}_conv", f"{s}.attn.{p}_bn")
        pairs += conv_norm(f"{o}.attention.proj.0", f"{o}.attention.proj.1", f"{s}.attn.proj_conv",
                           f"{s}.attn.proj_bn")
        pairs += conv_norm(f"{o}.mlp.1", f"{o}.mlp.2", f"{s}.mlp.fc1", f"{s}.mlp.bn1")
        pairs += conv_norm(f"{o}.mlp.4", f"{o}.mlp.5", f"{s}.mlp.fc2", f"{s}.mlp.bn2")
        zero += [f"{s}.attn.proj_conv.bias", f"{s}.mlp.fc1.bias", f"{s}.mlp.fc2.bias"]
    pairs += linear(str(14 + depth + 3), "head")
    return pairs, zero


def qkformer_map() -> tuple:
    """Ours (stem 'imagenet', depths [1, 1, 1]): 0-3 conv-BN-MP-SN; 4 the stem's Residual (body conv-BN-MP-SN,
    conv-BN-SN; shortcut conv1x1/2-BN-SN); 5 a Q-K block; 6 a stage embedding (body conv-BN-MP-SN, conv-BN-SN;
    shortcut); 7 a Q-K block; 8 a stage embedding; 9 an SSA block; head: mean over tokens, flatten, Linear, (neuron)."""
    pairs = conv_norm("0", "1", "patch_embed1.conv1", "patch_embed1.bn1")
    pairs += conv_norm("4.body.0", "4.body.1", "patch_embed1.conv2", "patch_embed1.bn2")
    pairs += conv_norm("4.body.4", "4.body.5", "patch_embed1.conv3", "patch_embed1.bn3")
    pairs += conv_norm("4.shortcut.0", "4.shortcut.1", "patch_embed1.shortcut.0", "patch_embed1.shortcut.1")
    zero = [f"patch_embed1.{c}.bias" for c in ("conv1", "conv2", "conv3", "shortcut.0")]
    for o, s in ((6, "patch_embed2"), (8, "patch_embed3")):
        pairs += conv_norm(f"{o}.body.0", f"{o}.body.1", f"{s}.conv1", f"{s}.bn1")
        pairs += conv_norm(f"{o}.body.4", f"{o}.body.5", f"{s}.conv2", f"{s}.bn2")
        pairs += conv_norm(f"{o}.shortcut.0", f"{o}.shortcut.1", f"{s}.shortcut.0", f"{s}.shortcut.1")
        zero += [f"{s}.{c}.bias" for c in ("conv1", "conv2", "shortcut.0")]
    for o, s, qk in ((5, "stage1.0", "qk"), (7, "stage2.0", "qk"), (9, "stage3.0", "qkv")):
        pairs += conv_norm(f"{o}.attention.{qk}.0", f"{o}.attention.{qk}.1", f"{s}.attn.{qk}_conv_bn.0",
                           f"{s}.attn.{qk}_conv_bn.1")
        pairs += conv_norm(f"{o}.attention.proj.0", f"{o}.attention.proj.1", f"{s}.attn.proj_conv_bn.0",
                           f"{s}.attn.proj_conv_bn.1")
        pairs += conv_norm(f"{o}.mlp.0", f"{o}.mlp.1", f"{s}.mlp.fc1", f"{s}.mlp.bn1")
        pairs += conv_norm(f"{o}.mlp.3", f"{o}.mlp.4", f"{s}.mlp.fc2", f"{s}.mlp.bn2")
        zero += [f"{s}.mlp.fc1.bias", f"{s}.mlp.fc2.bias"]
    pairs += linear("12", "head")
    return pairs, zero


# -- building and running ----------------------------------------------------------------------------------------------

def seeded(*key) -> torch.Generator:
    """A generator for the case's data, and torch's global one (our models' initial weights) seeded from `key`."""
    seed = zlib.crc32(repr(key).encode())
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def ours_with_logits(model: nn.Sequential) -> nn.Sequential:
    """Our model with its output neuron replaced by the Linear's outputs: SpikingJelly's head (logits = Linear of
    the mean over T of the mean over tokens; the Linear commutes with the mean over T)."""
    return with_output_layer(model, nn.Identity(), "the parity test").train()


def randomise_norms(model: nn.Module, g: torch.Generator) -> None:
    """BN affine parameters and running statistics away from 1 and 0, so that a wrong map shows, and BN shifts
    that make the neurons fire often enough for the attentions' sums to cross their thresholds."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNormOverTime):
                n = m.num_features
                m.weight.copy_(0.8 + 0.8 * torch.rand(n, generator=g))
                m.bias.copy_(0.3 + torch.rand(n, generator=g))  # lively: most layers fire 10-40% of the time
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def copy_weights(ours: nn.Module, theirs: nn.Module, pairs: list, zero: list) -> None:
    """Ours into SpikingJelly's by the name map; SpikingJelly's biases in `zero` set to 0. Every parameter and
    buffer on both sides must be assigned exactly once."""
    o, s = ours.state_dict(), theirs.state_dict()
    ours_keys, their_keys = [a for a, _ in pairs], [b for _, b in pairs] + list(zero)
    assert len(set(their_keys)) == len(their_keys) and len(set(ours_keys)) == len(ours_keys), "a key mapped twice"
    assert set(their_keys) == set(s), (f"SpikingJelly keys not assigned: {sorted(set(s) - set(their_keys))}; "
                                       f"unknown: {sorted(set(their_keys) - set(s))}")
    assert set(ours_keys) == set(o), f"our keys not mapped: {sorted(set(o) - set(ours_keys))}; " \
                                     f"unknown: {sorted(set(ours_keys) - set(o))}"
    with torch.no_grad():
        for a, b in pairs:
            assert o[a].numel() == s[b].numel(), (a, b, o[a].shape, s[b].shape)
            s[b].copy_(o[a].reshape(s[b].shape))
        for b in zero:
            s[b].zero_()


def authors_neurons(theirs: nn.Module, detach_reset: bool = True) -> list:
    """Every SpikingJelly LIF set to the authors' settings in place (module docstring; `detach_reset` False leaves
    SpikingJelly's own); returns the names of those SpikingJelly had built with detach_reset=False. The thresholds
    are SpikingJelly's own: 0.5 exactly in the attention (`attn_lif`), 1 elsewhere."""
    not_detached = []
    for name, m in theirs.named_modules():
        if isinstance(m, sj_neuron.LIFNode):
            assert type(m) is sj_neuron.LIFNode and m.tau == 2.0 and m.decay_input and m.v_reset == 0.0, name
            assert m.v_threshold == (0.5 if name.endswith("attn_lif") else 1.0), (name, m.v_threshold)
            if not m.detach_reset:
                not_detached.append(name)
            m.detach_reset = m.detach_reset or detach_reset
            m.surrogate_function = sj_surrogate.Sigmoid(alpha=4.0)
    return not_detached


def run(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, neurons: type) -> tuple:
    """(logits [B, classes], (name, spikes) of every `neurons` layer in the order they ran, {name: gradient}, the
    BN running statistics after the step) of one forward and backward of CE(logits)."""
    spikes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: spikes.append((name, out.detach())))
             for name, m in model.named_modules() if isinstance(m, neurons)]
    model.zero_grad(set_to_none=True)
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    logits = out.mean(0) if out.dim() == 3 else out  # ours and SpikingJelly's Spikformer: [T, B, classes]
    F.cross_entropy(logits, labels).backward()
    if neurons is sj_neuron.LIFNode:
        sj_functional.reset_net(model)
    grads = {n: p.grad for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))}
    return logits.detach(), spikes, grads, stats


def compare(ours: nn.Module, theirs: nn.Module, pairs: list, zero: list, x: torch.Tensor, g: torch.Generator,
            attention_layers: int) -> dict:
    """Run both on x and check: every neuron layer's spikes equal exactly (there are as many, in the same order;
    every layer fires; `attention_layers` of them are the attention neurons, which fire but not everywhere), logits
    within 1e-5, the BN running statistics within 1e-5, every parameter's gradient within 1e-4 relative (of its
    largest entry), and the gradients of SpikingJelly's zeroed biases (each before a BN) zero. Returns the largest
    differences."""
    labels = torch.randint(0, CLASSES, (x.shape[1],), generator=g)
    lo, so, go, bo = run(ours, x, labels, SpikingNeuron)
    lt, st, gt, bt = run(theirs, x, labels, sj_neuron.LIFNode)
    assert len(so) == len(st)
    for i, ((na, a), (nb, b)) in enumerate(zip(so, st)):
        assert na.endswith("attention_neuron") == nb.endswith("attn_lif"), (i, na, nb)
        assert a.numel() == b.numel(), (i, na, nb, a.shape, b.shape)
        differ = int((a.reshape(b.shape) != b).sum())
        assert differ == 0, f"neuron layer {i} ({na} / {nb}): {differ} of {b.numel()} spikes differ"
    assert sum(n.endswith("attention_neuron") for n, _ in so) == attention_layers
    fired = {n: float(s.mean()) for n, s in so}
    assert all(f > 0 for f in fired.values()), f"a layer never fires: {fired}"
    assert all(0 < f < 1 for n, f in fired.items() if n.endswith("attention_neuron")), fired
    diffs = {"logits": float((lo - lt).abs().max())}
    torch.testing.assert_close(lo, lt, rtol=0, atol=LOGITS_ATOL)
    grads, stats = {}, {}
    for a, b in pairs:
        if a.endswith(("running_mean", "running_var")):
            stats[a] = float((bo[a] - bt[b].reshape(bo[a].shape)).abs().max())
            torch.testing.assert_close(bo[a], bt[b].reshape(bo[a].shape), rtol=1e-5, atol=1e-5)
        elif a in go:
            ga, gb = go[a], gt[b].reshape(go[a].shape)
            scale = float(ga.abs().max())
            assert scale > 0, f"{a}: no gradient"
            grads[a] = float((ga - gb).abs().max()) / scale
            assert grads[a] <= GRAD_RTOL, f"{a} / {b}: gradients differ by {grads[a]:.2e} of their largest entry"
    for b in zero:  # a bias before a BN in train mode: the BN subtracts it again, so its gradient is 0
        assert float(gt[b].abs().max()) <= 1e-5, (b, float(gt[b].abs().max()))
    diffs["grads (relative)"] = max(grads.values())
    diffs["running stats"] = max(stats.values())
    return diffs


def event_frames(shape, g) -> torch.Tensor:
    """Event-count-like frames [T, B, C, H, W]: small non-negative integers, sparse."""
    return torch.poisson(torch.rand(T, B, *shape, generator=g) ** 2 * 2.0, generator=g)


def images(shape, g) -> torch.Tensor:
    """Direct coding: one image per sample, the same at each step (a view with time stride 0, as our encoder gives)."""
    return torch.rand(B, *shape, generator=g).unsqueeze(0).expand(T, B, *shape)


# -- Spikformer --------------------------------------------------------------------------------------------------------

def pool_after_neuron(theirs: nn.Module) -> None:
    """SpikingJelly's tokeniser stages with a pool, conv-BN-MaxPool-LIF, reordered to the authors' conv-BN-LIF-MaxPool
    (the MaxPool moved out of the conv-BN container to after the neuron; the parameter names stay)."""
    moved = 0
    for stage in theirs.patch_embed.stages:
        layers = list(stage.conv_bn.block)
        if isinstance(layers[-1], nn.MaxPool2d):
            stage.conv_bn.block = sj_layer.SeqToANNContainer(*layers[:-1])
            stage.neuron = nn.Sequential(stage.neuron, sj_layer.SeqToANNContainer(layers[-1]))
            moved += 1
    assert moved == 2  # patch_size 4: the last two stages pool


def spikformer_pair(scale: float = 0.125, authors_stem: bool = True, depth: int = 1) -> tuple:
    g = seeded("spikformer", scale, authors_stem, depth)
    ours = Spikformer((2, 16, 16), CLASSES, NEURON, BatchNormOverTime, embed_dim=32, depth=depth, heads=2,
                      mlp_ratio=4.0, patch_size=4, scale=scale)
    randomise_norms(ours, g)
    theirs = sj_spikformer.Spikformer(T=T, in_channels=2, img_size_h=16, img_size_w=16, patch_size=4,
                                      num_classes=CLASSES, embed_dims=32, num_heads=2, mlp_ratio=4.0,
                                      depths=depth).train()
    for block in theirs.blocks:
        assert block.attn.scale == 0.125  # fixed in SpikingJelly
        block.attn.scale = scale
    if authors_stem:
        pool_after_neuron(theirs)
    assert authors_neurons(theirs) == []  # SpikingJelly's Spikformer builds every LIF with detach_reset=True
    copy_weights(ours, theirs, *spikformer_map(depth))
    return ours_with_logits(ours), theirs, g


@pytest.mark.parametrize("scale,depth", [(0.125, 2), (0.25, 1)])  # 0.125: the papers' and the authors' CIFAR10
def test_spikformer_matches_spikingjelly_with_the_authors_tokeniser(scale, depth):  # code; 0.25: their CIFAR10-DVS
    ours, theirs, g = spikformer_pair(scale, depth=depth)
    compare(ours, theirs, *spikformer_map(depth), event_frames((2, 16, 16), g), g, attention_layers=depth)


def test_spikformer_spikingjelly_tokeniser_pools_before_the_neuron():
    """Unpatched, SpikingJelly's tokeniser spikes on the pooled BN outputs (conv-BN-MaxPool-LIF) where the authors'
    code (and ours) pools the spikes (conv-BN-LIF-MaxPool): the same up to the first pool, different after it."""
    ours, theirs, g = spikformer_pair(authors_stem=False)
    x = event_frames((2, 16, 16), g)
    with torch.no_grad():
        ours_stages = [run_layers(list(ours)[:i], x) for i in (3, 6, 10, 14, 15)]  # each stage, then + position
        sj_functional.reset_net(theirs)
        sj_stages, y = [], x
        for stage in list(theirs.patch_embed.stages):
            y = stage(y)
            sj_stages.append(y)
        sj_stages.append(y + theirs.patch_embed.positional_encoding(y))
        sj_functional.reset_net(theirs)
    for i, (a, b) in enumerate(zip(ours_stages, sj_stages)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
    assert torch.equal(ours_stages[0], sj_stages[0]) and torch.equal(ours_stages[1], sj_stages[1])
    for a, b in zip(ours_stages[2:], sj_stages[2:]):
        assert (a != b).float().mean() > 0.01  # the tokens differ from the first pool on
    labels = torch.randint(0, CLASSES, (B,), generator=g)
    assert (run(ours, x, labels, SpikingNeuron)[0] - run(theirs, x, labels, sj_neuron.LIFNode)[0]).abs().max() > 1e-3


# -- Spike-driven Transformer ------------------------------------------------------------------------------------------

def sdt_pair(mlp_ratio: float = 4.0, depth: int = 1, detach_reset: bool = True) -> tuple:
    g = seeded("sdt", mlp_ratio, depth, detach_reset)
    ours = SpikeDrivenTransformer((3, 16, 16), CLASSES, NEURON, BatchNormOverTime, embed_dim=32, depth=depth, heads=2,
                                  mlp_ratio=mlp_ratio, pooling="0011")
    randomise_norms(ours, g)
    theirs = sj_sdt.SpikeDrivenTransformer(T=T, in_channels=3, num_classes=CLASSES, embed_dims=32, num_heads=2,
                                           depths=depth, mlp_ratio=mlp_ratio, pooling_stat="0011").train()
    not_detached = authors_neurons(theirs, detach_reset)
    # SpikingJelly's departure from the authors' detach_reset=True: every LIF outside its attention layers
    expected = ["patch_embed.stages.0.2", "patch_embed.stages.1.2", "patch_embed.stages.2.2", "patch_embed.final_lif"]
    expected += [f"blocks.{i}.mlp.lif{j}" for i in range(depth) for j in (1, 2)] + ["head_lif"]
    assert sorted(not_detached) == sorted(expected)
    copy_weights(ours, theirs, *sdt_map(depth))
    return ours_with_logits(ours), theirs, g


def test_spike_driven_transformer_matches_spikingjelly():
    ours, theirs, g = sdt_pair(depth=2)
    compare(ours, theirs, *sdt_map(2), images((3, 16, 16), g), g, attention_layers=2)


def test_spike_driven_transformer_spikingjelly_detach_reset():
    """Unpatched, SpikingJelly's SDT keeps the reset in the gradient of every LIF outside the attention (the authors'
    code detaches it everywhere): the same spikes and outputs, other gradients."""
    ours, theirs, g = sdt_pair(detach_reset=False)
    x, labels = images((3, 16, 16), g), torch.randint(0, CLASSES, (B,), generator=g)
    lo, so, go, _ = run(ours, x, labels, SpikingNeuron)
    lt, st, gt, _ = run(theirs, x, labels, sj_neuron.LIFNode)
    assert all(torch.equal(a.reshape(b.shape), b) for (_, a), (_, b) in zip(so, st))
    torch.testing.assert_close(lo, lt, rtol=0, atol=LOGITS_ATOL)
    ga, gb = go["0.module.weight"], gt["patch_embed.stages.0.0.weight"]  # the first conv: behind every LIF
    assert float((ga - gb).abs().max()) > 1e-2 * float(ga.abs().max())


def test_spike_driven_transformer_mlp_ratio_1_has_no_inner_residual():
    """The paper's MLP (and ours) is x + BN(W2 SN(BN(W1 SN(x)))) at any width. SpikingJelly's (after the authors'
    code) also adds x to the hidden potentials when the hidden width equals the width (mlp_ratio 1): the outputs
    differ, and equal ours once SpikingJelly's `_MLP.residual` is turned off."""
    ours, theirs, g = sdt_pair(mlp_ratio=1.0)
    mlps = [m for m in theirs.modules() if isinstance(m, sj_sdt._MLP)]
    assert len(mlps) == 1 and mlps[0].residual
    assert [type(m).__name__ for m in ours[14].mlp] == ["LIF", "SeqToANN", "BatchNormOverTime"] * 2
    x, labels = images((3, 16, 16), g), torch.randint(0, CLASSES, (B,), generator=g)
    state = {k: v.clone() for k, v in theirs.state_dict().items()}
    ours_state = {k: v.clone() for k, v in ours.state_dict().items()}
    lo = run(ours, x, labels, SpikingNeuron)[0]
    lt = run(theirs, x, labels, sj_neuron.LIFNode)[0]
    assert float((lo - lt).abs().max()) > 1e-3
    theirs.load_state_dict(state)  # the running statistics as before the step
    ours.load_state_dict(ours_state)
    mlps[0].residual = False
    compare(ours, theirs, *sdt_map(1), x, g, attention_layers=1)


# -- QKFormer ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["token", "channel"])
def test_qkformer_imagenet_layout_matches_spikingjelly(kind):
    """SpikingJelly's QKFormer is the authors' ImageNet layout: our stem='imagenet', three stages (Q-K attention in
    the first two, SSA in the last); `kind` is the Q-K attention (token: the paper's QKTA; channel: QKCA)."""
    g = seeded("qkformer", kind)
    ours = QKFormer((3, 32, 32), CLASSES, NEURON, BatchNormOverTime, embed_dim=32, depths=[1, 1, 1], heads=2,
                    mlp_ratio=4.0, stem="imagenet", qk_attention=kind)
    randomise_norms(ours, g)
    theirs = sj_qkformer.QKFormer(T=T, in_channels=3, num_classes=CLASSES, embed_dims=32, num_heads=(2, 2, 2),
                                  depths=(1, 1, 1), mlp_ratio=4.0, qka_type=kind).train()
    not_detached = authors_neurons(theirs)
    expected = [f"patch_embed1.{n}" for n in ("lif1", "lif2", "lif3", "shortcut.2")]
    expected += [f"patch_embed{i}.{n}" for i in (2, 3) for n in ("lif1", "lif2", "shortcut.2")]
    expected += [f"stage{i}.0.mlp.lif{j}" for i in (1, 2, 3) for j in (1, 2)]
    assert sorted(not_detached) == sorted(expected)  # SpikingJelly's detach_reset=False outside the attention
    copy_weights(ours, theirs, *qkformer_map())
    compare(ours_with_logits(ours), theirs, *qkformer_map(), images((3, 32, 32), g), g, attention_layers=3)
