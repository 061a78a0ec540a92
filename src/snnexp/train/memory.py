"""Will a training step fit in memory? Checked before the first step, so that `trainer.T=100000` is one line naming
the setting to change, not an allocator's traceback (or a machine that swaps) after the first batch.

The estimate: the network runs on one sample at T = 1 and at T = 2 (no gradient, eval mode) while forward hooks
count the elements of every layer's output; every activation is [T, B, ...], so a step keeps about that many per
time step and sample for the backward pass, scaled by T x batch x 4 bytes x AUTOGRAD_FACTOR (measured below). The
gradients and Adam's moments of the weights come on top. The hooks also switch off the joined BN-SN-pool kernels
(snnexp.nn.fusion.FusedBlock), so every layer is called as a module and counted, the spiking layers included.
A network with a layer built for exactly T steps (a PSN's T x T weights) is probed once, at T.
"""

import logging
import math
import os
from typing import Optional, Tuple

import torch
from torch import nn

from snnexp.errors import ConfigError
from snnexp.nn.fusion import Joined
from snnexp.nn.layers import Repeated
from snnexp.report.activity import spiking_layers
from snnexp.train import distributed

log = logging.getLogger("snnexp")

BYTES_PER_ELEMENT = 4  # float32 (with trainer.amp some activations take half)
# What a training step's memory grows by per counted output element, time step and sample: the slope of the peak
# resident set over one forward + backward + Adam step between two T (as bench/bench_memory.py measures it), divided
# by the counted outputs x 4 bytes, for the networks of the presets (docs/performance.md, "Figures behind the code").
# A little under the lowest is taken, so the estimate is a floor (it came out at 0.2 to 1.0 of the measured peaks):
# a run it refuses cannot fit, while one near the edge may still fail in the allocator. A floor, because a wrong
# refusal would stop a run that trains.
AUTOGRAD_FACTOR = 0.44
NEW_STATE_COPIES = 3  # the weights exist when the check runs; their gradients and Adam's two moments do not


def counted_outputs(model: nn.Module, x_seq: torch.Tensor) -> int:
    """Elements of all layers' outputs for the input x_seq: of the network's leaf modules and its spiking layers (a
    neuron holds its surrogate as a child; a recurrent layer steps its neuron without calling it)."""
    leaves = {m for m in model.modules() if not list(m.children()) and not isinstance(m, Joined)}  # not placeholders
    counted = leaves | set(spiking_layers(model).values())
    total = 0

    def count(module, inputs, output):
        nonlocal total
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        outputs = [t.step if isinstance(t, Repeated) else t for t in outputs]  # a Repeated keeps its one step
        total += sum(t.numel() for t in outputs if isinstance(t, torch.Tensor))

    hooks = [m.register_forward_hook(count) for m in counted]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # BN on a single value per channel only runs in eval mode; eval changes no statistics
        with torch.no_grad():
            model(x_seq)
    finally:
        for m, training in modes.items():
            m.training = training
        for h in hooks:
            h.remove()
    return total


def step_bytes(model: nn.Module, encoder, sequence: bool, input_shape, T: int, batch: int) -> int:
    """The estimated floor of one training step's new memory at T time steps and `batch` samples: the outputs of
    one sample at T = 1 and 2 (as the run's encoder gives them: direct coding's repeated input runs the layers
    before the first neuron once, whatever T) give what each step adds and what runs once. A network with a layer
    built for exactly T steps (`fixed_steps`: PSN, MaskedPSN) is probed at T itself, which T's range bounds."""
    device = next(model.parameters(), torch.zeros(())).device

    def probe(steps: int) -> int:
        if sequence:  # event or audio frames, fed as they are
            return counted_outputs(model, torch.zeros(steps, 1, *input_shape, device=device))
        image = torch.zeros(1, *input_shape, device=device)
        return counted_outputs(model, encoder(image, steps, generator=torch.Generator(device).manual_seed(0)))

    if any(getattr(m, "fixed_steps", None) for m in model.modules()):
        outputs = probe(T)  # a layer built for T steps only (a PSN's T x T weights) runs at T alone
    else:
        one, two = probe(1), probe(2)
        outputs = (two - one) * T + 2 * one - two  # per step x T, plus what runs once
    inputs = math.prod(input_shape) * (T if sequence else 1)
    activations = (outputs * AUTOGRAD_FACTOR + inputs) * batch
    state = NEW_STATE_COPIES * sum(p.numel() for p in model.parameters())
    return int((activations + state) * BYTES_PER_ELEMENT)


def available_bytes(device: torch.device) -> Tuple[Optional[int], str]:
    """(bytes this run may still take on `device`, where that figure comes from), or (None, why not known)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # ours, free to reuse
        return free + cached, f"free on {device}"
    try:  # the CPU (and MPS, which shares it): what Linux would give without swapping
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024, "available RAM (MemAvailable)"
    except (OSError, StopIteration, ValueError):
        pass
    try:  # other Unixes: free pages only (the page cache not counted), so low rather than high
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free RAM"
    except (AttributeError, ValueError, OSError):
        return None, "this system reports no free memory"


def check_step_fits(run) -> None:
    """ConfigError when the estimate of a training step of `run` (snnexp.train.build.Run) exceeds the memory available;
    a logged note, and no check, where either cannot be computed."""
    T, world = run.cfg.trainer.T, distributed.world()
    local = -(-min(run.cfg.trainer.batch_size, len(run.splits.train)) // world)  # a process's share of a batch
    at_once = min(local, run.cfg.trainer.micro_batch or local)  # each process runs one piece at a time
    batch = at_once if run.device.type == "cuda" else at_once * world  # a GPU each; on the CPU they share the RAM
    try:
        need = step_bytes(run.model, run.encoder, run.splits.sequence, run.splits.input_shape, T, batch)
        have, source = available_bytes(run.device)
    except Exception as e:  # a network the probe cannot run: training reports its own error; never stop here
        log.info("memory check skipped: could not estimate a training step's memory (%s: %s)", type(e).__name__, e)
        return
    if have is None:
        log.info("memory check skipped: %s", source)
        return
    if need > have:
        raise ConfigError(
            f"a training step at trainer.T={T} and {batch} samples at once needs at least {_gib(need)} of memory "
            f"(estimated before starting), but {_gib(have)} is {source}: set trainer.micro_batch (pieces of the batch, "
            "one step), lower trainer.T or trainer.batch_size, or use a narrower network (model.spec, model.hidden "
            "or model.width)")


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
