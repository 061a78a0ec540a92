"""Neuron op benchmark (issue 5, benchmark 1): a multi-step LIF or PLIF layer, forward + backward, on
[T=8, B=32, 128, 16, 16] and on the same elements at T=32 ([32, 8, 128, 16, 16]), on this CPU:

- snnexp fused:      the modules' default (backend=fused): the C kernel of snnexp/ops/kernels/lif_cpu.c
- snnexp reference:  `functional.lif_multistep_reference`, autograd through every step
- torch.compile:     inductor's code for the same reference loops (what PyTorch offers without our kernel;
                     compile time is left out: the warm-up call compiles)
- SpikingJelly 2.0:  `neuron.LIFNode` / `ParametricLIFNode`, step_mode='m' (it picks its op by device: on
                     the CPU a Python loop with a hand-written backward, on CUDA its Triton kernels)
- snnTorch 1.0:      `snntorch.Leaky` (PLIF: learn_beta=True), looped over T as its docs do
- Norse 1.1:         `LIFBoxCell` (LIF without synaptic current; PLIF: tau_mem_inv a learned parameter), looped
                     over T; its surrogate is SuperSpike's, the others' atan

All with tau 2 (snnTorch: beta = 1 - 1/tau; Norse: dt/tau_mem = 0.5), V_th 1, hard reset to 0, atan surrogate
(alpha 2) with detached reset where the library offers it, on the same input and output gradient. Time: the
median of --repeats forward+backward calls after a warm-up. Peak memory: each (implementation, neuron, T)
is measured in its own fresh process, over one call after the warm-up (so that loading code does not count):
the peak of glibc's bytes in use (mallinfo2, sampled every 0.2 ms) above the start. On CUDA, the allocator's
peak.

Bandwidth bound: the op must read X and write S forward, and read X and dL/dS and write dL/dX backward: five
tensors. The bound is their bytes over this machine's memory bandwidth, measured here as torch.add(a, 1,
out=b) on preallocated tensors of the same size (read + write). Ratios: SpikingJelly's time over ours (> 1:
ours faster), our peak memory over SpikingJelly's, our time over the bound. Prints a table and writes
bench/results/neuron.json.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import json
import resource
import subprocess
import sys

import torch

from common import cpu_peak_mb, median_time, write_results
from snnexp.ops.kernels import buffers

IMPLS = ["snnexp fused", "snnexp reference", "torch.compile", "SpikingJelly", "snnTorch", "Norse"]
SHAPES = {8: (8, 32, 128, 16, 16), 32: (32, 8, 128, 16, 16)}


def make_op(impl: str, kind: str, device: str = "cpu"):
    """A function x_seq -> spikes [T, ...] holding the layer's parameters (PLIF's learnable decay)."""
    if impl.startswith("snnexp") or impl == "torch.compile":
        from snnexp.nn.neurons import LIF, PLIF
        from snnexp.nn.neurons.functional import lif_multistep_reference
        from snnexp.nn.surrogate import ATan

        backend = "fused" if impl == "snnexp fused" else "reference"
        common = dict(detach_reset=True, surrogate=ATan(2.0), backend=backend)
        module = (PLIF(tau0=2.0, **common) if kind == "plif" else LIF(tau=2.0, **common)).to(device)
        if impl != "torch.compile":
            return module
        tau_inv = (lambda: torch.sigmoid(module.w)) if kind == "plif" else (lambda: 0.5)
        compiled = torch.compile(lif_multistep_reference, fullgraph=True, dynamic=False)
        return lambda x: compiled(x, tau_inv(), module.surrogate, 1.0, 0.0, True, True)
    if impl == "SpikingJelly":
        from spikingjelly.activation_based import functional, neuron, surrogate

        cls = neuron.ParametricLIFNode if kind == "plif" else neuron.LIFNode
        # 2.0 picks its op by device: on the CPU a Python time loop with a hand-written backward, on CUDA its
        # Triton kernels
        node = cls(**({"init_tau": 2.0} if kind == "plif" else {"tau": 2.0}), detach_reset=True,
                   surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m").to(device)

        def run(x):
            functional.reset_net(node)
            return node(x)
        return run
    if impl == "snnTorch":
        import snntorch
        from snntorch import surrogate as snn_surrogate

        cell = snntorch.Leaky(beta=0.5, threshold=1.0, spike_grad=snn_surrogate.atan(alpha=2.0),
                              reset_mechanism="zero", learn_beta=kind == "plif", reset_delay=False).to(device)

        def run(x):
            mem, spikes = cell.init_leaky(), []
            for x_t in x:
                spk, mem = cell(x_t, mem)
                spikes.append(spk)
            return torch.stack(spikes)
        return run
    from norse.torch import LIFBoxCell, LIFBoxParameters

    tau_mem_inv = torch.tensor(500.0)  # dt = 1e-3: dt / tau_mem = 0.5
    tau_mem_inv = tau_mem_inv.to(device)
    cell = LIFBoxCell(LIFBoxParameters(tau_mem_inv=torch.nn.Parameter(tau_mem_inv) if kind == "plif" else tau_mem_inv,
                                       v_th=torch.tensor(1.0, device=device),
                                       v_reset=torch.tensor(0.0, device=device)))

    def run(x):
        state, spikes = None, []
        for x_t in x:
            spk, state = cell(x_t, state)
            spikes.append(spk)
        return torch.stack(spikes)
    return run


def measure(impl: str, kind: str, T: int, repeats: int, device: str = "cpu", what: str = "time") -> dict:
    torch.manual_seed(0)
    x = (torch.randn(SHAPES[T]) + 0.5).to(device).requires_grad_()
    grad = torch.randn(SHAPES[T]).to(device)
    op = make_op(impl, kind, device)
    cuda = device == "cuda"

    def step():
        op(x).backward(grad)
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up (and compile): loads code and fills caches, which must not count as memory
    x.grad = None
    if what != "time":  # but the output blocks our CPU kernels keep for the next call do (kernels/buffers.py)
        buffers.clear()
    if what == "time":
        def timed():
            x.grad = None
            step()
        # page faults per call beside the time: first touch of freshly mapped memory costs more than the kernels
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        ms = 1000 * median_time(timed, repeats)
        return {"ms": ms, "page_faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats}
    if cuda:  # the allocator's peak over one call
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return {"peak_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}
    return {"peak_mb": cpu_peak_mb(step)}  # CPU: glibc's bytes in use, sampled during one call


def bandwidth_gbs(numel: int, repeats: int, device: str = "cpu") -> float:
    a, b = torch.randn(numel, device=device), torch.empty(numel, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    seconds = median_time(lambda: (torch.add(a, 1.0, out=b), sync()), max(repeats, 9))
    return 2 * a.element_size() * numel / seconds / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS, metavar="IMPL")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--one", nargs=4, metavar=("IMPL", "KIND", "T", "WHAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child process: one measurement, as JSON on stdout
        impl, kind, T, what = args.one
        print(json.dumps(measure(impl, kind, int(T), args.repeats, args.device, what)))
        return

    numel = SHAPES[8][0] * SHAPES[8][1] * 128 * 16 * 16
    gbs = bandwidth_gbs(numel, args.repeats, args.device)
    bound_ms = 5 * 4 * numel / (gbs * 1e9) * 1000
    print(f"memory bandwidth (torch.add out=, {4 * numel / 2**20:.0f} MiB tensors): {gbs:.1f} GB/s; "
          f"bound for the op (5 float32 tensors): {bound_ms:.1f} ms")
    results = {"device": args.device, "bandwidth_gbs": gbs, "bound_ms": bound_ms, "threads": torch.get_num_threads(),
               "rows": []}
    for kind in ("lif", "plif"):
        for T in SHAPES:
            row = {"neuron": kind, "shape": list(SHAPES[T])}
            for impl in args.impls:
                row[impl] = {}
                for what in ("time", "memory"):
                    proc = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--device",
                                           args.device, "--one", impl, kind, str(T), what],
                                          capture_output=True, text=True)
                    if proc.returncode != 0:
                        sys.exit(f"{impl} {kind} T={T} ({what}) failed:\n{proc.stderr[-2000:]}")
                    row[impl].update(json.loads(proc.stdout.strip().splitlines()[-1]))
            results["rows"].append(row)
            sj = row.get("SpikingJelly")
            print(f"\n{kind.upper()} {row['shape']}, forward + backward")
            print(f"  {'':17s} {'ms':>8s} {'faults':>8s} {'peak MB':>8s} {'SJ/this time':>13s} {'this/SJ mem':>12s} "
                  f"{'this/bound':>11s}")
            for impl in args.impls:
                r = row[impl]
                vs_sj = (f"{sj['ms'] / r['ms']:12.2f}x {r['peak_mb'] / max(sj['peak_mb'], 1e-9):11.2f}x"
                         if sj else f"{'-':>13s} {'-':>12s}")
                print(f"  {impl:17s} {r['ms']:8.1f} {r['page_faults']:8.0f} {r['peak_mb']:8.0f} {vs_sj} "
                      f"{r['ms'] / bound_ms:10.2f}x")
    print()
    write_results("neuron" if args.device == "cpu" else f"neuron_{args.device}", results)


if __name__ == "__main__":
    main()
