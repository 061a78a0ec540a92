"""The CUDA path on a GPU: the Triton kernel on the hardware (the check tests/test_fused.py runs in Triton's
interpreter here), the neuron modules and the default convnet on CUDA against the same on the CPU, and AMP with
float16. Skipped where no CUDA device is present; `make gpu-check` (bench/gpu_check.py) runs them on a GPU machine."""

import subprocess
import sys

import pytest
import torch

from test_fused import TRITON_CHECK

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_the_triton_kernel_on_the_gpu():
    """Every surrogate, each leak form, hard and soft reset, detach_reset both ways, float32 and float64, and one
    input fed at every step, against the reference: what the interpreter checks on the CPU, compiled for the GPU."""
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK, "cuda"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("kind, params", [("LIF", {"tau": 2.0}), ("PLIF", {"tau0": 2.0}),
                                          ("ALIF", {"tau": 2.0, "tau_adapt": 20.0})])
def test_neuron_modules_on_cuda_match_the_cpu(kind, params):
    """The fused op on CUDA (Triton) and on the CPU (the C kernel), and ALIF's step by step definition on both: the
    same spikes, the same gradients."""
    import snnexp.nn.neurons as neurons
    from snnexp.nn.surrogate import ATan

    torch.manual_seed(0)
    x = torch.rand(8, 16, 4, 10, 10, dtype=torch.float64) * 3 - 0.5
    g = torch.randn_like(x)
    grads, outs = [], []
    for device in ("cpu", "cuda"):
        module = getattr(neurons, kind)(surrogate=ATan(), **params).to(device=device, dtype=torch.float64)
        xd = x.to(device).requires_grad_()
        out = module(xd)
        out.backward(g.to(device))
        outs.append(out.cpu())
        grads.append([xd.grad.cpu(), *(p.grad.cpu() for p in module.parameters())])
    assert torch.equal(outs[0], outs[1]) and 0 < outs[0].sum() < outs[0].numel()
    for cpu, cuda in zip(*grads):
        torch.testing.assert_close(cuda, cpu, rtol=1e-9, atol=1e-11)


def _convnet(device):
    from functools import partial

    from snnexp.nn.models import SpecNet
    from snnexp.nn.neurons import PLIF
    from snnexp.nn.norms import BatchNormOverTime
    from snnexp.nn.surrogate import ATan

    torch.manual_seed(0)
    neuron = partial(PLIF, tau0=2.0, surrogate=ATan())
    return SpecNet("{c32k3s1-BN-SN-MPk2s2}*2-FC100-SN-APk10s10", [1, 28, 28], 10, neuron,
                   BatchNormOverTime).to(device)


def test_the_default_convnet_on_cuda_gives_the_cpus_loss_and_gradients():
    """The joined BN-SN-MP ops of the CPU kernels do not apply on CUDA: the layers run apart there. Same weights,
    same batch: the same first-step loss and gradients (float32; a spike may flip where summation orders differ)."""
    x = torch.rand(4, 16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    results = []
    for device in ("cpu", "cuda"):
        model = _convnet(device)
        loss = torch.nn.functional.cross_entropy(model(x.to(device)).mean(0), y.to(device))
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten().cpu() for p in model.parameters()])))
    (cpu_loss, cpu_grad), (cuda_loss, cuda_grad) = results
    assert abs(cuda_loss - cpu_loss) < 1e-3 * abs(cpu_loss)
    assert (cuda_grad - cpu_grad).norm() < 1e-2 * cpu_grad.norm()


def test_amp_float16_trains_the_convnet_on_cuda():
    """trainer.amp on CUDA: float16 autocast with a gradient scaler, as the engine runs it; the loss falls on a
    batch learned for 30 steps and stays finite."""
    model = _convnet("cuda")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.rand(4, 16, 1, 28, 28, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x).float().mean(0), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.8 * losses[0]
