"""Scaled weight standardisation (norm=sws), the normalisation of OTTT's VGG (Xiao et al. 2022; SpikingJelly's
WSConv2d / WSLinear, used by model/spiking_vggws_ottt.py): instead of normalising activations, the weight of the
conv or FC layer before it is standardised per output unit,

    W_hat[o] = gain[o] * (W[o] - mean(W[o])) / sqrt(var(W[o]) * fan_in + eps)

with var the unbiased variance over the unit's fan_in weights and a learned gain per output unit. SpikingJelly's gain
starts at 1 and its VGG multiplies every neuron's spikes by a fixed 2.74 (`Scale`, the variance-preserving factor of
the NF-Nets) before the next standardised layer; conv(2.74 s) = 2.74 conv(s), so here the gain starts at `gain_init`
(conf/norm/sws.yaml: 2.74) instead, which also lets the first layer's units reach the threshold.

In a spec the norm token sits after its conv/FC (`c32k3s1-BN-SN`), so `ScaledWeightStandardization` is the identity
on activations: the network attaches it to the layer before it (`attach_weight_norms`, called by SpecNet), which
registers the standardisation as a parametrisation of that layer's weight (torch.nn.utils.parametrize). The gain is
then a parameter of that layer (`<layer>.parametrizations.weight.0.gain`).
"""

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from snnexp.config import require
from snnexp.errors import ModelError


class StandardisedWeight(nn.Module):
    """The parametrisation: the stored weight W [out, ...] -> W_hat, with `gain` [out] learned."""

    def __init__(self, out_features: int, eps: float = 1e-4, gain_init: float = 1.0):
        super().__init__()
        self.gain = nn.Parameter(torch.full((out_features,), float(gain_init)))
        self.eps = float(eps)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        flat = w.flatten(1)
        mean = flat.mean(1, keepdim=True)
        var = flat.var(1, keepdim=True)  # unbiased, as SpikingJelly's torch.var
        scale = self.gain.unsqueeze(1) / (var * flat.shape[1] + self.eps).sqrt()
        return ((flat - mean) * scale).view_as(w)

    def extra_repr(self):
        return f"eps={self.eps}"


class ScaledWeightStandardization(nn.Module):
    """The norm token of norm=sws: the identity on activations; its work is done by the standardised weight of
    the conv/FC layer before it, which `attach` sets up (and without which forward refuses to run)."""

    standardises_weight = True

    def __init__(self, num_features: int, eps: float = 1e-4, gain_init: float = 1.0):
        super().__init__()
        require("norm.gain_init", gain_init)
        self.num_features, self.eps, self.gain_init = int(num_features), float(eps), float(gain_init)
        self.attached = False

    def attach(self, layer: nn.Module) -> None:
        """Standardise the weight of `layer` (an nn.Conv2d or nn.Linear, maybe inside a SeqToANN)."""
        layer = getattr(layer, "module", layer)
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or layer.weight.shape[0] != self.num_features:
            raise ModelError(f"norm=sws standardises the weight of the conv or FC layer right before each BN token, "
                             f"but this one follows {type(layer).__name__}: write the spec as cXkY-BN or FCn-BN")
        parametrize.register_parametrization(layer, "weight", StandardisedWeight(self.num_features, self.eps,
                                                                           self.gain_init))
        self.attached = True

    def forward(self, x):
        if not self.attached:
            raise ModelError("norm=sws: this BN token was not attached to a conv or FC layer (only spec networks "
                             "written cXkY-BN or FCn-BN attach it; not the ResNets or the RFC layers): use "
                             "another norm")
        return x

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, gain_init={self.gain_init} (on the weight of the layer before)"


def attach_weight_norms(layers: Sequence[nn.Module]) -> None:
    """Attach every weight-standardising norm of `layers` (a network's layers in order) to the layer before it."""
    for before, layer in zip([None, *layers[:-1]], layers):
        if getattr(layer, "standardises_weight", False):
            if before is None:
                raise ModelError("norm=sws: a BN token at the start of the network has no conv or FC layer to "
                                 "standardise")
            layer.attach(before)
