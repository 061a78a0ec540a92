"""Neuron op benchmark (issue 5, benchmark 1): a multi-step LIF or PLIF layer, forward + backward, on
[T=8, B=32, 128, 16, 16] and on the same elements at T=32 ([32, 8, 128, 16, 16]), on this CPU:

- snnexp reference: `functional.lif_multistep`, autograd through every step (what the modules call today)
- snnexp fused:     `fused.lif_multistep_fused`, one loop forward, one hand-written loop backward
- SpikingJelly 2.0: `neuron.LIFNode` / `ParametricLIFNode`, step_mode='m'
- snnTorch 1.0:     `snntorch.Leaky` (PLIF: learn_beta=True), looped over T as its docs do

All with tau 2 (snnTorch: beta = 1 - 1/tau, its own form of the same leak), V_th 1, hard reset to 0 with
detached reset, atan surrogate (alpha 2), on the same input. Time: the median of --repeats runs after a
warm-up. Peak memory: each (implementation, neuron, T) runs in a fresh process, and the figure is the rise
of its peak resident memory from just before the op to just after it. Ratios are SpikingJelly's figure
over ours (> 1: ours is faster / smaller). Prints a table and writes bench/results/neuron.json.
"""

import argparse
import json
import resource
import subprocess
import sys

import torch
from common import median_time, write_results

IMPLS = ["snnexp reference", "snnexp fused", "SpikingJelly", "snnTorch"]
SHAPES = {8: (8, 32, 128, 16, 16), 32: (32, 8, 128, 16, 16)}


def make_op(impl: str, kind: str):
    """A function x_seq -> spikes [T, ...] that holds the layer's parameters (PLIF's w)."""
    if impl.startswith("snnexp"):
        from snnexp.neurons import LIF, PLIF
        from snnexp.neurons.fused import lif_multistep_fused
        from snnexp.surrogate import ATan

        common = dict(detach_reset=True, surrogate=ATan(2.0))
        module = PLIF(tau0=2.0, **common) if kind == "plif" else LIF(tau=2.0, **common)
        if impl == "snnexp reference":
            return module, module
        tau_inv = (lambda: torch.sigmoid(module.w)) if kind == "plif" else (lambda: 0.5)
        return (lambda x: lif_multistep_fused(x, tau_inv(), module.surrogate, 1.0, 0.0, True, True)), module
    if impl == "SpikingJelly":
        from spikingjelly.activation_based import functional, neuron, surrogate

        cls = neuron.ParametricLIFNode if kind == "plif" else neuron.LIFNode
        node = cls(**({"init_tau": 2.0} if kind == "plif" else {"tau": 2.0}), detach_reset=True,
                   surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m")

        def run(x):
            functional.reset_net(node)
            return node(x)
        return run, node
    import snntorch
    from snntorch import surrogate as snn_surrogate

    leaky = snntorch.Leaky(beta=0.5, threshold=1.0, spike_grad=snn_surrogate.atan(alpha=2.0), reset_mechanism="zero",
                           learn_beta=kind == "plif", reset_delay=False)

    def run(x):
        mem = leaky.init_leaky()
        spikes = []
        for x_t in x:
            spk, mem = leaky(x_t, mem)
            spikes.append(spk)
        return torch.stack(spikes)
    return run, leaky


def measure(impl: str, kind: str, T: int, repeats: int) -> dict:
    torch.manual_seed(0)
    x0 = torch.randn(SHAPES[T]) + 0.5
    grad = torch.randn(SHAPES[T])
    op, params = make_op(impl, kind)

    def step():
        x = x0.clone().requires_grad_()
        op(x).backward(grad)
        return x

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up, and the peak-memory figure
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"ms": 1000 * median_time(step, repeats), "peak_mb": peak_mb}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--one", nargs=3, metavar=("IMPL", "KIND", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child process: one measurement, as JSON on stdout
        impl, kind, T = args.one
        print(json.dumps(measure(impl, kind, int(T), args.repeats)))
        return

    results = []
    for kind in ("lif", "plif"):
        for T in SHAPES:
            row = {"neuron": kind, "shape": list(SHAPES[T])}
            for impl in IMPLS:
                out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--one", impl, kind,
                                      str(T)], capture_output=True, text=True, check=True).stdout
                row[impl] = json.loads(out.strip().splitlines()[-1])
            results.append(row)
            sj = row["SpikingJelly"]
            print(f"\n{kind.upper()} {row['shape']}")
            print(f"  {'':18s} {'ms':>9s} {'peak MB':>9s} {'SJ/ours time':>13s} {'ours/SJ memory':>15s}")
            for impl in IMPLS:
                r = row[impl]
                print(f"  {impl:18s} {r['ms']:9.1f} {r['peak_mb']:9.1f} {sj['ms'] / r['ms']:13.2f}x "
                      f"{r['peak_mb'] / max(sj['peak_mb'], 1e-9):14.2f}x")
    print()
    write_results("neuron", results)


if __name__ == "__main__":
    main()
