"""The spiking transformers as networks (snnexp.nn.models.transformers): the grid of tokens their tokenisers leave,
the fusion pass on their blocks, direct coding's repeated input, and the errors for inputs and sizes they cannot
take. Their attentions against the papers' equations: test_attention.py; against SpikingJelly's models:
test_parity_transformers.py."""

import copy
import functools

import pytest
import torch

from snnexp.errors import ModelError
from snnexp.nn import fusion
from snnexp.nn.models import QKFormer, SpikeDrivenTransformer, Spikformer
from snnexp.nn.models.transformers import Block
from snnexp.nn.neurons import LIF
from snnexp.nn.norms import BatchNormOverTime
from snnexp.nn.surrogate import Sigmoid

NEURON = functools.partial(LIF, tau=2.0, detach_reset=True, surrogate=Sigmoid(4.0))
SMALL = {Spikformer: dict(embed_dim=16, depth=1, heads=2, patch_size=None),
         SpikeDrivenTransformer: dict(embed_dim=16, depth=1, heads=2, pooling=None),
         QKFormer: dict(embed_dim=32, depths=[1, 1], heads=2, stem=None)}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def token_grids(model, shape, T=1):
    """The [H, W] of the token map each block gets, in order."""
    grids = []
    hooks = [m.register_forward_pre_hook(lambda m, args: grids.append(list(args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, Block)]
    with torch.no_grad():
        model.eval()(torch.zeros(T, 1, *shape))
    for h in hooks:
        h.remove()
    return grids


@pytest.mark.parametrize("cls", [Spikformer, SpikeDrivenTransformer])
@pytest.mark.parametrize("shape,grid", [((1, 8, 8), 8), ((2, 34, 34), 5), ((3, 32, 32), 8), ((2, 128, 128), 8)])
def test_an_unset_patch_size_leaves_at_most_8_by_8_tokens(cls, shape, grid):
    """The fewest 2x reductions (3x3 stride-2 pools: ceil(n / 2)) that leave a grid of at most 8 x 8 tokens: the
    papers' patch 4 on CIFAR10's 32 x 32 and patch 16 on 128 x 128 frames; none on the digits, 8 on N-MNIST."""
    model = cls(list(shape), 10, NEURON, BatchNormOverTime, **SMALL[cls])
    assert token_grids(model, shape) == [[grid, grid]]


@pytest.mark.parametrize("shape,stem,grids", [((1, 8, 8), "cifar", [[8, 8], [4, 4]]),
                                               ((3, 32, 32), "cifar", [[32, 32], [16, 16]]),
                                               ((2, 34, 34), "dvs", [[5, 5], [3, 3]]),
                                               ((2, 128, 128), "dvs", [[16, 16], [8, 8]])])
def test_an_unset_qkformer_stem_is_the_authors_choice_for_the_input(shape, stem, grids):
    """No pooling up to 32 x 32 (their CIFAR10 model), three pools above (their DVS models); each later stage halves
    the grid."""
    unset = QKFormer(list(shape), 10, NEURON, BatchNormOverTime, **{**SMALL[QKFormer], "stem": None})
    named = QKFormer(list(shape), 10, NEURON, BatchNormOverTime, **{**SMALL[QKFormer], "stem": stem})
    assert token_grids(unset, shape) == token_grids(named, shape) == grids


@pytest.mark.parametrize("cls", [Spikformer, SpikeDrivenTransformer, QKFormer])
def test_fusion_joins_their_bn_sn_pairs_and_changes_nothing(cls):
    """snnexp train joins BN-SN into one op on the CPU (trainer.join_layers): in the tokeniser, the attention's
    projections and the MLPs; outputs, gradients and BN statistics stay those of the layers apart."""
    torch.manual_seed(0)
    model = cls([2, 16, 16], 10, NEURON, BatchNormOverTime, **SMALL[cls])
    fused = fusion.fuse_blocks(copy.deepcopy(model))
    joined = [name for name, m in fused.named_modules() if isinstance(m, fusion.FusedBlock)]
    assert any(".attention." in name for name in joined) and len(joined) >= 5
    x = (torch.rand(3, 2, 2, 16, 16) < 0.3).float()
    y, y_fused = model(x), fused(x)
    assert torch.equal(y, y_fused)
    y.sum().backward()
    y_fused.sum().backward()
    for p, q in zip(model.parameters(), fusion.parameters(fused)):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6)
    fused_state = fused.state_dict()  # the same keys as apart (fusion renames them back)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fused_state[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [Spikformer, SpikeDrivenTransformer, QKFormer])
def test_direct_coding_runs_the_first_convolution_once_with_the_same_result(cls):
    """A static image repeated over T (a view with time stride 0, as encoder=direct gives it) goes through the first
    conv and BN once; the output is that of the T copies written out."""
    torch.manual_seed(0)
    model = cls([1, 8, 8], 10, NEURON, BatchNormOverTime, **SMALL[cls]).eval()
    image = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(image.expand(4, *image.shape)), model(image.repeat(4, 1, 1, 1, 1)))


@pytest.mark.parametrize("make,message", [
    (lambda: Spikformer([700], 20, NEURON, BatchNormOverTime, **SMALL[Spikformer]),
     r"model=spikformer takes images or event frames \[C, H, W\], but this dataset gives samples of shape \[700\]"),
    (lambda: Spikformer([1, 8, 8], 10, NEURON, BatchNormOverTime, embed_dim=16, heads=2, patch_size=16),
     r"model.patch_size=16 is larger than the 8 x 8 input: it would leave no grid of tokens"),
    (lambda: Spikformer([1, 8, 8], 10, NEURON, BatchNormOverTime, embed_dim=16, heads=2, patch_size=3),
     r"model.patch_size=3: Spikformer's tokeniser reduces the image by a power of 2"),
    (lambda: SpikeDrivenTransformer([1, 8, 8], 10, NEURON, BatchNormOverTime, embed_dim=20, heads=2),
     r"model.embed_dim=20: the Spike-driven Transformer divides the width into 8"),
    (lambda: SpikeDrivenTransformer([1, 8, 8], 10, NEURON, BatchNormOverTime, embed_dim=16, heads=2, pooling="0121"),
     r"model.pooling='0121': four 0/1 digits"),
    (lambda: QKFormer([1, 8, 8], 10, NEURON, BatchNormOverTime, embed_dim=64, depths=[1, 1], heads=2, stem="dvs"),
     r"the 8 x 8 input leaves no grid of tokens after QKFormer's 4 halvings"),
    (lambda: QKFormer([1, 8, 8], 10, NEURON, BatchNormOverTime, embed_dim=32, depths=[1, 1], heads=2, stem="vgg"),
     r"model.stem='vgg': choose one of cifar, dvs, imagenet"),
])
def test_what_they_cannot_take_is_refused_with_the_fix(make, message):
    with pytest.raises(ModelError, match=message):
        make()
