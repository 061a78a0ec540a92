"""Neuron op benchmark (issue 5, benchmark 1): a multi-step LIF or PLIF layer, forward + backward, on
[T=8, B=32, 128, 16, 16] and on the same elements at T=32 ([32, 8, 128, 16, 16]), on this CPU:

- snnexp fused:      the modules' default (backend=fused): the C kernel of snnexp/neurons/kernels/lif_cpu.c
- snnexp reference:  `functional.lif_multistep_reference`, autograd through every step
- torch.compile:     inductor's code for the same reference loops (what PyTorch offers without our kernel;
                     compile time is left out: the warm-up call compiles)
- SpikingJelly 2.0:  `neuron.LIFNode` / `ParametricLIFNode`, step_mode='m' (its CPU path: the torch backend)
- snnTorch 1.0:      `snntorch.Leaky` (PLIF: learn_beta=True), looped over T as its docs do
- Norse 1.1:         `LIFBoxCell` (LIF without synaptic current; PLIF: tau_mem_inv a learned parameter), looped
                     over T; its surrogate is SuperSpike's, the others' atan

All with tau 2 (snnTorch: beta = 1 - 1/tau; Norse: dt/tau_mem = 0.5), V_th 1, hard reset to 0, atan surrogate
(alpha 2) with detached reset where the library offers it, on the same input and output gradient. Time: the
median of --repeats forward+backward calls after a warm-up. Peak memory: each (implementation, neuron, T)
runs in a fresh process; the figure is the rise of its peak resident memory over the warm-up call.

Bandwidth bound: the op must read X and write S forward, and read X and dL/dS and write dL/dX backward: five
tensors. The bound is their bytes over this machine's memory bandwidth, measured here as torch.add(a, 1,
out=b) on preallocated tensors of the same size (read + write). Ratios: SpikingJelly's time over ours (> 1:
ours faster), our peak memory over SpikingJelly's, our time over the bound. Prints a table and writes
bench/results/neuron.json.
"""

import argparse
import json
import resource
import subprocess
import sys

import torch
from common import median_time, write_results

IMPLS = ["snnexp fused", "snnexp reference", "torch.compile", "SpikingJelly", "snnTorch", "Norse"]
SHAPES = {8: (8, 32, 128, 16, 16), 32: (32, 8, 128, 16, 16)}


def make_op(impl: str, kind: str):
    """A function x_seq -> spikes [T, ...] holding the layer's parameters (PLIF's learnable decay)."""
    if impl.startswith("snnexp") or impl == "torch.compile":
        from snnexp.neurons import LIF, PLIF
        from snnexp.neurons.functional import lif_multistep_reference
        from snnexp.surrogate import ATan

        common = dict(detach_reset=True, surrogate=ATan(2.0), backend="fused" if impl == "snnexp fused" else "reference")
        module = PLIF(tau0=2.0, **common) if kind == "plif" else LIF(tau=2.0, **common)
        if impl != "torch.compile":
            return module
        tau_inv = (lambda: torch.sigmoid(module.w)) if kind == "plif" else (lambda: 0.5)
        compiled = torch.compile(lif_multistep_reference, fullgraph=True, dynamic=False)
        return lambda x: compiled(x, tau_inv(), module.surrogate, 1.0, 0.0, True, True)
    if impl == "SpikingJelly":
        from spikingjelly.activation_based import functional, neuron, surrogate

        cls = neuron.ParametricLIFNode if kind == "plif" else neuron.LIFNode
        node = cls(**({"init_tau": 2.0} if kind == "plif" else {"tau": 2.0}), detach_reset=True,
                   surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m")

        def run(x):
            functional.reset_net(node)
            return node(x)
        return run
    if impl == "snnTorch":
        import snntorch
        from snntorch import surrogate as snn_surrogate

        cell = snntorch.Leaky(beta=0.5, threshold=1.0, spike_grad=snn_surrogate.atan(alpha=2.0),
                              reset_mechanism="zero", learn_beta=kind == "plif", reset_delay=False)

        def run(x):
            mem, spikes = cell.init_leaky(), []
            for x_t in x:
                spk, mem = cell(x_t, mem)
                spikes.append(spk)
            return torch.stack(spikes)
        return run
    from norse.torch import LIFBoxCell, LIFBoxParameters

    tau_mem_inv = torch.tensor(500.0)  # dt = 1e-3: dt / tau_mem = 0.5
    cell = LIFBoxCell(LIFBoxParameters(tau_mem_inv=torch.nn.Parameter(tau_mem_inv) if kind == "plif" else tau_mem_inv,
                                       v_th=torch.tensor(1.0), v_reset=torch.tensor(0.0)))

    def run(x):
        state, spikes = None, []
        for x_t in x:
            spk, state = cell(x_t, state)
            spikes.append(spk)
        return torch.stack(spikes)
    return run


def measure(impl: str, kind: str, T: int, repeats: int) -> dict:
    torch.manual_seed(0)
    x = (torch.randn(SHAPES[T]) + 0.5).requires_grad_()
    grad = torch.randn(SHAPES[T])
    op = make_op(impl, kind)

    def step():
        x.grad = None
        op(x).backward(grad)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()  # warm-up (and compile), and the peak-memory figure
    peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"ms": 1000 * median_time(step, repeats), "peak_mb": peak_mb}


def bandwidth_gbs(numel: int, repeats: int) -> float:
    a, b = torch.randn(numel), torch.empty(numel)
    seconds = median_time(lambda: torch.add(a, 1.0, out=b), max(repeats, 9))
    return 2 * a.element_size() * numel / seconds / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS, metavar="IMPL")
    ap.add_argument("--one", nargs=3, metavar=("IMPL", "KIND", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child process: one measurement, as JSON on stdout
        impl, kind, T = args.one
        print(json.dumps(measure(impl, kind, int(T), args.repeats)))
        return

    numel = SHAPES[8][0] * SHAPES[8][1] * 128 * 16 * 16
    gbs = bandwidth_gbs(numel, args.repeats)
    bound_ms = 5 * 4 * numel / (gbs * 1e9) * 1000
    print(f"memory bandwidth (torch.add out=, {4 * numel / 2**20:.0f} MiB tensors): {gbs:.1f} GB/s; "
          f"bound for the op (5 float32 tensors): {bound_ms:.1f} ms")
    results = {"bandwidth_gbs": gbs, "bound_ms": bound_ms, "threads": torch.get_num_threads(), "rows": []}
    for kind in ("lif", "plif"):
        for T in SHAPES:
            row = {"neuron": kind, "shape": list(SHAPES[T])}
            for impl in args.impls:
                proc = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--one", impl,
                                       kind, str(T)], capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"  {impl} failed:\n{proc.stderr[-2000:]}")
                    continue
                row[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            results["rows"].append(row)
            sj = row.get("SpikingJelly")
            print(f"\n{kind.upper()} {row['shape']}, forward + backward")
            print(f"  {'':17s} {'ms':>8s} {'peak MB':>8s} {'SJ/this time':>13s} {'this/SJ mem':>12s} {'this/bound':>11s}")
            for impl in args.impls:
                if impl not in row:
                    continue
                r = row[impl]
                vs_sj = (f"{sj['ms'] / r['ms']:12.2f}x {r['peak_mb'] / max(sj['peak_mb'], 1e-9):11.2f}x"
                         if sj else f"{'-':>13s} {'-':>12s}")
                print(f"  {impl:17s} {r['ms']:8.1f} {r['peak_mb']:8.0f} {vs_sj} {r['ms'] / bound_ms:10.2f}x")
    print()
    write_results("neuron", results)


if __name__ == "__main__":
    main()
