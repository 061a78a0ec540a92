"""Network activity over a test pass, for comparing runs: spike counts, synaptic operations (SOPs), and for a fixed
batch (the first of the unshuffled test loader) a spike raster and a confusion matrix.

    with Activity(model, spiking_layers(model), input_spikes) as activity:
        for x, y in loader:
            activity.batch(forward(x), y)
    activity.all_reduce()        # data parallel: the sums over all processes
    summary = activity.summary()

Forward hooks (removed on exit) accumulate integer SUMS, never means, so that the processes of a data-parallel run
can add theirs before anything is divided. They read the layers' inputs and outputs and change nothing.

SOPs, the usual energy proxy in SNN papers: a weight layer (Linear, Conv) whose input is spikes does one synaptic
operation (an accumulate) for every synapse driven by a non-zero input, i.e. exactly the same op with all-ones
weights applied to (input != 0), summed over its output. For Linear that is (number of non-zero inputs) x
out_features. For a convolution it is computed without running the convolution at every batch: sum over inputs
of (non-zero count at that input position) x reach, where reach = the number of synapses out of that position
(output channels x the output positions its kernel taps reach, padding and stride included), taken once per
layer and input shape as the gradient of sum(conv(x, ones)) with respect to x. Both are exact integers.
The layers that see the network's input before any spiking layer ran count only when that input is spikes
(`input_spikes`: Poisson or latency coding, event frames); with direct coding of static images their input is
analog and they do multiply-accumulates (MACs), which SNN papers count apart, and are left out here. Inputs that
are not 0/1 further on (after average pooling, NeuNorm, SEW-ResNet's spike sums) count by their non-zero entries.
"""

from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from snnexp import distributed
from snnexp.encoders import DirectEncoder
from snnexp.neurons import SpikingNeuron

SOP_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
RASTER_NEURONS = 256  # at most this many neurons of a layer in its raster: a fixed, evenly spaced subset


def layer_name(name: str, module: nn.Module) -> str:
    """A layer's readable name in TensorBoard and metrics.json: its position in the network (for a weight layer,
    the position of the SeqToANN wrapper that runs it on [T*B, ...]) and its type, e.g. '00_Conv2d', '03_PLIF'."""
    if name.endswith(".module"):
        name = name[: -len(".module")]
    return f"{int(name):02d}_{type(module).__name__}" if name.isdigit() else f"{name}_{type(module).__name__}"


def spiking_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The spiking layers of `model` by their readable name (layer_name)."""
    return {layer_name(name, m): m for name, m in model.named_modules() if isinstance(m, SpikingNeuron)}


def evenly_spaced(n: int, k: int = RASTER_NEURONS) -> torch.Tensor:
    """min(n, k) indices out of range(n), evenly spaced and strictly increasing (i * n // k)."""
    k = min(n, k)
    return torch.arange(k) * n // k


def conv_reach(conv: nn.Module, in_shape) -> torch.Tensor:
    """For every input position [C, *spatial] of `conv`: the number of synapses out of it, i.e. of (output
    element, weight) pairs it enters, padding, stride, dilation and groups included: the gradient of
    sum(conv(x, ones)) with respect to x (the transposed convolution of ones). Integer valued (int64)."""
    with torch.enable_grad():
        x = torch.zeros((1, *in_shape), requires_grad=True)
        conv._conv_forward(x, torch.ones(conv.weight.shape), None).sum().backward()
    return x.grad[0].round().long()


class Activity:
    """Collects, while active as a context manager, the activity of `model` over a test pass (module docstring).

    spiking: name -> spiking layer (spiking_layers), whose outputs are [T, B, ...] 0/1 spikes.
    input_spikes: whether the network's input is spikes (SOPs of the first weight layers counted, see above).
    Call batch(scores, labels) after each batch's forward: it counts the samples, and the first call ends the
    fixed batch (the raster and the confusion matrix are taken from it)."""

    def __init__(self, model: nn.Module, spiking: Dict[str, nn.Module], input_spikes: bool,
                 raster_neurons: int = RASTER_NEURONS):
        self.model, self.spiking, self.input_spikes = model, dict(spiking), bool(input_spikes)
        self.raster_neurons = raster_neurons
        self.samples = 0
        self.neuron_counts: Dict[str, torch.Tensor] = {}  # per spiking layer: spikes per neuron, summed over T and B
        self.steps: Dict[str, int] = {}                   # per spiking layer: T
        self.sops: Dict[str, torch.Tensor] = {}           # per weight layer with spiking input: SOPs summed
        self.analog_input_layers: set = set()             # weight layers left out: analog network input (MACs)
        self.raster: Dict[str, np.ndarray] = {}           # per spiking layer: [neurons, T] 0/1 of the fixed sample
        self.confusion: Optional[np.ndarray] = None       # [classes, classes] counts: true class x predicted
        self._first_batch = True
        self._spiked = False  # a spiking layer ran in the current forward pass
        self._reach: Dict[Any, torch.Tensor] = {}
        self._hooks = []

    # -- hooks ------------------------------------------------------------------------------------------------

    def __enter__(self):
        try:
            self._hooks.append(self.model.register_forward_pre_hook(self._start_forward))
            for name, module in self.spiking.items():
                self._hooks.append(module.register_forward_hook(self._spike_hook(name)))
            for name, module in self.model.named_modules():
                if isinstance(module, SOP_LAYERS):
                    self._hooks.append(module.register_forward_hook(self._sop_hook(layer_name(name, module))))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _start_forward(self, module, inputs):
        self._spiked = False

    def _spike_hook(self, name: str):
        def hook(module, inputs, spikes):
            s = spikes.detach() != 0
            counts = s.sum((0, 1))  # int64, per neuron
            self.neuron_counts[name] = counts if name not in self.neuron_counts else self.neuron_counts[name] + counts
            self.steps[name] = s.shape[0]
            self._spiked = True
            if self._first_batch:  # the fixed batch's first sample: [T, neurons] -> [neurons, T]
                first = s[:, 0].flatten(1)
                keep = evenly_spaced(first.shape[1], self.raster_neurons).to(first.device)
                self.raster[name] = first[:, keep].t().to("cpu", torch.uint8).numpy()
        return hook

    def _sop_hook(self, name: str):
        def hook(module, inputs, out):
            if not (self._spiked or self.input_spikes):
                self.analog_input_layers.add(name)
                return
            nonzero = inputs[0].detach() != 0
            if isinstance(module, nn.Linear):
                sops = nonzero.sum() * module.out_features
            else:  # [N, C, *spatial], N = T * B: non-zero count per input position x its synapses out
                shape = tuple(nonzero.shape[1:])
                key = (name, shape)
                if key not in self._reach:
                    self._reach[key] = conv_reach(module, shape).to(nonzero.device)
                sops = (nonzero.sum(0) * self._reach[key]).sum()
            self.sops[name] = sops if name not in self.sops else self.sops[name] + sops
        return hook

    # -- per batch ---------------------------------------------------------------------------------------------

    def batch(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """After a batch's forward: [B, classes] scores and [B] labels."""
        self.samples += labels.numel()
        if self._first_batch:
            k = scores.shape[1]
            pred, true = scores.detach().argmax(1).cpu(), labels.detach().cpu().long()
            self.confusion = torch.bincount(true * k + pred, minlength=k * k).view(k, k).numpy()
            self._first_batch = False

    # -- results -----------------------------------------------------------------------------------------------

    def all_reduce(self) -> None:
        """Data parallel: replace the sums (samples, spike and SOP counts) by their sums over all processes; the
        raster and confusion matrix stay this process's own. A no-op in a single process."""
        if distributed.world() <= 1:
            return
        import torch.distributed as dist

        names = sorted(self.neuron_counts), sorted(self.sops)
        parts = [torch.tensor([self.samples])] + [self.neuron_counts[n].cpu().flatten() for n in names[0]] + \
            [self.sops[n].cpu().view(1) for n in names[1]]
        flat = torch.cat(parts).long()
        dist.all_reduce(flat)
        self.samples = int(flat[0])
        pos = 1
        for n in names[0]:
            size = self.neuron_counts[n].numel()
            self.neuron_counts[n] = flat[pos:pos + size].view(self.neuron_counts[n].shape)
            pos += size
        for n in names[1]:
            self.sops[n] = flat[pos]
            pos += 1

    def summary(self) -> Dict[str, Any]:
        """Per sample (summed over the T steps of a sample) and per layer; numbers for metrics.json, arrays for
        TensorBoard images and histograms:

        spikes_per_sample, sops_per_sample: totals over the network
        layer_spikes_per_sample, layer_sops_per_sample: the same per layer
        firing_rate: per spiking layer, the mean over time steps, samples and neurons
        neuron_rates: per spiking layer, every neuron's rate (count / (T * samples)), flat float64 array
        raster: per spiking layer, [neurons, T] 0/1 uint8 of the fixed batch's first sample
        confusion: [classes, classes] counts of the fixed batch, rows the true class, columns the predicted
        sop_input_layers_left_out: weight layers with analog network input, not counted"""
        n = max(self.samples, 1)
        counts = {k: int(v.sum()) for k, v in self.neuron_counts.items()}
        layer_spikes = {k: c / n for k, c in counts.items()}
        layer_sops = {k: int(v) / n for k, v in self.sops.items()}
        return {
            "spikes_per_sample": sum(layer_spikes.values()),
            "sops_per_sample": sum(layer_sops.values()),
            "layer_spikes_per_sample": layer_spikes,
            "layer_sops_per_sample": layer_sops,
            "firing_rate": {k: counts[k] / (self.steps[k] * n * v.numel()) for k, v in self.neuron_counts.items()},
            "neuron_rates": {k: v.cpu().double().flatten().numpy() / (self.steps[k] * n)
                             for k, v in self.neuron_counts.items()},
            "raster": dict(self.raster),
            "confusion": self.confusion,
            "sop_input_layers_left_out": sorted(self.analog_input_layers),
        }


def input_is_spikes(encoder, sequence: bool) -> bool:
    """Whether a network's input is spikes (its first weight layer then does SOPs): event frames (`sequence`
    datasets) and every encoder but direct coding, which feeds the analog image."""
    return bool(sequence) or not isinstance(encoder, DirectEncoder)


# -- images, made with numpy alone (matplotlib is no runtime dependency) ----------------------------------------

def raster_image(raster: np.ndarray, height: int = 512, width: int = 256) -> np.ndarray:
    """[neurons, T] 0/1 -> an [H, W] uint8 image: a black cell for a spike on white, a row per neuron, a column
    per time step, each cell scaled up to about height x width pixels in all (cells 1 to 8 pixels high, 2 to 32
    wide)."""
    neurons, steps = raster.shape
    h = int(np.clip(height // max(neurons, 1), 1, 8))
    w = int(np.clip(width // max(steps, 1), 2, 32))
    img = np.where(raster > 0, 0, 255).astype(np.uint8)
    return np.repeat(np.repeat(img, h, axis=0), w, axis=1)


def confusion_image(confusion: np.ndarray, size: int = 320) -> np.ndarray:
    """[classes, classes] counts -> an [H, W] uint8 grayscale image of the row-normalised matrix (rows the true
    class, columns the predicted): the darker, the larger the share of the row; a class absent from the batch is a
    white row. Cells scaled up to about `size` pixels (4 to 32 each)."""
    cm = np.asarray(confusion, dtype=np.float64)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    cell = int(np.clip(size // max(cm.shape[0], 1), 4, 32))
    img = np.round(255 * (1 - share)).astype(np.uint8)
    return np.repeat(np.repeat(img, cell, axis=0), cell, axis=1)
