"""`snnexp export`: a trained network as a NIR graph (the Neuromorphic Intermediate Representation, PyPI `nir`),
the format snnTorch, Norse, Sinabs, Rockpool, Lava and the SpiNNaker2 tools read.

Layer by layer (shapes in NIR have no batch dimension):

    conv / FC            Conv2d / Linear (Affine when there is a bias), BN folded into their weights and bias
    BN (bn, tdbn)        folded into the conv or FC layer just before it (eval mode: running statistics)
    MPkXsY on spikes     SumPool2d + Threshold(0.5): the max of 0/1 spikes is 1 exactly when their sum is > 0.5
    APkXsY               AvgPool2d; on a feature vector (the voting APk10s10) a Linear of 1/k blocks
    flatten              Flatten(start_dim=0)
    dropout, norm=none   nothing: both are the identity at inference
    RFCn                 its W_in as a Linear (Affine), then a subgraph of its neuron and a Linear W_rec from the
                         neuron back to itself (a recurrent edge, the layout of snnTorch's RLeaky export)
    voting readout       a Linear that averages each class's population (rate readout: nothing; the class
                         score is the mean over time of the graph's output in both cases)
    membrane readout     its non-spiking output neurons as LI (tau_nir = tau * dt, r = 1, v_leak = 0); the class
                         score is the max, mean or last value over time of their potential (metadata "readout")

Neurons. Ours (docs/science.md, section 1) step, with tau in time steps:

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau        decay_input = true   (X / tau)
    H[t] = V[t-1] - (V[t-1] - V_reset) / tau + X[t]          decay_input = false  (X)
    S[t] = H[t] >= V_th;   V[t] = V_reset where S[t] = 1, else H[t]

NIR's LIF is the ODE  tau_nir dv/dt = (v_leak - v) + r I  with a reset to v_reset. One forward-Euler step of
length dt is  v += dt / tau_nir * (v_leak - v + r I),  which is ours exactly with

    tau_nir = tau * dt,  v_leak = v_reset = V_reset,  v_threshold = V_th,  r = 1 (decay_input) or tau (not)

(PLIF: its learned tau; STBP's k: tau = 1 / (1 - k), decay_input = false). dt (seconds per time step, the
graph's metadata "dt") is free, since our steps have no unit; the default 1e-4 s is the step snnTorch's importer
assumes; give Norse the same (`from_nir(graph, dt=1e-4)`). IF: NIR's IF is v' = r I; exported with r = 1 and
read, as Norse, Sinabs and SpiNNaker2 read it, as v[t] = v[t-1] + r I[t] per step.

What is not exact: NIR fires on v > v_threshold, we on H >= V_th (the two differ only when H lands exactly on
the threshold). A soft reset (neuron.v_reset=null: subtract V_th) has no NIR node, nor has NeuNorm: both stop
the export with a message, as does the adaptive LIF (neuron=alif: no NIR primitive has an adaptive threshold) and
anything else NIR cannot express; nothing is left out silently.

The spiking transformers (model=spikformer, spike_driven_transformer, qkformer) are refused, naming their first
attention block: what NIR can and cannot express of them is in snnexp/export/transformers.py.
"""

import io
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nir
import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn

from snnexp.errors import ExportError
from snnexp.export.describe import chain, describe  # noqa: F401  (snnexp export prints them)
from snnexp.export.transformers import TRANSFORMERS, refuse_transformer
from snnexp.files import write_atomic
from snnexp.nn.layers import SeqDropout, SeqFlatten, SeqToANN
from snnexp.nn.neurons import ALIF, IF, LIF, PLIF, ParallelNeuron, SpikingNeuron
from snnexp.nn.norms import BatchNormPerTimeStep, NeuNorm, NoNorm, TemporalEffectiveBatchNorm
from snnexp.nn.readouts import LeakyIntegrator
from snnexp.nn.recurrent import RecurrentFC
from snnexp.train import checkpoint
from snnexp.train.build import model_from_checkpoint

FORMATS = ("nir",)
DEFAULT_DT = 1e-4  # seconds per time step; the step snnTorch's NIR importer assumes


def _f32(shape, value) -> np.ndarray:
    return np.full(tuple(shape), value, dtype=np.float32)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


class _Graph:
    """The NIR nodes of a feed-forward network as they are added, each fed by the one before."""

    def __init__(self, input_shape: Sequence[int]):
        self.nodes: Dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(input_shape)})}
        self.edges: List[Tuple[str, str]] = []
        self.last = "input"
        self.shape = tuple(int(s) for s in input_shape)
        self.spikes = False  # is the signal at self.last 0/1 spikes?
        self._counts: Counter = Counter()

    def add(self, kind: str, node: nir.NIRNode, shape, spikes: bool) -> str:
        self._counts[kind] += 1
        name = f"{kind}{self._counts[kind]}"
        self.nodes[name] = node
        self.edges.append((self.last, name))
        self.last, self.shape, self.spikes = name, tuple(int(s) for s in shape), spikes
        return name

    def graph(self, metadata: dict) -> nir.NIRGraph:
        self.nodes["output"] = nir.Output(output_type={"output": np.array(self.shape)})
        self.edges.append((self.last, "output"))
        return nir.NIRGraph(nodes=self.nodes, edges=self.edges, metadata=metadata)


# Layers no NIR primitive expresses, and why: refused by name rather than written as a graph that computes
# something else (NIR's nodes apply the same parameters at every step and carry state one step at a time)
NO_NIR_NODE = {
    ParallelNeuron: ("neuron=psn, masked_psn, sliding_psn", "its potential at each step is a learned weighted sum of "
                     "the inputs of other time steps (H = W X over the T steps at once), not a state carried from one "
                     "step to the next as NIR's neurons carry theirs", "neuron=lif or neuron=plif"),
    TemporalEffectiveBatchNorm: ("norm=tebn", "its scale p[t] changes with the time step, while a NIR node applies "
                                 "the same weights at every step", "norm=bn or tdbn (folded into the weights)"),
    BatchNormPerTimeStep: ("norm=bntt", "its statistics and scale change with the time step, while a NIR node "
                           "applies the same weights at every step", "norm=bn or tdbn (folded into the weights)"),
}


def refuse_inexpressible(module: nn.Module, where: str) -> None:
    """ExportError naming the layer, its config option, why NIR cannot express it and what to train instead."""
    for cls, (option, why, instead) in NO_NIR_NODE.items():
        if isinstance(module, cls):
            raise ExportError(f"{where}{type(module).__name__} ({option}) has no NIR node: {why}. Export a network "
                              f"trained with {instead}")


def neuron_node(neuron: SpikingNeuron, shape, dt: float, where: str = "") -> nir.NIRNode:
    """The NIR node whose discrete-time update (forward Euler with step dt) is this neuron's; see the module
    docstring for the mapping."""
    if isinstance(neuron, ALIF):
        raise ExportError(f"{where}ALIF (neuron=alif) has no NIR node: its threshold adapts with its own spikes (a "
                          f"second state variable with time constant tau_adapt), and NIR's neurons have a fixed "
                          f"threshold. Train with neuron=lif or neuron=plif to export")
    if neuron.v_reset is None:
        raise ExportError(f"{where}{type(neuron).__name__} with a soft reset (neuron.v_reset=null: V -= V_th after a "
                          f"spike) has no NIR node: NIR's neurons reset to v_reset. Train with a hard reset "
                          f"(neuron.v_reset=0.0) to export")
    v_th, v_reset = neuron.v_threshold, neuron.v_reset
    meta = {"snnexp_neuron": type(neuron).__name__, "dt": dt, "fire": "v >= v_threshold (NIR: >)",
            "reset": "hard, to v_reset"}
    if isinstance(neuron, IF):
        meta["update"] = "v[t] = v[t-1] + r * I[t], one input per time step"
        return nir.IF(r=_f32(shape, 1.0), v_threshold=_f32(shape, v_th), v_reset=_f32(shape, v_reset), metadata=meta)
    if not isinstance(neuron, (LIF, PLIF)):
        raise ExportError(f"{where}neuron {type(neuron).__name__} has no NIR mapping in snnexp export")
    tau = float(neuron.tau)  # in time steps; PLIF: 1 / sigmoid(w), learned
    meta.update(tau_steps=tau, decay_input=bool(neuron.decay_input),
                update="v += dt / tau * (v_leak - v + r * I): forward Euler, one step of dt per time step")
    return nir.LIF(tau=_f32(shape, tau * dt), r=_f32(shape, 1.0 if neuron.decay_input else tau),
                   v_leak=_f32(shape, v_reset), v_threshold=_f32(shape, v_th), v_reset=_f32(shape, v_reset),
                   metadata=meta)


def _pool1d_weight(features: int, k: int, s: int, average: bool) -> np.ndarray:
    """A pooling over a feature vector (kernel k, stride s) as a matrix: 1/k (average) or 1 (sum) per window."""
    out = (features - k) // s + 1
    w = np.zeros((out, features), dtype=np.float32)
    for j in range(out):
        w[j, j * s: j * s + k] = 1.0 / k if average else 1.0
    return w


def _pair(v) -> np.ndarray:
    return np.array(v if isinstance(v, (tuple, list)) else (v, v))


def _add_layer(g: _Graph, module: nn.Module, where: str, dt: float) -> None:
    if isinstance(module, (SeqDropout, NoNorm)):  # the identity at inference
        return
    refuse_inexpressible(module, where)
    if isinstance(module, SpikingNeuron):
        g.add(type(module).__name__.lower(), neuron_node(module, g.shape, dt, where), g.shape, spikes=True)
        return
    if isinstance(module, LeakyIntegrator):  # a membrane readout's output neurons: v += dt / tau_nir (0 - v + I)
        tau = _f32(g.shape, module.tau * dt)
        g.add("li", nir.LI(tau=tau, r=_f32(g.shape, 1.0), v_leak=_f32(g.shape, 0.0)), g.shape, spikes=False)
        return
    if isinstance(module, RecurrentFC):
        _recurrent(g, module, where, dt)
        return
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        _fold_norm(g, module, where)
        return
    if isinstance(module, NeuNorm):
        raise ExportError(f"{where}NeuNorm has no NIR node: it subtracts a running average of the layer's activity "
                          f"across feature maps, a state no NIR primitive holds. Export a network trained with "
                          f"norm=bn, tdbn or none")
    if isinstance(module, SeqFlatten):
        g.add("flatten", nir.Flatten(input_type={"input": np.array(g.shape)}, start_dim=0, end_dim=-1),
              (int(np.prod(g.shape)),), g.spikes)
        return
    inner = module.module if isinstance(module, SeqToANN) else module
    if isinstance(inner, nn.Conv2d):
        _conv(g, inner, where)
    elif isinstance(inner, nn.Linear):
        g.add("fc", _linear_node(inner), (inner.out_features,), spikes=False)
    elif isinstance(inner, (nn.MaxPool2d, nn.AvgPool2d)):
        _pool2d(g, inner, where)
    elif isinstance(inner, nn.Sequential) and any(isinstance(m, (nn.MaxPool1d, nn.AvgPool1d)) for m in inner):
        pool = next(m for m in inner if isinstance(m, (nn.MaxPool1d, nn.AvgPool1d)))
        k, s = int(_pair(pool.kernel_size)[0]), int(_pair(pool.stride)[0])
        if isinstance(pool, nn.AvgPool1d):
            w = _pool1d_weight(g.shape[0], k, s, average=True)
            g.add("avgpool", nir.Linear(weight=w), (w.shape[0],), spikes=False)
        else:
            _require_spikes(g, where, "max pooling over features")
            w = _pool1d_weight(g.shape[0], k, s, average=False)
            g.add("maxpool_sum", nir.Linear(weight=w), (w.shape[0],), spikes=False)
            g.add("maxpool_any", nir.Threshold(threshold=_f32(g.shape, 0.5)), g.shape, spikes=True)
    else:
        raise ExportError(f"{where}{type(inner).__name__} has no NIR mapping in snnexp export (it exports conv, FC, "
                          f"max and average pooling, flatten, BN folded into the weights, dropout, IF, LIF, PLIF "
                          f"and STBP neurons)")


def _linear_node(linear: nn.Linear) -> nir.NIRNode:
    w = _array(linear.weight)
    return nir.Linear(weight=w) if linear.bias is None else nir.Affine(weight=w, bias=_array(linear.bias))


def _recurrent(g: _Graph, layer: RecurrentFC, where: str, dt: float) -> None:
    """RFCn: its W_in as a Linear node, then a subgraph {input -> neuron -> output, neuron -> w_rec -> neuron}: the
    layout snnTorch exports its RLeaky in and reads back. The cycle neuron -> w_rec -> neuron is NIR's recurrent
    edge: a discrete simulator feeds the neuron's spikes of step t-1 back at step t, our I[t] = W_in x[t] +
    W_rec s[t-1]."""
    n = layer.recurrent.out_features
    g.add("fc", _linear_node(layer.input.module), (n,), spikes=False)
    _add_layer(g, layer.norm, where, dt)  # BN folds into W_in; norm=none adds nothing; NeuNorm stops the export
    neuron = neuron_node(layer.neuron, (n,), dt, where)
    shape = np.array([n])
    sub = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": shape}), "neuron": neuron,
               "w_rec": _linear_node(layer.recurrent), "output": nir.Output(output_type={"output": shape})},
        edges=[("input", "neuron"), ("neuron", "w_rec"), ("w_rec", "neuron"), ("neuron", "output")],
        metadata={"snnexp_layer": "RecurrentFC", "update": "I[t] = x[t] + w_rec s[t-1], s[-1] = 0"})
    g.add("recurrent", sub, (n,), spikes=True)


def _conv(g: _Graph, conv: nn.Conv2d, where: str) -> None:
    if len(g.shape) != 3 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ExportError(f"{where}Conv2d with input {list(g.shape)} and padding {conv.padding!r} "
                          f"({conv.padding_mode}) has no NIR Conv2d equivalent")
    w = _array(conv.weight)
    bias = _array(conv.bias) if conv.bias is not None else np.zeros(w.shape[0], dtype=np.float32)
    node = nir.Conv2d(input_shape=g.shape[1:], weight=w, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=bias)
    g.add("conv", node, node.output_type["output"], spikes=False)


def _pool2d(g: _Graph, pool, where: str) -> None:
    k, s, p = _pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size), \
        _pair(pool.padding)
    if pool.ceil_mode or (isinstance(pool, nn.MaxPool2d) and np.any(_pair(pool.dilation) != 1)):
        raise ExportError(f"{where}{pool} (ceil_mode or dilation) has no NIR pooling equivalent")
    c, h, w = g.shape
    out = (c, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1)
    if isinstance(pool, nn.AvgPool2d):
        if np.any(p != 0) and pool.count_include_pad is False:
            raise ExportError(f"{where}{pool}: NIR's AvgPool2d counts the padding")
        g.add("avgpool", nir.AvgPool2d(kernel_size=k, stride=s, padding=p), out, spikes=False)
        return
    _require_spikes(g, where, "max pooling")
    g.add("maxpool_sum", nir.SumPool2d(kernel_size=k, stride=s, padding=p), out, spikes=False)
    g.add("maxpool_any", nir.Threshold(threshold=_f32(out, 0.5)), out, spikes=True)


def _require_spikes(g: _Graph, where: str, what: str) -> None:
    if not g.spikes:
        raise ExportError(f"{where}{what} of real values has no NIR node (NIR has no max pooling; on 0/1 spikes it "
                          f"is exported exactly as a sum pooling and a threshold). Put the pooling after a neuron "
                          f"(...-SN-MPk2s2), or use average pooling (AP)")


def _fold_norm(g: _Graph, bn: nn.modules.batchnorm._BatchNorm, where: str) -> None:
    """BN in eval mode, y = (x - mean) / sqrt(var + eps) * gamma + beta, folded into the conv or FC before it."""
    node = g.nodes[g.last]
    if not isinstance(node, (nir.Conv2d, nir.Linear, nir.Affine)):
        before = type(node).__name__ if g.last != "input" else "the input"
        raise ExportError(f"{where}{type(bn).__name__} follows {before}"
                          f", not a conv or FC layer: NIR has no normalisation node, and snnexp exports BN folded into "
                          f"the weights before it. Put BN right after a conv or FC layer (c...-BN-SN), or train "
                          f"with norm=none")
    if bn.running_mean is None:
        raise ExportError(f"{where}{type(bn).__name__} without running statistics (track_running_stats=False) "
                          f"normalises with each batch's own statistics: it cannot be folded into fixed weights")
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    scale = (scale / torch.sqrt(bn.running_var + bn.eps)).cpu().numpy().astype(np.float32)
    shift = (bn.bias.detach().cpu().numpy() if bn.affine else 0.0) - bn.running_mean.cpu().numpy() * scale
    bias = node.bias if isinstance(node, (nir.Conv2d, nir.Affine)) else np.zeros(node.weight.shape[0], np.float32)
    weight = node.weight * scale.reshape(-1, *([1] * (node.weight.ndim - 1)))
    bias = (bias * scale + shift).astype(np.float32)
    if isinstance(node, nir.Conv2d):
        node.weight, node.bias = weight.astype(np.float32), bias
    else:  # a Linear gains a bias
        g.nodes[g.last] = nir.Affine(weight=weight.astype(np.float32), bias=bias)


def to_nir(model: nn.Module, input_shape: Sequence[int], population: int = 1, dt: float = DEFAULT_DT,
           metadata: Optional[dict] = None) -> nir.NIRGraph:
    """The NIR graph of a network built from a spec (SpecNet, MLP) in eval mode, for one time step of input
    [*input_shape]; `population` > 1 appends the voting readout's population average."""
    from snnexp.nn.models import SpecNet

    if type(model) in TRANSFORMERS:
        refuse_transformer(model)
    if not isinstance(model, SpecNet):
        raise ExportError(f"snnexp export handles the networks written as a spec (model=convnet, mlp, fc, rsnn, "
                          f"plif_*, stbp_*), not {type(model).__name__}: the residual joins of the spiking ResNets "
                          f"are not mapped to NIR")
    if not dt > 0:
        raise ExportError(f"dt={dt}: the time step must be > 0 (seconds per step, e.g. dt=1e-4)")
    model = model.eval()
    g = _Graph(input_shape)
    for i, module in enumerate(model):
        _add_layer(g, module, f"layer {i} of '{model.spec}': ", dt)
    if population > 1:
        w = _pool1d_weight(g.shape[0], population, population, average=True)
        g.add("readout", nir.Linear(weight=w), (w.shape[0],), spikes=False)
    return g.graph({"source": "snnexp", "spec": model.spec, "dt": dt, **(metadata or {})})


def export_checkpoint(path, fmt: str = "nir", out=None, dt: float = DEFAULT_DT,
                      config_dirs: Optional[Sequence[Path]] = None) -> Tuple[Path, nir.NIRGraph]:
    """Write the network of a snnexp checkpoint as a NIR graph (HDF5, nir.write); returns the file and the graph.
    `config_dirs`: the trusted config folders (train.build.model_from_checkpoint)."""
    if fmt not in FORMATS:
        raise ExportError(f"format={fmt}: snnexp export writes {', '.join(FORMATS)} (format=nir)")
    path = Path(path).expanduser()
    state = checkpoint.load(path)
    model, info = model_from_checkpoint(state, path, config_dirs)
    cfg = info["cfg"]
    readout = instantiate(cfg.readout)
    meta = {"time_steps": int(cfg.trainer.T), "encoder": str(cfg.encoder._target_).rsplit(".", 1)[-1],
            "readout": f"{type(readout).__name__}: class score = {getattr(readout, 'reduce', 'mean')} over the time "
                       f"steps of the graph's output",
            "checkpoint": str(path.resolve()), "epoch": int(state.get("epoch", 0))}
    graph = to_nir(model, info["input_shape"], population=readout.population, dt=dt, metadata=meta)
    out = Path(out).expanduser() if out else path.with_suffix(".nir")
    # HDF5 into memory first: h5py on a full disk can crash the process (SIGSEGV) and leaves half a file; the
    # bytes are then written as any other output, atomically, and a full disk is an OSError
    hdf5 = io.BytesIO()
    nir.write(hdf5, graph)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, hdf5.getbuffer())
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}; free disk space, or give out=FILE in a folder "
                          "you can write to") from None
    return out, graph
