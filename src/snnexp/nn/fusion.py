"""Fusion: the papers' blocks BN-SN, SN-MP and BN-SN-MP made one module each when the network is built.

    model = fuse_blocks(build_model(cfg, ...))   # what `snnexp train` does on the CPU unless trainer.join_layers=false

A `FusedBlock` runs its BN, spiking layer and max pool as one op on the CPU kernels (snnexp.ops.normalised,
snnexp.ops.pooled): the BN's output and the spikes before pooling are never written out, which is most of the
memory traffic of a convolutional layer (docs/performance.md). Outputs, gradients and BN statistics are those of the
layers run one after the other (tests/test_fusion.py). Like torch.ao.quantization.fuse_modules, the pass puts the
block in place of the first of its layers and leaves a `Joined` placeholder (the identity) in place of the others,
so every layer keeps its position, and the network summary shows what runs as one op:

    (3): FusedBlock(BN-SN-MP: one op on the CPU kernels)
    (4): Joined(into 3)
    (5): Joined(into 3)

State-dict keys stay those of the layers apart: `model.state_dict()` of a fused network names BN's weight '4.weight',
not '3.norm.weight' (a hook on the model renames them, both ways), so checkpoints are the same with and without
fusion, and so is the optimizer's state (`parameters` gives the parameters in the unfused order). `original_name`
gives any module's name in the unfused network (the metrics' layer names, the gradient norms' and the NaN
diagnosis' use it).

Which layers form a block is the network's to say: a model lists the runs of layers its forward runs in order
(`layer_runs()`, SpecNet, SpikingResNet and its blocks do); a model without that method is left as it is. A block
runs its layers apart, each as a module, when the input is not one the kernels take (another device or dtype, a map
the pool's windows do not tile) or when a forward hook watches one of its layers (NeuroBench's, the memory
estimate's): every hook then sees what it would see unfused. The one exception is a hook that only counts a spiking
layer's spikes (it has `add_counts(counts, T)`: the activity counters after their first batch): the joined op counts
the spikes itself and hands it the counts, so a test pass with metrics keeps the one op.
"""

from typing import Dict, List, Optional

import torch
from torch import nn

from snnexp.nn.layers import Repeated, SeqToANN, run_layers
from snnexp.nn.neurons import SpikingNeuron
from snnexp.nn.norms import BatchNormOverTime
from snnexp.nn.pooling import MaxPool2d
from snnexp.ops.fused import kernel_unavailable, lif_multistep_fused
from snnexp.ops.normalised import batch_norm
from snnexp.ops.pooled import joinable_input, lif_pool

__all__ = ["FusedBlock", "Joined", "fuse_blocks", "original_name", "parameters"]


class FusedBlock(nn.Module):
    """BN (optional), a spiking layer and a max pool (optional) run as one op where the kernels take the input
    (module docstring); a BN with a repeated input (direct coding: one step for T) runs apart, on that one step."""

    takes_repeated = True  # direct coding's Repeated input: gives the spikes of all its steps

    def __init__(self, norm: Optional[nn.Module], neuron: SpikingNeuron, pool: Optional[SeqToANN]):
        super().__init__()
        self.norm, self.neuron, self.pool = norm, neuron, pool

    def parts(self) -> List[nn.Module]:
        return [m for m in (self.norm, self.neuron, self.pool) if m is not None]

    def forward(self, x) -> torch.Tensor:
        """Spikes (pooled) [T, B, ...] of x [T, B, ...] or of a Repeated (snnexp.nn.neurons.repeated)."""
        out = self._joined(x.step, x.T) if isinstance(x, Repeated) else self._joined(x, 0)
        return out if out is not None else run_layers(self.parts(), x)

    def _joined(self, x: torch.Tensor, steps: int) -> Optional[torch.Tensor]:
        """The block through the joined ops, or None where they do not apply (then it runs apart). x [T, B, ...], or
        with `steps` one step [B, ...] fed at each of `steps` steps, as the kernels take them."""
        counters = _spike_counters(self.neuron)
        if counters is None or _watched(*[m for m in (self.norm, self.pool) if m is not None]) \
                or not cpu_kernel_neuron(self.neuron, x):
            return None
        pool = self.pool.module if self.pool is not None else None
        if pool is not None and not pool_joins(self.neuron, pool, x, steps, count=bool(counters)):
            pool = None
        norm = None
        if self.norm is not None and steps:
            # BN on direct coding's one step runs T times less often than the neuron: joining it saves little there
            # and adds the kernels' per-block work (bench/bench_train_step.py, convnet), so only the pool joins
            if pool is None:
                return None
            x = self.norm(Repeated(x, steps)).step
        elif self.norm is not None:
            norm = batch_norm(self.norm, x, steps)
            if norm is None:
                return None
        if pool is not None:
            return self._pooled(pool, x, steps, norm, counters)
        if norm is None:
            return None
        spikes = lif_multistep_fused(x, *self.neuron.dynamics(), steps, norm)
        for hook in counters:  # as the neuron's call would have run them
            hook(self.neuron, (x,), spikes)
        return self.pool(spikes) if self.pool is not None else spikes

    def _pooled(self, pool, x, steps, norm, counters) -> torch.Tensor:
        out = lif_max_pool(self.neuron, pool, x, steps, norm, count=bool(counters))
        if counters:
            out, counts = out
            for hook in counters:
                hook.add_counts(counts, steps or x.shape[0])
        return out

    def extra_repr(self) -> str:
        kinds = [kind for kind, m in (("BN", self.norm), ("SN", self.neuron), ("MP", self.pool)) if m is not None]
        return f"{'-'.join(kinds)}: one op on the CPU kernels"


class Joined(nn.Module):
    """The place of a layer that the FusedBlock `into` runs: passes its input on."""

    takes_repeated = True

    def __init__(self, into: str):
        super().__init__()
        self.into = into

    def forward(self, x):
        return x

    def extra_repr(self) -> str:
        return f"into {self.into}"


def _spike_counters(neuron: nn.Module):
    """The neuron's forward hooks if each of them only counts spikes (it has `add_counts(counts, T)`, as
    snnexp.report.activity's have after the first batch): [] for none; None where a hook must see the spikes
    themselves."""
    hooks = list(neuron._forward_hooks.values())
    if _watched(*neuron.children()) or neuron._forward_pre_hooks or any(not hasattr(h, "add_counts") for h in hooks):
        return None
    return hooks


def _watched(*modules: nn.Module) -> bool:
    """A forward hook watches one of `modules` (their submodules included), or every module."""
    modules = [m for module in modules for m in module.modules()]
    hooked_globally = nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    return bool(hooked_globally) or any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def lif_max_pool(neuron: SpikingNeuron, pool: nn.MaxPool2d, x: torch.Tensor, steps: int = 0, norm=None,
                 count: bool = False):
    """pool(neuron(x)) through the joint op (ops/pooled.py), as [T, B, C, H // kh, W // kw]; x is [T, B, C, H, W], or
    with `steps` one step's input [B, C, H, W] fed at each of `steps` steps; with `norm` (ops/normalised.py),
    pool(neuron(BN(x))). None where the joint op does not apply (then run the layers apart): see `pool_joins`. With
    `count`: (that output, each neuron's spike count [C, H, W] over the steps and the batch)."""
    if not pool_joins(neuron, pool, x, steps, count):
        return None
    kh, kw = nn.modules.utils._pair(pool.kernel_size)
    return lif_pool(x, neuron.dynamics(), kh, kw, steps, norm, count)


def pool_joins(neuron: SpikingNeuron, pool: nn.MaxPool2d, x: torch.Tensor, steps: int = 0, count: bool = False) -> bool:
    """The joint op computes exactly the two layers: a neuron of the CPU kernel (`cpu_kernel_neuron`), x laid out
    as the op reads it (ops/pooled.py, joinable_input), and a pool whose windows tile the map."""
    kh, kw = nn.modules.utils._pair(pool.kernel_size)
    return (cpu_kernel_neuron(neuron, x) and joinable_input(x, steps, kh, count)
            and pool._tiles(x if steps else x[0], kh, kw))


def cpu_kernel_neuron(neuron, x: torch.Tensor) -> bool:
    """`neuron` on x runs the CPU kernel of the fused op: a neuron of the fused kernel (IF, LIF, PLIF, STBP) with a
    surrogate it knows, x a float32 or float64 CPU tensor, and the kernel built."""
    return (type(neuron).forward is SpikingNeuron.forward and neuron.backend == "fused"
            and neuron.surrogate.kernel_args() is not None and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and kernel_unavailable("cpu") is None)


# -- the pass ------------------------------------------------------------------------------------------------------

def fuse_blocks(model: nn.Module) -> nn.Module:
    """Replace, in place, every BN-SN, SN-MP and BN-SN-MP of `model`'s layer runs by a FusedBlock (module
    docstring) and return `model`. Layers qualify when the joined ops compute them exactly: our BN over time
    (or tdBN), a spiking neuron of the fused kernel (IF, LIF, PLIF, STBP-LIF with backend=fused and a surrogate the
    kernels know), our MaxPool2d."""
    if not hasattr(model, "_unfused_order"):
        model._unfused_order = [name for name, _ in model.named_parameters()]
    renames: Dict[str, str] = {}
    for owner_name, owner in list(model.named_modules()):
        for run in owner.layer_runs() if hasattr(owner, "layer_runs") else ():
            renames.update(_fuse_run(owner, owner_name, list(run)))
    if renames:
        _keep_state_dict_names(model, renames)
    return model


def _fuse_run(owner: nn.Module, owner_name: str, slots: List[str]) -> Dict[str, str]:
    """Fuse the blocks among `owner`'s layers at `slots` (their names in it, in the order they run): {the parts'
    new names: their old names}, relative to the model."""
    full = (lambda slot: f"{owner_name}.{slot}") if owner_name else (lambda slot: slot)
    renames, i = {}, 0
    while i < len(slots):
        parts = _block_at([owner.get_submodule(s) for s in slots[i:i + 3]])
        if parts is None:
            i += 1
            continue
        taken = slots[i:i + sum(m is not None for m in parts)]
        block = FusedBlock(*parts)
        for part, slot in zip((n for n, m in zip(("norm", "neuron", "pool"), parts) if m is not None), taken):
            renames[f"{full(taken[0])}.{part}"] = full(slot)
        _set(owner, taken[0], block)
        for slot in taken[1:]:
            _set(owner, slot, Joined(full(taken[0])))
        i += len(taken)
    return renames


def _block_at(layers: List[nn.Module]):
    """(norm or None, neuron, pool or None) of the block the first of `layers` starts, or None. A norm joins when its
    forward is BatchNormOverTime's (that BN and tdBN): one affine map per channel for all steps, which the kernels
    apply. TEBN and BNTT (their own forward: per-step scales, per-step BNs) run apart, before the block."""
    norm = layers[0] if layers and type(layers[0]).forward is BatchNormOverTime.forward else None
    rest = layers[norm is not None:]
    if not rest or not _kernel_neuron(rest[0]):
        return None
    pool = rest[1] if len(rest) > 1 and isinstance(rest[1], SeqToANN) and isinstance(rest[1].module, MaxPool2d) \
        else None
    return (norm, rest[0], pool) if norm is not None or pool is not None else None


def _kernel_neuron(m: nn.Module) -> bool:
    """A neuron whose forward is the fused kernel's (the joined ops compute its spikes)."""
    return (isinstance(m, SpikingNeuron) and type(m).forward is SpikingNeuron.forward and m.backend == "fused"
            and m.surrogate.kernel_args() is not None)


def _set(owner: nn.Module, slot: str, module: nn.Module) -> None:
    parent, _, name = slot.rpartition(".")
    setattr(owner.get_submodule(parent) if parent else owner, name, module)


# -- names ---------------------------------------------------------------------------------------------------------

def parameters(model: nn.Module) -> List[nn.Parameter]:
    """`model`'s parameters in the order of the unfused network: what the optimizer is given, so that its state (kept
    by position) fits checkpoints with and without fusion. (A block can take a layer from another container: a SEW
    ResNet block's last BN joins the block's own neuron, which comes after the shortcut.)"""
    order = {name: i for i, name in enumerate(getattr(model, "_unfused_order", []))}
    named = [(order.get(original_name(model, name), len(order)), i, p)
             for i, (name, p) in enumerate(model.named_parameters())]
    return [p for _, _, p in sorted(named, key=lambda t: t[:2])]


def original_name(model: nn.Module, name: str) -> str:
    """A module's (or parameter's) name in `model` as it was before fuse_blocks, e.g. '3.neuron' -> '4'."""
    return _rename(name, getattr(model, "_fused_names", {}))


def _rename(name: str, renames: Dict[str, str]) -> str:
    """`name` with its longest prefix (whole parts) in `renames` replaced."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in renames:
            return ".".join([renames[head], *parts[n:]])
    return name


def _keep_state_dict_names(model: nn.Module, renames: Dict[str, str]) -> None:
    """Hooks on `model` so that its state dict uses the unfused names (module docstring), saving and loading."""
    renames = {**getattr(model, "_fused_names", {}), **renames}
    back = {old: new for new, old in renames.items()}
    first = not hasattr(model, "_fused_names")
    model._fused_names = renames

    def rename_keys(state_dict, prefix: str, table: Dict[str, str], metadata: bool) -> None:
        items = list(state_dict.items())
        state_dict.clear()
        for key, value in items:  # in the same order
            state_dict[prefix + _rename(key[len(prefix):], table) if key.startswith(prefix) else key] = value
        meta = getattr(state_dict, "_metadata", None)
        if metadata and meta is not None:  # the modules' versions (BN's), under their new names
            renamed = {k: prefix + _rename(k[len(prefix):], table) for k in meta if k.startswith(prefix)}
            moved = {new: meta.pop(old) for old, new in renamed.items() if new != old}
            meta.update(moved)

    if first:  # saving: a fresh state dict, renamed in place; loading: torch's own copy of the one given
        getattr(model, "register_state_dict_post_hook", getattr(model, "_register_state_dict_hook", None))(
            lambda module, state_dict, prefix, local_metadata: rename_keys(state_dict, prefix, module._fused_names,
                                                                           True))
        model.register_load_state_dict_pre_hook(
            lambda module, state_dict, prefix, *args: rename_keys(state_dict, prefix, module._fused_back, False))
    model._fused_back = back
