"""Norms-through-time benchmark (issue 33): forward + backward of TEBN and BNTT on [T, 32, 64, 16, 16] at T = 4 and 8,
against the peers in the same run:

- TEBN, snnexp:        `snnexp.nn.norms.TemporalEffectiveBatchNorm(C, T)` (norm=tebn; its op: ops/step_norms.py)
- TEBN, SpikingJelly:  `layer.TemporalEffectiveBatchNorm2d(T, C)`: its multi-step BN, then times the scale
- BNTT, snnexp:        `snnexp.nn.norms.BatchNormPerTimeStep(C, T)` (norm=bntt)
- BNTT, SpikingJelly:  `layer.BatchNormThroughTime2d(T, C, step_mode='m')`, reset before each sequence
- BNTT, snnTorch:      `BatchNormTT2d(C, T)`, called as its docs do, the BN of step t on x[t], the steps stacked

on the same input and output gradient, NCHW (`--channels-last`: each step channels_last, what `snnexp train` runs
with trainer.channels_last=true). Time: the implementations of a norm take turns, --rounds times, each the median of
--repeats calls (this machine is shared: turns spread its noise over all of them), and the figure is the median of
the rounds. Peak memory: each (norm, implementation, T) in a process of its own, over one call after a warm-up
(bench/common.cpu_peak_mb). Ratios: a peer's time over ours (> 1: ours faster) and our peak memory over the
peer's (< 1: ours smaller). Prints a table and writes bench/results/norms.json (norms_channels_last.json).
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import json
import statistics
import subprocess
import sys

import torch

from common import cpu_peak_mb, median_time, write_results

IMPLS = {"TEBN": ["snnexp", "SpikingJelly"], "BNTT": ["snnexp", "SpikingJelly", "snnTorch"]}
STEPS = [4, 8]
BATCH, C, H = 32, 64, 16


def make_op(norm: str, impl: str, T: int):
    """A function x [T, B, C, H, W] -> y of the same shape, holding the layer's parameters and statistics."""
    if impl == "snnexp":
        from snnexp.nn.norms import BatchNormPerTimeStep, TemporalEffectiveBatchNorm

        return (TemporalEffectiveBatchNorm if norm == "TEBN" else BatchNormPerTimeStep)(C, T)
    if impl == "SpikingJelly":
        from spikingjelly.activation_based import functional, layer

        if norm == "TEBN":
            return layer.TemporalEffectiveBatchNorm2d(T, C)
        bntt = layer.BatchNormThroughTime2d(T, C, step_mode="m")

        def run(x):
            functional.reset_net(bntt)  # its state t counts the steps of a sequence
            return bntt(x)
        return run
    import snntorch

    bntt = snntorch.BatchNormTT2d(C, T)
    return lambda x: torch.stack([bntt[t](x[t]) for t in range(T)])


def inputs(T: int, channels_last: bool):
    """The input and the output's gradient, in the same layout (as a network's layers hand them on)."""
    torch.manual_seed(0)
    x, grad = torch.randn(T, BATCH, C, H, H) * 2 + 0.5, torch.randn(T, BATCH, C, H, H)
    if channels_last:
        x, grad = (torch.stack([step.contiguous(memory_format=torch.channels_last) for step in t]) for t in (x, grad))
    return x.requires_grad_(), grad


def step_of(norm: str, impl: str, T: int, channels_last: bool):
    """One forward + backward call of the implementation, warmed up (and the warm-up's gradient let go, so that a
    memory measurement counts the call's own)."""
    x, grad = inputs(T, channels_last)
    op = make_op(norm, impl, T)

    def step():
        x.grad = None
        op(x).backward(grad)
    step()
    x.grad = None
    return step


def times(norm: str, T: int, channels_last: bool, rounds: int, repeats: int) -> dict:
    """{implementation: ms}, the implementations of `norm` taking turns (module docstring)."""
    steps = {impl: step_of(norm, impl, T, channels_last) for impl in IMPLS[norm]}
    ms = {impl: [] for impl in steps}
    for _ in range(rounds):
        for impl, step in steps.items():
            ms[impl].append(1000 * median_time(step, repeats))
    return {impl: statistics.median(v) for impl, v in ms.items()}


def child(args) -> None:
    """A child process: one measurement, as JSON on stdout."""
    what, norm, *rest = args.one
    if what == "time":
        print(json.dumps(times(norm, int(rest[0]), args.channels_last, args.rounds, args.repeats)))
    else:
        impl, T = rest
        print(json.dumps(cpu_peak_mb(step_of(norm, impl, int(T), args.channels_last))))


def run_child(args, *one) -> object:
    flags = ["--rounds", str(args.rounds), "--repeats", str(args.repeats)] + (["--channels-last"] * args.channels_last)
    proc = subprocess.run([sys.executable, __file__, *flags, "--one", *map(str, one)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, one))} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_rows(norm: str, T: int, row: dict) -> None:
    ours = row["snnexp"]
    print(f"\n{norm} [{T}, {BATCH}, {C}, {H}, {H}], forward + backward")
    print(f"  {'':13s} {'ms':>8s} {'peak MB':>8s} {'theirs/ours time':>17s} {'ours/theirs mem':>16s}")
    for impl, r in row.items():
        ratios = "" if impl == "snnexp" else \
            f" {r['ms'] / ours['ms']:16.2f}x {ours['peak_mb'] / max(r['peak_mb'], 1e-9):15.2f}x"
        print(f"  {impl:13s} {r['ms']:8.2f} {r['peak_mb']:8.1f}{ratios}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        child(args)
        return
    layout = "channels_last" if args.channels_last else "nchw"
    results = {"threads": torch.get_num_threads(), "layout": layout, "rows": []}
    for norm, impls in IMPLS.items():
        for T in STEPS:
            ms = run_child(args, "time", norm, T)
            row = {impl: {"ms": ms[impl], "peak_mb": run_child(args, "memory", norm, impl, T)} for impl in impls}
            results["rows"].append({"norm": norm, "shape": [T, BATCH, C, H, H], **row})
            print_rows(norm, T, row)
    print()
    write_results("norms" if layout == "nchw" else f"norms_{layout}", results)


if __name__ == "__main__":
    main()
