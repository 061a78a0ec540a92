"""Training step benchmark (issue 5, benchmark 2): samples/s of forward + backward + Adam, ours against
SpikingJelly 2.0 built the same way, in the same process, on the same weights and inputs.

Networks (PLIF, tau0 2, atan alpha 2, detached hard reset to 0, BN on input currents, MSE of the output
rate against the one-hot label, Adam lr 1e-3):
- convnet: {c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10, T=4, batch 64, 1x28x28 images repeated over T
- nmnist:  the PLIF paper's N-MNIST net {c128k3s1-BN-SN-MPk2s2}*2-DP-FC2048-SN-DP-FC100-SN-APk10s10, T=10,
           batch 16, 2x34x34 binary event frames
- dvs_cifar10: the PLIF paper's CIFAR10-DVS net {c128k3s1-BN-SN-MPk2s2}*4-DP-FC512-SN-DP-FC100-SN-APk10s10,
           T=20, batch 4, 2x128x128 binary event frames

The SpikingJelly network is translated from ours layer by layer (SeqToANNContainer around the same conv,
linear and pooling modules, with PyTorch's nn.MaxPool2d for ours, its BatchNorm2d/1d and ParametricLIFNode in
step_mode='m', Flatten, Dropout) with our weights copied in, and the first step's loss is checked equal before
anything is timed (dropout off for that one step: the two draw their masks differently). Then the variants take
turns, --repeats rounds of --steps steps each after warm-up steps (which also compile, for torch.compile); the
figure is the median round. Prints a table and writes bench/results/train_step.json.

"snnexp default" is what `snnexp train` runs: channels_last, direct coding's input once, each BN-SN-MPkXsX block
as one op (snnexp.ops.normalised, snnexp.ops.pooled) and fused Adam (conf/optim/adam.yaml); "default, torch
pool" the same with PyTorch's max pooling (so the pool runs apart); "default, torch Adam" with PyTorch's default
Adam, the one SpikingJelly's variants use; "default, BN apart" with each BN run as its own layer.
"""

import snnexp  # noqa: F401  first, before torch: the OpenMP wait policy `snnexp train` runs with

# isort: split

import argparse
import copy
import statistics
import time
from functools import partial

import torch
from torch import nn

from common import write_results
from snnexp.nn import fusion
from snnexp.nn.fusion import fuse_blocks
from snnexp.nn.layers import SeqDropout, SeqFlatten, SeqToANN
from snnexp.nn.losses import MSERate
from snnexp.nn.models import SpecNet
from snnexp.nn.neurons import PLIF
from snnexp.nn.norms import BatchNormOverTime
from snnexp.nn.surrogate import ATan

NETS = {
    "convnet": dict(spec="{c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10", T=4, batch=64, input=(1, 28, 28),
                    steps=5, repeats=5),
    "nmnist": dict(spec="{c128k3s1-BN-SN-MPk2s2}*2-DP-FC2048-SN-DP-FC100-SN-APk10s10", T=10, batch=16,
                   input=(2, 34, 34), steps=2, repeats=3),
    "dvs_cifar10": dict(spec="{c128k3s1-BN-SN-MPk2s2}*4-DP-FC512-SN-DP-FC100-SN-APk10s10", T=20, batch=4,
                        input=(2, 128, 128), steps=1, repeats=3),
}


def ours(spec, input_shape, backend="fused"):
    neuron = partial(PLIF, tau0=2.0, detach_reset=True, surrogate=ATan(2.0), backend=backend)
    return SpecNet(spec, input_shape, 10, neuron, BatchNormOverTime, dropout=0.5)


def spikingjelly_twin(model: nn.Module) -> nn.Module:
    """The same network in SpikingJelly's layers, with our weights."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    layers = []
    for m in model:
        if isinstance(m, SeqToANN):
            layers.append(layer.SeqToANNContainer(_torch_module(m.module)))
        elif isinstance(m, BatchNormOverTime):
            bn = (layer.BatchNorm2d if m.weight.dim() == 1 and layers and _last_was_conv(model, m)
                  else layer.BatchNorm1d)(m.num_features, step_mode="m")
            bn.load_state_dict(m.state_dict())
            layers.append(bn)
        elif isinstance(m, PLIF):
            node = neuron.ParametricLIFNode(init_tau=2.0, detach_reset=True, v_reset=0.0, v_threshold=1.0,
                                            surrogate_function=surrogate.ATan(alpha=2.0), step_mode="m")
            node.w.data.copy_(m.w.data)
            layers.append(node)
        elif isinstance(m, SeqFlatten):
            layers.append(layer.Flatten(step_mode="m"))
        elif isinstance(m, SeqDropout):
            layers.append(layer.Dropout(m.p, step_mode="m"))
        else:
            raise TypeError(f"no SpikingJelly twin for {type(m).__name__}")
    return nn.Sequential(*layers)


def _torch_module(module: nn.Module) -> nn.Module:
    """A copy of a conv, linear or pooling module, with PyTorch's max pooling for ours (snnexp.nn.pooling)."""
    if isinstance(module, nn.MaxPool2d):
        return nn.MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                            ceil_mode=module.ceil_mode)
    return copy.deepcopy(module)


def _last_was_conv(model, bn):
    """Whether the BN follows a conv (2-d BN) rather than a linear layer (1-d BN)."""
    before = None
    for m in model:
        if m is bn:
            return isinstance(before, nn.Conv2d)
        if isinstance(m, SeqToANN) and isinstance(m.module, (nn.Conv2d, nn.Linear)):
            before = m.module
    raise ValueError("BN not in model")


def torch_pooling(model: nn.Module) -> nn.Module:
    """model with PyTorch's max pooling in place of ours (snnexp.nn.pooling): what our pooling kernel gains."""
    for m in model:
        if isinstance(m, SeqToANN) and isinstance(m.module, nn.MaxPool2d):
            m.module = _torch_module(m.module)
    return model


class _BatchNormApart(BatchNormOverTime):
    """Our BN over time, run as its own layer: snnexp.nn.fusion joins only BatchNormOverTime's own forward with
    the neuron after it."""

    def forward(self, x_seq, steps: int = 0):
        return super().forward(x_seq, steps)


def bn_apart(model: nn.Module) -> nn.Module:
    """model with every BN run apart from the neuron after it: what joining them (snnexp.ops.normalised) gains."""
    for m in model:
        if type(m) is BatchNormOverTime:
            m.__class__ = _BatchNormApart
    return model


def reset_sj(net):
    from spikingjelly.activation_based import functional

    functional.reset_net(net)


class Variant:
    """direct: an image input goes in as direct coding gives it, one [B, ...] view repeated over T (stride 0), so
    the layers before the first neuron run once (snnexp.nn.layers); else as T materialised copies. Our networks are
    built as `snnexp train` builds them on the CPU, with their BN-SN-MP blocks fused (snnexp.nn.fusion)."""

    def __init__(self, name, net, autocast=False, channels_last=False, compile=False, spikingjelly=False,
                 direct=False, fused_adam=False, device="cpu"):
        self.name, self.autocast, self.channels_last, self.sj = name, autocast, channels_last, spikingjelly
        self.direct, self.device = direct, device
        net = net.to(device)
        if not spikingjelly and device == "cpu":
            fuse_blocks(net)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.model = net
        self.net = torch.compile(net, dynamic=False) if compile else net
        # fused: conf/optim/adam.yaml's default; the peers' variants use PyTorch's default Adam, as their users do
        self.opt = torch.optim.Adam(fusion.parameters(net), lr=1e-3, fused=fused_adam)
        self.loss_fn = MSERate()

    def step(self, x_seq, y):
        if self.sj:
            reset_sj(self.model)
        if self.direct and x_seq.shape[2] == 1:  # images (the convnet's), not event frames
            x_seq = x_seq[0].unsqueeze(0).expand(x_seq.shape)
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.autocast):
            spikes = self.net(x_seq)
        loss = self.loss_fn(spikes.float().mean(0), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.grad_norm = torch.norm(torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None]))
        self.opt.step()
        return loss.item()


def inputs(cfg, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    T, B = cfg["T"], cfg["batch"]
    if cfg["input"][0] == 1:  # images, directly encoded: the same image at every step
        x = torch.rand(B, *cfg["input"], generator=g).unsqueeze(0).repeat(T, 1, 1, 1, 1)
    else:  # binary event frames
        x = (torch.rand(T, B, *cfg["input"], generator=g) < 0.1).float()
    return x.to(device), torch.randint(0, 10, (B,), generator=g).to(device)


def run_net(name, cfg, args):
    steps, repeats = args.steps or cfg["steps"], args.repeats or cfg["repeats"]
    torch.manual_seed(0)
    base = ours(cfg["spec"], cfg["input"])
    V = partial(Variant, device=args.device)
    variants = [  # the first is the reference of the first-step check; the second what `snnexp train` runs
        V("snnexp NCHW, T copies", copy.deepcopy(base)),
        V("snnexp default", copy.deepcopy(base), channels_last=True, direct=True, fused_adam=True),
        V("snnexp default, torch pool", torch_pooling(copy.deepcopy(base)), channels_last=True, direct=True,
          fused_adam=True),
        V("snnexp default, torch Adam", copy.deepcopy(base), channels_last=True, direct=True),
        V("snnexp default, BN apart", bn_apart(copy.deepcopy(base)), channels_last=True, direct=True,
          fused_adam=True),
        V("snnexp torch.compile", copy.deepcopy(base), compile=True),
        V("snnexp reference neurons", ours(cfg["spec"], cfg["input"], "reference")),
        V("SpikingJelly", spikingjelly_twin(base), spikingjelly=True),
        V("snnexp bf16", copy.deepcopy(base), autocast=True),
        V("SpikingJelly bf16", spikingjelly_twin(base), autocast=True, spikingjelly=True),
    ]
    next(v for v in variants if v.name == "snnexp reference neurons").model.load_state_dict(base.state_dict())
    if args.variants:  # the first stays: it is the reference of the first-step check
        variants = variants[:1] + [v for v in variants[1:] if v.name in args.variants or v.name == "SpikingJelly"]

    # the same loss and gradient norm on the first step from the same weights (dropout off for it; later steps
    # drift apart: a rounding difference flips a spike, and Adam's first updates are lr-sized whatever the size
    # of the gradient)
    dropouts = [m for v in variants for m in v.model.modules() if "Dropout" in type(m).__name__]  # SJ's too
    saved_p = [m.p for m in dropouts]
    for m in dropouts:
        m.p = 0.0
    x, y = inputs(cfg, 1000, args.device)
    first = {v.name: [(v.step(x, y), v.grad_norm.item())] for v in variants}
    for m, p in zip(dropouts, saved_p):
        m.p = p
    ref = first[variants[0].name]
    for v in variants:
        # float32: the summation order differs (channels_last, compile, direct input once), and where that moves a
        # potential across the threshold a spike flips: the loss to 1e-3, the gradient norm to 1e-2 (the CIFAR10-DVS
        # net's differed by 3e-3 with channels_last); bfloat16 to 5e-2
        tol, gtol = (5e-2, 5e-2) if v.autocast else (1e-3, 1e-2)
        for (loss, gn), (loss_ref, gn_ref) in zip(first[v.name], ref):
            if abs(loss - loss_ref) > tol * abs(loss_ref) or abs(gn - gn_ref) > gtol * abs(gn_ref):
                raise SystemExit(f"{name}: {v.name} gives loss {loss:.6f} / gradient norm {gn:.6f} where snnexp "
                                 f"gives {loss_ref:.6f} / {gn_ref:.6f}")
    print(f"\n{name}: the same first-step loss and gradient norm for all (float32 to 1e-3 / 1e-2, bf16 to "
          f"5e-2): " + ", ".join(f"{loss:.5f}/{gn:.5f}" for loss, gn in ref))

    peak_mb = {}
    for v in variants:  # warm-up (torch.compile compiles here); on CUDA each variant's peak memory over it
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for s in range(args.warmup):
            v.step(*inputs(cfg, 1 + s, args.device))
        if args.device == "cuda":
            peak_mb[v.name] = torch.cuda.max_memory_allocated() / 2**20
    rounds = {v.name: [] for v in variants}
    for r in range(repeats):  # variants take turns, so that drift in the machine's speed hits all alike
        batches = [inputs(cfg, 100 + r * steps + s, args.device) for s in range(steps)]
        for v in variants:
            start = time.perf_counter()
            for x, y in batches:
                v.step(x, y)
            rounds[v.name].append(cfg["batch"] * steps / (time.perf_counter() - start))
    rows = {n: statistics.median(r) for n, r in rounds.items()}
    sj, sj16 = rows["SpikingJelly"], rows.get("SpikingJelly bf16", float("nan"))
    print(f"  T={cfg['T']} batch {cfg['batch']} input {list(cfg['input'])}: samples/s, median of {repeats} "
          f"rounds of {steps} steps")
    for n, sps in rows.items():
        base_sj = sj16 if n.endswith("bf16") else sj
        print(f"  {n:26s} {sps:8.2f}   x{sps / base_sj:.2f} vs SpikingJelly{' bf16' if n.endswith('bf16') else ''}")
    return {"net": name, **{k: v for k, v in cfg.items()}, "device": args.device, "first_step_loss": first,
            "samples_per_s": rows, "rounds": rounds, "peak_mb": peak_mb}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--steps", type=int, help="steps per round (default: the net's, 5 or 2)")
    ap.add_argument("--repeats", type=int, help="rounds (default: the net's, 5 or 3)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU (bench/gpu_check.py)")
    ap.add_argument("--variants", nargs="+", help="time only these variants (and the first, the reference; "
                    "SpikingJelly is always one)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    name = "train_step" if args.nets == list(NETS) else "train_step_" + "_".join(args.nets)
    name += "_cuda" if args.device == "cuda" else ""
    write_results(name, [run_net(n, NETS[n], args) for n in args.nets])


if __name__ == "__main__":
    main()
