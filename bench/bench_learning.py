"""Learning rule benchmark (issue 34): the peak memory and the time of ONE training step of the PLIF paper's
N-MNIST network {c128k3s1-BN-SN-MPk2s2}*2-DP-FC2048-SN-DP-FC100-SN-APk10s10 (batch 16, binary event frames
[T, 16, 2, 34, 34] drawn with p = 0.05, random labels) at T = 4, 16 and 64, on this CPU, under:

- bptt:          `learning=bptt`, backpropagation through time: every step's activations kept for the backward
- sltt:          `learning=sltt`, the membrane's past detached: the backward still runs over the whole sequence
- ottt:          `learning=ottt`, one time step at a time, each step's loss backpropagated at once, weight
                 gradients with the presynaptic trace: memory should not grow with T
- SpikingJelly:  SpikingJelly 2.0's OTTT, the same network built as its model/spiking_vggws_ottt.py builds
                 OTTT's VGG (layer.OTTTSequential of WSConv2d, OTTTLIFNode in step_mode='s', Scale(2.74) after
                 each conv's neuron, MaxPool2d, Flatten, Dropout, Linear), trained as its OTTT example does: per
                 time step a forward of that step and a backward of its loss / T, one optimizer step per batch

All ours with `norm=sws` (scaled weight standardisation in place of BN: OTTT refuses BN-type norms) and the
config's defaults otherwise, as `snnexp train dataset=nmnist ...` would run them (PLIF, MSE of the output rate,
fused Adam, channels_last, joined blocks); SpikingJelly's LIF with tau 2, hard reset to 0, its default sigmoid
surrogate, the same MSE loss and Adam. A step of ours is `snnexp.train.epoch._learn` on a Run put together
without a dataset (build_model, the learning rule's prepare, as build_run does), so it is the step `snnexp train`
takes: zero_grad, forward, backward, gradient norms, optimizer step.

Each (rule, T) runs in a fresh process of its own (this script with a hidden --one): one warm-up step (which
also allocates Adam's state), then the peak memory of one step (common.cpu_peak_mb: glibc's bytes in use,
sampled every 0.2 ms, above what was in use before the step), then the median time of --repeats steps (1 from
T = 16, where a step takes seconds). Targets: OTTT's peak at T = 64 within 1.3x of its peak at T = 4,
and our OTTT's peak over SpikingJelly's at each T. Prints a table and writes bench/results/learning.json.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

from common import cpu_peak_mb, median_time, write_results

SPEC = "{c128k3s1-BN-SN-MPk2s2}*2-DP-FC2048-SN-DP-FC100-SN-APk10s10"
RULES = ["bptt", "sltt", "ottt", "SpikingJelly"]
TS = [4, 16, 64]
BATCH, SHAPE, CLASSES = 16, (2, 34, 34), 10
FLAT_TARGET = 1.3


def batch(T: int):
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((BATCH, T, *SHAPE), 0.05), generator=g)  # a sequence dataset's [B, T, ...]
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return x, y


def ours(rule: str, T: int):
    """One training step of `snnexp train ... learning=<rule>`, as a function of no arguments."""
    from hydra.utils import instantiate

    from snnexp.nn import fusion
    from snnexp.train.build import Run, build_model
    from snnexp.train.checkpoint import EpochTotals
    from snnexp.train.epoch import _learn
    from snnexp.train.learning import learning_rule
    from snnexp.train.loop import new_train_state

    cfg = snnexp.compose(["dataset=nmnist", f"model.spec='{SPEC}'", "norm=sws", f"learning={rule}",
                          f"trainer.T={T}", f"trainer.batch_size={BATCH}", "trainer.progress=false"])
    assert cfg.dataset.T == T
    device = torch.device("cpu")
    model = build_model(cfg, SHAPE, CLASSES).to(device)
    learning = learning_rule(cfg)
    learning.prepare(model)  # as build_run: before joining
    if cfg.trainer.join_layers:
        fusion.fuse_blocks(model)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    splits = SimpleNamespace(sequence=True, input_shape=SHAPE, num_classes=CLASSES, train=[], test=[], val=None)
    run = Run(cfg, splits, instantiate(cfg.encoder), model, instantiate(cfg.readout), instantiate(cfg.loss), device,
              learning=learning)
    state = new_train_state(run)
    state.totals = EpochTotals()
    model.train()
    x, y = batch(T)

    def step():
        assert _learn(run, state, x, y, 1) is not None
    return step


class Scale(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class Vote(nn.Module):
    """APk10s10 on the 100 output neurons: the mean of each class's 10."""

    def forward(self, x):
        return x.unflatten(1, (CLASSES, -1)).mean(2)


def spikingjelly(T: int):
    """One OTTT training step of SpikingJelly 2.0 on the same network, as its OTTT example trains."""
    import torch.nn.functional as F
    from spikingjelly.activation_based import functional, layer, neuron

    def lif():
        return neuron.OTTTLIFNode(tau=2.0, decay_input=True, v_reset=0.0, step_mode="s")

    net = layer.OTTTSequential(
        layer.WSConv2d(2, 128, 3, padding=1), lif(), Scale(2.74), layer.MaxPool2d(2, 2),
        layer.WSConv2d(128, 128, 3, padding=1), lif(), Scale(2.74), layer.MaxPool2d(2, 2),
        layer.Flatten(), layer.Dropout(0.5), layer.Linear(128 * 8 * 8, 2048), lif(),
        layer.Dropout(0.5), layer.Linear(2048, 100), lif(), Vote(),
    ).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = batch(T)
    x_seq, target = x.transpose(0, 1).contiguous(), F.one_hot(y, CLASSES).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        for t in range(T):
            out = net(x_seq[t])
            out = out[0] if isinstance(out, list) else out  # [spike, trace] in training: the spike
            (F.mse_loss(out, target) / T).backward()
        optimizer.step()
        functional.reset_net(net)
    return step


def measure(rule: str, T: int, repeats: int) -> dict:
    step = spikingjelly(T) if rule == "SpikingJelly" else ours(rule, T)
    start = time.perf_counter()
    step()  # warm-up: Adam's state, the ops' first calls
    warmup = time.perf_counter() - start
    peak = cpu_peak_mb(step)
    seconds = median_time(step, 1 if T >= 16 else repeats)
    return {"rule": rule, "T": T, "ms": 1000 * seconds, "peak_mb": peak, "warmup_ms": 1000 * warmup}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rules", nargs="+", default=RULES, choices=RULES, metavar="RULE")
    ap.add_argument("--T", nargs="+", type=int, default=TS)
    ap.add_argument("--one", nargs=2, metavar=("RULE", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a child process: one measurement, as JSON on stdout
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return
    results = []
    for rule in args.rules:
        for T in args.T:
            proc = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--one", rule, str(T)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{rule} T={T} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {rule} T={T}: {results[-1]['ms']:.0f} ms, {results[-1]['peak_mb']:.1f} MB", flush=True)
    peaks = {(r["rule"], r["T"]): r["peak_mb"] for r in results}
    print(f"\none training step, N-MNIST net, batch {BATCH}, {torch.get_num_threads()} threads\n")
    print(f"{'rule':<13} {'T':>3} {'ms/step':>9} {'peak MB':>9} {'/ T=4':>7} {'ours/SJ':>8}")
    for r in results:
        base = peaks.get((r["rule"], min(args.T)))
        r["peak_over_first_T"] = r["peak_mb"] / base if base else None
        sj = peaks.get(("SpikingJelly", r["T"]))
        r["ours_over_spikingjelly"] = r["peak_mb"] / sj if r["rule"] == "ottt" and sj else None
        ratio = f"{r['peak_over_first_T']:.2f}" if r["peak_over_first_T"] else "-"
        vs = f"{r['ours_over_spikingjelly']:.2f}" if r["ours_over_spikingjelly"] else "-"
        print(f"{r['rule']:<13} {r['T']:>3} {r['ms']:>9.0f} {r['peak_mb']:>9.1f} {ratio:>7} {vs:>8}")
    first, last = min(args.T), max(args.T)
    for rule in ("ottt", "SpikingJelly"):
        if (rule, first) in peaks and (rule, last) in peaks and first != last:
            ratio = peaks[(rule, last)] / peaks[(rule, first)]
            verdict = "flat" if ratio <= FLAT_TARGET else "NOT flat"
            print(f"{rule}: peak at T={last} / T={first} = {ratio:.2f} (target <= {FLAT_TARGET}: {verdict})")
    write_results("learning", {"batch": BATCH, "spec": SPEC, "threads": torch.get_num_threads(),
                               "results": results})


if __name__ == "__main__":
    main()
