"""Networks: every model is a sequence of layers built from the papers' spec notation (see spec.py).

`SpecNet` builds any spec; `MLP` writes the spec of a fully connected network from its hidden sizes
(with no hidden layer it is the single-layer tutorial network); `RSNN` that of a recurrent network (RFCn
layers). The configured neuron and norm come in as factories, so one override (`neuron=plif`, `norm=tdbn`)
swaps every SN and BN layer (and the neurons of every RFC layer).
"""

import math
from typing import Callable, Sequence

from torch import nn

from snnexp.errors import ModelError, SpecError
from snnexp.nn.delays import DEFAULT_MAX_DELAY, DelayedFC
from snnexp.nn.layers import SeqDropout, SeqFlatten, SeqToANN, materialize, run_layers
from snnexp.nn.models.resnet import SpikingResNet
from snnexp.nn.models.spec import Layer, expand, format_spec, parse_spec
from snnexp.nn.models.transformers import QKFormer, SpikeDrivenTransformer, Spikformer
from snnexp.nn.neurons import SpikingNeuron
from snnexp.nn.pooling import MaxPool2d
from snnexp.nn.recurrent import RecurrentFC
from snnexp.nn.weight_standardization import attach_weight_norms

__all__ = ["MLP", "ModelError", "QKFormer", "RSNN", "SpecNet", "SpecError", "SpikeDrivenTransformer", "Spikformer",
           "SpikingResNet", "parse_spec", "format_spec", "with_output_layer"]


class SpecNet(nn.Sequential):
    """A spiking network from a spec string. Input [T, B, *input_shape] -> output spikes [T, B, F].
    Its layers run in order (`layer_runs`: snnexp.nn.fusion may join its BN-SN-MP blocks)."""

    def __init__(
        self,
        spec: str,
        input_shape: Sequence[int],
        num_outputs: int,
        neuron: Callable[[], nn.Module],
        norm: Callable[[int], nn.Module],
        dropout: float = 0.5,
        bias: bool = False,
    ):
        self.spec = format_spec(parse_spec(spec))
        shape = tuple(int(s) for s in input_shape)
        layers = []
        for layer in expand(parse_spec(spec)):
            module, shape = _build(layer, shape, neuron, norm, dropout, bias, self.spec)
            if isinstance(module, list):
                layers.extend(module)
            elif module is not None:
                layers.append(module)
        attach_weight_norms(layers)  # norm=sws: standardises the weight of the conv/FC before each BN token
        super().__init__(*layers)
        materialize(self, input_shape)
        if len(shape) != 1 or shape[0] != num_outputs:
            raise ModelError(
                f"model '{self.spec}' ends with output shape {list(shape)}, but the readout needs "
                f"{num_outputs} features (classes x readout.population). End the spec with FC{num_outputs}-SN, "
                f"or with FC<classes*10>-SN-APk10s10 for voting, or change readout."
            )

    def forward(self, x_seq):
        """[T, B, *input_shape] -> [T, B, F]; direct coding's repeated input runs the first layers once."""
        return run_layers(self, x_seq)

    def layer_runs(self):
        """The names of the layers forward runs one after the other (snnexp.nn.fusion)."""
        return [[str(i) for i in range(len(self))]]


def _build(layer: Layer, shape, neuron, norm, dropout, bias, spec):
    """One layer: returns (module or list of modules or None, output shape without T and B)."""
    kind, a = layer.kind, layer.args
    if kind == "conv":
        if len(shape) != 3:
            raise ModelError(f"'{layer}' in '{spec}' needs a [C, H, W] input, got {list(shape)}")
        out, k, s, p = a[0], a[1], a[2] or 1, a[3] if a[3] is not None else a[1] // 2
        h, w = ((n + 2 * p - k) // s + 1 for n in shape[1:])
        if h < 1 or w < 1:
            raise ModelError(f"'{layer}' in '{spec}' gets a {shape[1]}x{shape[2]} map: too small")
        return SeqToANN(nn.Conv2d(shape[0], out, k, s, p, bias=bias)), (out, h, w)
    if kind == "fc":
        mods = []
        if len(shape) != 1:
            mods.append(SeqFlatten())
        mods.append(SeqToANN(nn.Linear(math.prod(shape), a[0], bias=bias)))
        return mods, (a[0],)
    if kind == "rfc":
        mods = [SeqFlatten()] if len(shape) != 1 else []
        mods.append(RecurrentFC(math.prod(shape), a[0], neuron(), norm(a[0]), bias=bias))
        return mods, (a[0],)
    if kind == "dfc":
        mods = [SeqFlatten()] if len(shape) != 1 else []
        max_delay = a[1] if a[1] is not None else DEFAULT_MAX_DELAY
        mods.append(DelayedFC(math.prod(shape), a[0], max_delay, bias=bias))
        return mods, (a[0],)
    if kind in ("maxpool", "avgpool"):
        k, s = a[0], a[1] or a[0]
        if len(shape) == 3:
            pool = (MaxPool2d if kind == "maxpool" else nn.AvgPool2d)(k, s)
            out = (shape[0], (shape[1] - k) // s + 1, (shape[2] - k) // s + 1)
        else:  # on a feature vector: 1-d pooling over features, e.g. the voting layer APk10s10
            pool = (nn.MaxPool1d if kind == "maxpool" else nn.AvgPool1d)(k, s)
            pool = nn.Sequential(nn.Unflatten(1, (1, shape[0])), pool, nn.Flatten(1))
            out = ((shape[0] - k) // s + 1,)
        if min(out) < 1:
            raise ModelError(f"'{layer}' in '{spec}' gets input {list(shape)}: too small to pool")
        return SeqToANN(pool), out
    if kind == "norm":
        return norm(shape[0]), shape
    if kind == "neuron":
        return neuron(), shape
    if kind == "dropout":
        p = a[0] if a[0] is not None else dropout
        return (SeqDropout(p) if p > 0 else None), shape
    raise AssertionError(kind)


class MLP(SpecNet):
    """Fully connected: {FC<h>-BN-SN} for each hidden size, then FC<outputs>-SN.
    `hidden: []` is the single-layer network of the tutorial (Linear(784, 10) + neuron)."""

    def __init__(self, hidden: Sequence[int], input_shape, num_outputs, neuron, norm, dropout=0.0, bias=False):
        drop = "DP-" if dropout else ""  # DP without a value takes `dropout`
        spec = "".join(f"FC{int(h)}-BN-SN-{drop}" for h in hidden) + f"FC{num_outputs}-SN"
        super().__init__(spec, input_shape, num_outputs, neuron, norm, dropout, bias)


class RSNN(SpecNet):
    """Recurrent: {RFC<h>[-DP]} for each hidden size, then FC<outputs>-SN (the class count comes from the
    dataset and readout, so one config serves SHD's 20 classes and SSC's 35). `recurrent: false` writes FC<h>-SN
    instead of RFC<h>, the same network without its recurrent weights, for comparison."""

    def __init__(self, hidden: Sequence[int], input_shape, num_outputs, neuron, norm, recurrent: bool = True,
                 dropout=0.0, bias=False):
        if not hidden:
            raise ModelError("model=rsnn needs at least one hidden layer (model.hidden=[256]); for a network "
                             "without hidden layers use model=fc")
        layer = "RFC{}" if recurrent else "FC{}-SN"
        drop = "-DP" if dropout else ""
        spec = "".join(layer.format(int(h)) + drop + "-" for h in hidden) + f"FC{num_outputs}-SN"
        super().__init__(spec, input_shape, num_outputs, neuron, norm, dropout, bias)


def with_output_layer(model: nn.Sequential, layer: nn.Module, reason: str) -> nn.Sequential:
    """`model` with its last layer, which must be a spiking neuron layer, replaced by `layer` (a membrane readout's
    non-spiking output neurons); `reason` names what asks for it, for the error."""
    last = model[-1] if isinstance(model, nn.Sequential) and len(model) else None
    if not isinstance(last, SpikingNeuron):
        spec = getattr(model, "spec", type(model).__name__)
        raise ModelError(f"{reason} replaces the network's last spiking layer by non-spiking output neurons, but "
                         f"'{spec}' ends with {type(last).__name__}: end the network with FC<classes>-SN (no "
                         f"pooling or recurrent layer after it), or use readout=rate")
    model[-1] = layer
    return model
