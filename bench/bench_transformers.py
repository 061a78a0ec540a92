"""Spiking transformer training step benchmark: one training step of Spikformer, the Spike-driven Transformer and
QKFormer on CIFAR10-DVS-sized event frames (2 x 128 x 128, T = 16), ours (snnexp.nn.models) against SpikingJelly
2.0's (spikingjelly.activation_based.model) of the same size, in the same run. Targets: samples/s >= 1.5x
SpikingJelly's and peak memory <= 0.7x.

Both libraries' models have the DVS papers' layout at a width and depth that run on two cores: 128 x 128 input,
Spikformer patch 16 and the Spike-driven Transformer's pooling '1111' (an 8 x 8 grid of tokens), embedding 128,
8 heads of 16 channels, MLP ratio 4, one block; QKFormer with SpikingJelly's fixed three stages and its first patch
embedding (two pools: widths 32, 64, 128; 4 heads each; one block each; 32 x 32, 16 x 16 and 8 x 8 tokens), which
ours builds with depths [1, 1, 1] and stem=imagenet (our DVS presets: two stages [1, 1] and stem=dvs, which
SpikingJelly's model cannot build). Neurons: LIF,
tau 2, hard reset to 0, detached reset, sigmoid surrogate alpha 4, threshold 0.5 on the attentions' sums (ours:
snnexp.nn.neurons.LIF, backend fused; theirs: LIFNode, multi-step, its torch backend on the CPU). Norm: BN over
time and batch (ours: BatchNormOverTime; theirs: BatchNorm1d/2d over the [T * B] samples). What still differs, by
design of the two libraries (docs/science.md, "Spiking transformers"): SpikingJelly's QKFormer and Spike-driven
Transformer convolutions have biases where ours have none before a BN (the same function); ours end with
non-spiking output neurons (a leaky integrator, tau 2: readout=membrane_mean), theirs with the linear layer's
outputs.

One step: forward on [16, B, 2, 128, 128] event counts (small non-negative integers, about 90% zeros), the class
scores = the mean over time of the outputs, cross-entropy, backward, Adam (lr 1e-3, fused, the same for both);
SpikingJelly's network reset (functional.reset_net) before each. Ours is built as `snnexp train` builds it on the
CPU: BN-SN(-pool) runs joined (snnexp.nn.fusion.fuse_blocks), channels_last.

Time: per model, both implementations in one process, after a warm-up step each, take turns --rounds times (this
machine is shared: turns spread its noise over both), each turn the median of --repeats steps; samples/s = B over
the median of the turns. Peak memory: each (model, library) in a process of its own, one step after a warm-up
(bench/common.cpu_peak_mb), with the output blocks our kernels keep for reuse let go first (as in bench_psn.py).
Ratios: our samples/s over SpikingJelly's (target >= 1.5), our peak over SpikingJelly's (target <= 0.7). Prints a
table and writes bench/results/transformers.json. About 3 minutes on 2 cores.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import json
import statistics
import subprocess
import sys
from functools import partial

import torch
from torch import nn

from common import cpu_peak_mb, median_time, write_results

T, BATCH, FRAME = 16, 8, (2, 128, 128)
EMBED, HEADS, CLASSES = 128, 8, 10
MODELS = {
    "Spikformer": "embed 128, 1 block, 8 heads, patch 16 (8 x 8 tokens)",
    "SDT": "embed 128, 1 block, 8 heads, pooling 1111 (8 x 8 tokens)",
    "QKFormer": "widths 32/64/128, blocks 1/1/1, 4 heads, stem imagenet (32 x 32, 16 x 16, 8 x 8 tokens)",
}
IMPLS = ["snnexp", "SpikingJelly"]
SPEED_TARGET, MEMORY_TARGET = 1.5, 0.7


def ours(name: str) -> nn.Module:
    """Our model, built as `snnexp train` builds it on the CPU (readout=membrane_mean, join_layers, channels_last)."""
    from snnexp.nn import fusion
    from snnexp.nn.models import QKFormer, SpikeDrivenTransformer, Spikformer, with_output_layer
    from snnexp.nn.neurons import LIF
    from snnexp.nn.norms import BatchNormOverTime
    from snnexp.nn.readouts import MembraneReadout
    from snnexp.nn.surrogate import Sigmoid

    neuron = partial(LIF, tau=2.0, v_reset=0.0, detach_reset=True, surrogate=Sigmoid(4.0), backend="fused")
    common = dict(input_shape=FRAME, num_outputs=CLASSES, neuron=neuron, norm=BatchNormOverTime, mlp_ratio=4.0)
    if name == "Spikformer":
        model = Spikformer(embed_dim=EMBED, depth=1, heads=HEADS, patch_size=16, **common)
    elif name == "SDT":
        model = SpikeDrivenTransformer(embed_dim=EMBED, depth=1, heads=HEADS, pooling="1111", **common)
    else:
        model = QKFormer(embed_dim=EMBED, depths=[1, 1, 1], heads=4, stem="imagenet", **common)
    model = with_output_layer(model, MembraneReadout("mean").output_layer(), "readout=membrane_mean")
    fusion.fuse_blocks(model)
    return model.to(memory_format=torch.channels_last)


def theirs(name: str) -> nn.Module:
    """SpikingJelly 2.0's model of the same size (module docstring), multi-step, LIF tau 2 with detached reset."""
    from spikingjelly.activation_based.model import qkformer, spike_driven_transformer, spikformer

    if name == "Spikformer":  # its neurons default to tau 2, detach_reset, the sigmoid surrogate (alpha 4)
        return spikformer.Spikformer(T=T, in_channels=FRAME[0], img_size_h=FRAME[1], img_size_w=FRAME[2],
                                     patch_size=16, num_classes=CLASSES, embed_dims=EMBED, num_heads=HEADS,
                                     mlp_ratio=4.0, depths=1)
    lif = dict(tau=2.0, detach_reset=True, v_reset=0.0)  # the stems' neurons have no defaults of their own
    if name == "SDT":
        return spike_driven_transformer.SpikeDrivenTransformer(
            T=T, in_channels=FRAME[0], num_classes=CLASSES, embed_dims=EMBED, num_heads=HEADS, depths=1,
            mlp_ratio=4.0, pooling_stat="1111", **lif)
    return qkformer.QKFormer(T=T, in_channels=FRAME[0], num_classes=CLASSES, embed_dims=EMBED, num_heads=(4, 4, 4),
                             depths=(1, 1, 1), mlp_ratio=4.0, **lif)


def frames(seed: int) -> tuple:
    """A batch of event-count frames [T, B, 2, 128, 128] (Poisson counts, rate 0.1: ~90% zeros) and labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.full((T, BATCH, *FRAME), 0.1), generator=g)
    return x, torch.randint(0, CLASSES, (BATCH,), generator=g)


def training_step(name: str, impl: str):
    """One training step of the (model, library) as a function of nothing, its weights and data drawn once."""
    torch.manual_seed(0)
    model = (ours if impl == "snnexp" else theirs)(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x, y = frames(1)
    if impl == "snnexp":
        x = torch.stack([step.contiguous(memory_format=torch.channels_last) for step in x])  # as the loader's
    if impl == "SpikingJelly":
        from spikingjelly.activation_based import functional

    def step():
        if impl == "SpikingJelly":
            functional.reset_net(model)
        out = model(x)
        scores = out.mean(0) if out.dim() == 3 else out  # SDT's and QKFormer's take the mean over T themselves
        loss = nn.functional.cross_entropy(scores, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    return step


def times(name: str, rounds: int, repeats: int) -> dict:
    """{library: seconds per step}, the two taking turns (module docstring)."""
    steps = {impl: training_step(name, impl) for impl in IMPLS}
    for step in steps.values():
        step()  # warm-up: loads code, allocates the optimizer's state
    seconds = {impl: [] for impl in steps}
    for _ in range(rounds):
        for impl, step in steps.items():
            seconds[impl].append(median_time(step, repeats))
    return {impl: statistics.median(v) for impl, v in seconds.items()}


def peak_mb(name: str, impl: str) -> float:
    from snnexp.ops.kernels import buffers

    step = training_step(name, impl)
    step()
    buffers.clear()  # the blocks our CPU kernels keep for the next step count (kernels/buffers.py)
    return cpu_peak_mb(step)


def run_child(args, *one) -> object:
    flags = ["--rounds", str(args.rounds), "--repeats", str(args.repeats)]
    proc = subprocess.run([sys.executable, __file__, *flags, "--one", *one], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(one)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)  # steps of 1-5 s: turns of one step each, the median of three
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child process: one measurement, as JSON on stdout
        what, name, *impl = args.one
        print(json.dumps(times(name, args.rounds, args.repeats) if what == "time" else peak_mb(name, *impl)))
        return
    results = {"input": [T, BATCH, *FRAME], "threads": torch.get_num_threads(), "rows": []}
    print(f"one training step (forward, cross-entropy of the mean output over T, backward, Adam) on event frames "
          f"[{T}, {BATCH}, {', '.join(map(str, FRAME))}], {torch.get_num_threads()} threads")
    print(f"  {'model':10s} {'ours s/step':>11s} {'SJ s/step':>10s} {'ours/SJ samples/s':>18s} {'ours MB':>8s} "
          f"{'SJ MB':>8s} {'ours/SJ mem':>12s}  targets (>= {SPEED_TARGET}x, <= {MEMORY_TARGET}x)")
    for name in args.models:
        seconds = run_child(args, "time", name)
        mb = {impl: run_child(args, "memory", name, impl) for impl in IMPLS}
        row = {"model": name, "size": MODELS[name]}
        for impl in IMPLS:
            row[impl] = {"s_per_step": seconds[impl], "samples_per_s": BATCH / seconds[impl], "peak_mb": mb[impl]}
        row["speed_ratio"] = seconds["SpikingJelly"] / seconds["snnexp"]
        row["memory_ratio"] = mb["snnexp"] / max(mb["SpikingJelly"], 1e-9)
        row["speed_met"] = row["speed_ratio"] >= SPEED_TARGET
        row["memory_met"] = row["memory_ratio"] <= MEMORY_TARGET
        results["rows"].append(row)
        verdict = f"speed {'met' if row['speed_met'] else 'MISSED'}, memory {'met' if row['memory_met'] else 'MISSED'}"
        print(f"  {name:10s} {seconds['snnexp']:11.2f} {seconds['SpikingJelly']:10.2f} {row['speed_ratio']:17.2f}x "
              f"{mb['snnexp']:8.0f} {mb['SpikingJelly']:8.0f} {row['memory_ratio']:11.2f}x  {verdict}")
    for name in args.models:
        print(f"  {name}: {MODELS[name]}")
    print("  differences: QKFormer at SpikingJelly's three stages and stem (our DVS presets: two, stem=dvs); "
          "SpikingJelly's QKFormer and SDT convolutions have biases before BN where ours have none; our output layer "
          "is a leaky integrator (membrane_mean readout), theirs the linear outputs")
    print()
    write_results("transformers", results)


if __name__ == "__main__":
    main()
