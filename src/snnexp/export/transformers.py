"""NIR and the spiking transformers (snnexp.nn.models.transformers): what NIR can express of them, and the refusal.

snnexp export refuses model=spikformer, spike_driven_transformer and qkformer, with an ExportError naming their first
attention block by its position and class. NIR 1.0's nodes are weighted sums with fixed weights (Linear, Affine, Conv,
SumPool2d, AvgPool2d, Scale, Flatten), neurons (IF, LIF, LI, CubaLIF, ...), Threshold and Delay; a node sums the
edges into it. So, of these models:

    can    the tokeniser's conv, BN (folded), neurons and max pools of spikes (SumPool2d + Threshold); the residual
           sums (two edges into one node: position embedding, patch embeddings' shortcuts, the blocks' x + f(x));
           the token-wise MLP (1x1 convs); the head (mean over tokens = AvgPool2d over the grid, Flatten, Linear)
    cannot the attentions: SSA's Q K^T V, SDSA's Q (x) SN(SUM_tokens(K (x) V)), QKTA's and QKCA's SN(SUM(Q)) (x) K
           multiply two signals with each other, and NIR has no node for a product of signals (Scale multiplies by
           fixed weights); also a max pool of real values (not spikes: the Spike-driven Transformer's last tokeniser
           stage, pooled before its neuron, and QKFormer's conv-BN-pool-SN), which NIR has no node for
snnexp export maps chains of layers only: it does not write the residual sums NIR could express, so a transformer
without attention blocks (depth=0) is refused too, with that reason.
"""

from torch import nn

from snnexp.errors import ExportError
from snnexp.nn.attention import QKAttention, SpikeDrivenSelfAttention, SpikingSelfAttention
from snnexp.nn.models.transformers import QKFormer, SpikeDrivenTransformer, Spikformer

# their config option, and what each attention multiplies
TRANSFORMERS = {Spikformer: "spikformer", SpikeDrivenTransformer: "spike_driven_transformer", QKFormer: "qkformer"}
ATTENTION_PRODUCTS = {SpikingSelfAttention: "Q K^T V", SpikeDrivenSelfAttention: "Q (x) SN(SUM_tokens(K (x) V))",
                      QKAttention: "SN(SUM(Q)) (x) K"}
NO_ATTENTION = "export a network without attention (model=convnet, mlp, fc, rsnn, plif_*, stbp_*)"


def refuse_transformer(model: nn.Module) -> None:
    """ExportError for a spiking transformer (module docstring), naming its first attention block: position, class
    and config option."""
    option = f"model={TRANSFORMERS[type(model)]}"
    for i, module in enumerate(model):
        attention = getattr(module, "attention", None)
        if type(attention) in ATTENTION_PRODUCTS:
            raise ExportError(f"layer {i} ({type(module).__name__}.attention: {type(attention).__name__}, {option}): "
                              f"{ATTENTION_PRODUCTS[type(attention)]} multiplies spike signals with each other; NIR's "
                              f"nodes are weighted sums (with fixed weights: Linear, Conv, pooling, Scale) and neurons "
                              f"of their inputs, with no node for a product of two signals, so no NIR graph computes "
                              f"this attention: {NO_ATTENTION}")
    raise ExportError(f"{option} without attention blocks: its residual sums, which NIR could express (a node sums the "
                      f"edges into it), are not written by snnexp export, which maps chains of layers only: export a "
                      f"network written as a spec (model=convnet, mlp, fc, rsnn, plif_*, stbp_*)")
