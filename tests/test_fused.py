"""The fused multi-step LIF / IF / PLIF op against the reference definition (functional.lif_multistep, whose
gradient autograd derives op by op): the same spikes, and the same input and 1/tau gradients, in float64 to
1e-10 and in float32 to float32 tolerance, for every surrogate, hard and soft reset, detach_reset and
decay_input both ways, fixed and learnable tau.

(torch.autograd.gradcheck does not apply as such: the forward is a Heaviside step, whose finite differences
are 0; the surrogate gradient is a chosen stand-in, and autograd through the reference is its definition.)"""

import itertools
import zlib

import pytest
import torch

from snnexp.nn.neurons.functional import lif_multistep_reference as lif_multistep
from snnexp.nn.surrogate import ATan, FastSigmoid, Rect, Sigmoid, Triangle
from snnexp.ops.fused import lif_multistep_fused

SURROGATES = {"atan": ATan, "sigmoid": Sigmoid, "rect": Rect, "fast_sigmoid": FastSigmoid, "triangle": Triangle}
CASES = [
    case for case in itertools.product(
        ["if", "lif", "plif"], [0.0, -0.3, None], [True, False], [True, False], sorted(SURROGATES), [1, 3, 8])
    if not (case[0] == "if" and not case[3])  # IF has no decay_input
    and (case[4] == "atan" or case[5] == 3)  # every surrogate on one T keeps this fast
]


def run_both(kind, v_reset, detach, decay, sg, T, dtype, shape=(3, 2, 5), ours_fn=None):
    torch.manual_seed(zlib.crc32(repr((kind, v_reset, detach, decay, sg, T)).encode()))
    x = (torch.rand(T, *shape, dtype=dtype) * 4.0 - 0.5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    weights = torch.randn(T, *shape, dtype=dtype)  # a loss that weighs every spike differently
    surrogate = SURROGATES[sg]()
    w = torch.tensor(0.3, dtype=dtype, requires_grad=True)  # PLIF: 1/tau = sigmoid(w)
    w_ref = w.detach().clone().requires_grad_()
    tau_inv = {"if": (None, None), "lif": (0.4, 0.4), "plif": (torch.sigmoid(w), torch.sigmoid(w_ref))}[kind]
    common = dict(v_threshold=1.0, v_reset=v_reset, decay_input=decay, detach_reset=detach)
    ours = (ours_fn or lif_multistep_fused)(x, tau_inv[0], surrogate, **common)
    ref = lif_multistep(x_ref, tau_inv[1], surrogate, **common)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    return ours, ref, (x.grad, x_ref.grad), (w.grad, w_ref.grad)


@pytest.mark.parametrize("kind,v_reset,detach,decay,sg,T", CASES)
def test_fused_equals_the_reference_in_float64(kind, v_reset, detach, decay, sg, T):
    ours, ref, (gx, gx_ref), (gw, gw_ref) = run_both(kind, v_reset, detach, decay, sg, T, torch.float64)
    assert torch.equal(ours, ref)
    assert 0 < ref.mean() < 1 or T == 1  # the case exercises firing and not firing
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    if kind == "plif":
        torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)
        assert gw_ref.abs() > 0 or (T == 1 and not decay)  # from rest, V[t-1] - V_reset = 0 at t = 1


@pytest.mark.parametrize("kind,v_reset,detach,decay", [
    (k, r, d, i) for k, r, d, i in itertools.product(["if", "lif", "plif"], [0.0, None], [True, False], [True, False])
    if not (k == "if" and not i)])
def test_fused_equals_the_reference_in_float32(kind, v_reset, detach, decay):
    ours, ref, (gx, gx_ref), (gw, gw_ref) = run_both(kind, v_reset, detach, decay, "atan", 8, torch.float32,
                                                   shape=(4, 8, 6, 6))
    assert torch.equal(ours, ref)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    if kind == "plif":
        torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-5)


def test_backward_keeps_only_the_input():
    """Nothing is saved but X (which the caller holds anyway) and 1/tau: no H, no spikes (and no BN: None)."""
    x = torch.rand(4, 2, 3, requires_grad=True)
    w = torch.tensor(0.0, requires_grad=True)
    out = lif_multistep_fused(x, torch.sigmoid(w), ATan())
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    assert len(saved) == 2
    assert saved[0].data_ptr() == x.data_ptr() and saved[1].dim() == 0


@pytest.mark.parametrize("kind", ["lif", "plif"])
@pytest.mark.parametrize("T, n, detach, dtype, tol, tau_tol", [
    # more than one thread's share (kernels/cpu.py), and not a multiple of the kernels' block of neurons
    (3, 70001, False, torch.float32, (1e-5, 1e-6), (1e-4, 1e-3)),
    # long T: the backward takes fewer neurons a block, so that their H and V over time stay within a bounded
    # scratch (lif_cpu.c, backward_block_size: 1664 of them here); N = 5000 spans several such blocks
    (300, 5000, True, torch.float64, (1e-10, 1e-12), (1e-10, 1e-12)),
], ids=["threads-and-blocks", "long-T-smaller-blocks"])
def test_sizes_that_split_the_work(kind, T, n, detach, dtype, tol, tau_tol):
    ours, ref, (gx, gx_ref), (gw, gw_ref) = run_both(kind, 0.0, detach, True, "atan", T, dtype, shape=(n,))
    assert torch.equal(ours, ref)
    torch.testing.assert_close(gx, gx_ref, rtol=tol[0], atol=tol[1])
    if kind == "plif":
        torch.testing.assert_close(gw, gw_ref, rtol=tau_tol[0], atol=tau_tol[1])


def test_channels_last_input_is_taken_as_it_is():
    """A [T, B, C, H, W] sequence whose frames are channels_last (what a channels_last conv gives) runs
    without a copy into NCHW order; the spikes come back in the same memory order."""
    T, B, C, H, W = 3, 2, 4, 5, 6
    x = (torch.rand(T, B, H, W, C) * 3 - 0.5).permute(0, 1, 4, 2, 3).requires_grad_()  # channels_last frames
    x_ref = x.detach().contiguous().requires_grad_()
    weights = torch.randn(T, B, C, H, W)
    ours = lif_multistep_fused(x, 0.5, ATan())
    ref = lif_multistep(x_ref, 0.5, ATan())
    assert ours.stride() == x.stride()
    assert torch.equal(ours, ref)
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_bfloat16_input_widens_to_float32():
    x = (torch.rand(4, 3, 50) * 3 - 0.5).to(torch.bfloat16).requires_grad_()
    x32 = x.detach().float().requires_grad_()
    ours = lif_multistep_fused(x, 0.5, ATan())
    ref = lif_multistep(x32, 0.5, ATan())
    assert ours.dtype == torch.bfloat16 and torch.equal(ours.float(), ref)
    ours.sum().backward()
    ref.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.float(), x32.grad, rtol=1e-2, atol=1e-2)


def test_the_custom_op_passes_torch_opcheck():
    """torch.library.opcheck: schema, fake (meta) implementation, autograd registration and AOT dispatch
    agree with the real op, which is what torch.compile relies on."""
    from snnexp.ops.fused import _lif_op

    x = (torch.rand(3, 2, 4, dtype=torch.float64) * 3 - 0.5).requires_grad_()
    tau = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    one_step = (torch.rand(2, 4, dtype=torch.float64) * 3 - 0.5).requires_grad_()
    norm = torch.stack([torch.rand(4) + 0.5, torch.randn(4), torch.randn(4), torch.rand(4) + 0.5]).double()
    norm.requires_grad_()  # a BN before the neurons: weight, bias, mean, invstd of 4 channels (ops/normalised.py)
    for args in [(x, tau, None, "decay_input", 1.0, 0.0, False, True, "atan", 2.0, 0.0, 0, 1, False),
                 (x, tau, None, "plain", 1.0, 0.0, True, False, "rect", 1.0, 1.0, 0, 1, False),
                 (one_step, tau, None, "decay_input", 1.0, 0.0, False, True, "atan", 2.0, 0.0, 5, 1, False),  # steps=5
                 (x, tau, norm, "decay_input", 1.0, 0.0, False, True, "atan", 2.0, 0.0, 0, 1, True),
                 (one_step, tau, norm, "decay_input", 1.0, 0.0, False, True, "atan", 2.0, 0.0, 5, 1, False)]:
        torch.library.opcheck(_lif_op, args)


def out_name_of_the_kernel():
    return lif_multistep_fused(torch.rand(2, 3, requires_grad=True), 0.5, ATan()).grad_fn.name()


def test_without_a_kernel_the_neurons_compute_the_reference(monkeypatch):
    """No C compiler: one warning, then the same spikes and gradients through the reference (nn.neurons.lif_multistep,
    what the neuron modules run); the op itself says that it has no kernel here and what runs instead."""
    from snnexp.nn import neurons
    from snnexp.ops import fused
    from snnexp.ops.kernels import cpu

    kernel_name = out_name_of_the_kernel()
    monkeypatch.setattr(cpu, "available", lambda: "no C compiler found (set CC, or install gcc)")
    monkeypatch.setattr(fused, "_UNAVAILABLE", {})
    with pytest.warns(RuntimeWarning, match="no C compiler found"):
        ours, ref, (gx, gx_ref), (gw, gw_ref) = run_both("plif", 0.0, False, True, "atan", 4, torch.float64,
                                                         ours_fn=neurons.lif_multistep)
    assert ours.grad_fn.name() != kernel_name
    with pytest.raises(ValueError, match="no fused kernel here .no C compiler found.*runs the reference"):
        lif_multistep_fused(torch.rand(2, 3), 0.5, ATan())
    assert torch.equal(ours, ref)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw, gw_ref)


def test_a_compiler_that_fails_is_named_with_its_message_and_leaves_nothing(monkeypatch, tmp_path):
    """The build's three units (kernels/build.py UNITS) compile side by side; one failing gives KernelUnavailable with
    the compiler's own message (then the reference runs, as above), and neither objects nor a library are left."""
    from snnexp.ops.kernels import build, cpu

    compiler = tmp_path / "cc"
    compiler.write_text("#!/bin/sh\ncase \"$*\" in *ONLY_F64*) echo 'lif_cpu.c:1: error: boom' >&2; exit 1;; esac\n"
                        "for a; do case $last in -o) : > \"$a\";; esac; last=$a; done\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CC", str(compiler))
    monkeypatch.setattr(build, "cache_dir", lambda: tmp_path / "kernels")
    message = "could not build lif_cpu.c, pool_cpu.c, count_cpu.c:\nlif_cpu.c:1: error: boom"
    with pytest.raises(cpu.KernelUnavailable, match=message):
        cpu.build()
    assert list((tmp_path / "kernels").iterdir()) == []


def test_modules_default_to_the_fused_kernel_and_agree_with_the_reference():
    from snnexp.nn.neurons import PLIF

    x = (torch.rand(6, 4, 30) * 3 - 0.5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    fast, slow = PLIF(surrogate=ATan()), PLIF(surrogate=ATan(), backend="reference")
    assert fast.backend == "fused"
    out = fast(x)
    assert out.grad_fn.name() == out_name_of_the_kernel()
    ref = slow(x_ref)
    assert torch.equal(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(fast.w.grad, slow.w.grad)
    with pytest.raises(ValueError, match="neuron.backend=.triton. is out of range: must be fused or reference"):
        PLIF(backend="triton")


# The CUDA kernel against the reference, on the device given as argv[1]: "cpu" under Triton's interpreter (here),
# "cuda" on a GPU (tests/test_cuda.py, which make gpu-check runs there).
TRITON_CHECK = """
import itertools, sys, torch
torch.set_default_device(sys.argv[1])
from snnexp.ops.kernels import cuda
from snnexp.ops.kernels.params import LifParams
from snnexp.nn.neurons.functional import lif_multistep_reference
from snnexp.nn.surrogate import ATan, Rect, Sigmoid, Triangle, FastSigmoid
torch.manual_seed(0)
cases = [("if", False, True, ATan()), ("decay_input", False, False, Rect(1.0, 0.7)), ("plain", True, False, Sigmoid()),
         ("decay_input", True, True, Triangle()), ("plain", False, True, FastSigmoid())]
for dtype, (leak, soft, detach, sg) in itertools.product((torch.float32, torch.float64), cases):
    x = torch.rand(5, 3, 300, dtype=dtype) * 4 - 0.5
    tau = torch.tensor(0.4, dtype=dtype)
    xr, taur = x.clone().requires_grad_(), tau.clone().requires_grad_(leak != "if")
    ref = lif_multistep_reference(xr, None if leak == "if" else taur, sg, 1.0, None if soft else -0.2,
                                  leak != "plain", detach)
    g = torch.randn_like(ref)
    ref.backward(g)
    name, a, b = sg.kernel_args()
    params = LifParams(leak, tau, 1.0, -0.2, soft, detach, name, a, b)
    spikes = cuda.forward(x, params)
    gx, gt, _ = cuda.backward(x, g, params, leak != "if")
    assert torch.equal(spikes, ref), (dtype, leak, soft, detach, name)
    torch.testing.assert_close(gx, xr.grad)
    if leak != "if":
        torch.testing.assert_close(gt, taur.grad, rtol=1e-4, atol=1e-4)
# steps: one channels_last input fed at every step; spikes in its memory order, gradient summed over the steps
x1 = (torch.rand(2, 4, 3, 5, dtype=torch.float64) * 4 - 0.5).to(memory_format=torch.channels_last)
xr = x1.clone().requires_grad_()
ref = lif_multistep_reference(xr.unsqueeze(0).repeat(6, 1, 1, 1, 1), 0.4, ATan(), 1.0, 0.0, True, False)
g = torch.randn_like(ref)
ref.backward(g)
tau = torch.tensor(0.4, dtype=torch.float64)
params = LifParams("decay_input", tau, 1.0, 0.0, False, False, "atan", 2.0, 0.0)
spikes = cuda.forward(x1, params, steps=6)
g_in_spikes_order = torch.empty_like(spikes).copy_(g)  # as fused._spikes_order hands it over
gx, _, _ = cuda.backward(x1, g_in_spikes_order, params, False, steps=6)
assert torch.equal(spikes, ref) and spikes.stride() == (x1.numel(), *x1.stride())
torch.testing.assert_close(gx, xr.grad)
print("ok")
"""


def test_the_triton_kernel_in_the_interpreter():
    """The CUDA kernel (kernels/cuda.py) run by Triton's interpreter on the CPU: every surrogate, each leak
    form, hard and soft reset, detach_reset both ways, float32 and float64, against the reference."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK, "cpu"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("kind,v_reset,detach,decay,sg,T", [c for c in CASES if c[5] > 1 and c[4] in ("atan", "rect")])
def test_one_input_at_every_step_is_read_in_place_with_the_gradient_summed_over_steps(kind, v_reset, detach, decay,
                                                                                      sg, T):
    """steps=T (direct coding): x [B, ...] fed at each of T steps without a copy gives the spikes of the sequence
    of T copies, and the gradient of x is the sum of the copies' gradients (float64, to 1e-10)."""
    torch.manual_seed(zlib.crc32(repr((kind, v_reset, detach, decay, sg, T, "steps")).encode()))
    x = (torch.rand(4, 2, 5, dtype=torch.float64) * 4.0 - 0.5).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    weights = torch.randn(T, 4, 2, 5, dtype=torch.float64)
    w = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_()
    tau_inv = {"if": (None, None), "lif": (0.4, 0.4), "plif": (torch.sigmoid(w), torch.sigmoid(w_ref))}[kind]
    common = dict(v_threshold=1.0, v_reset=v_reset, decay_input=decay, detach_reset=detach)
    ours = lif_multistep_fused(x, tau_inv[0], SURROGATES[sg](), **common, steps=T)
    ref = lif_multistep(x_ref.unsqueeze(0).repeat(T, 1, 1, 1), tau_inv[1], SURROGATES[sg](), **common)
    assert ours.shape == ref.shape and torch.equal(ours, ref) and 0 < ref.sum() < ref.numel()
    (ours * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    if kind == "plif":
        torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-10, atol=1e-12)


# A compiler that records each call in calls.log, then fails (the build fails fast; nothing needs to run)
RECORDING_CC = "#!/bin/sh\necho \"$*\" >> \"$(dirname \"$0\")/calls.log\"\nexit 1\n"
FIRST_USE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
import snnexp, snnexp.nn.neurons, snnexp.nn.models, snnexp.train.loop
print("imported")
from snnexp.nn.neurons import LIF
LIF()
print("built a LIF")
"""


def test_importing_compiles_nothing_and_the_first_module_says_what_it_builds(tmp_path):
    """`import snnexp, snnexp.nn.neurons, snnexp.nn.models` with no kernel cache runs no compiler; the first module that
    runs the CPU kernels builds them, saying so in one line (here the compiler fails: the reference runs, warned)."""
    import os
    import subprocess
    import sys

    compiler = tmp_path / "cc"
    compiler.write_text(RECORDING_CC)
    compiler.chmod(0o755)
    env = {**os.environ, "CC": str(compiler), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", FIRST_USE], env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    imported = out.index("imported")
    assert "building snnexp's CPU neuron kernels" not in out[:imported]
    assert out.count("building snnexp's CPU neuron kernels for this machine") == 1
    assert out.index("building snnexp's CPU neuron kernels") < out.index("built a LIF")
    assert (tmp_path / "calls.log").is_file() and "fused neuron kernel unavailable" in proc.stderr


def c_signatures(source: str) -> dict:
    """{exported function (##SUFFIX expanded to f32 / f64): (return type, [parameter types])} from C source whose
    definitions may sit in backslash-continued macros; static functions (not exported) are left out."""
    import re

    text = re.sub(r"NAME\((\w+)\)", r"\1_##SUFFIX", source.replace("\\\n", " "))  # lif_cpu_body.h's names
    found = {}
    for ret, name, params in re.findall(r"(?<!static )(?<!inline )(?<!\) )\b(int|void|int64_t)\s+(\w+?(?:_##SUFFIX)?)"
                                        r"\(([^)]*)\)\s*\{", text):
        types = [] if params.strip() == "void" else [re.sub(r"\s*\b\w+$", "", p.strip()) for p in params.split(",")]
        for suffix, real in (("f32", "float"), ("f64", "double")) if "##SUFFIX" in name else (("", ""),):
            found[name.replace("##SUFFIX", suffix)] = (ret, [t.replace("TYPE", real) for t in types])
    return found


def test_every_ctypes_signature_matches_its_c_declaration():
    """kernels/cpu.py types each C function's arguments by hand for ctypes; a mismatch would corrupt memory
    silently. Every exported function of lif_cpu.c (lif_cpu_body.h) and pool_cpu.c, as the C declares it, against
    its argtypes."""
    import ctypes

    from snnexp.ops.kernels import cpu

    c_types = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "float": ctypes.c_float, "double": ctypes.c_double,
               "void": None}
    declared = {}
    for source in [*cpu.SOURCES, *cpu.HEADERS]:
        declared.update(c_signatures(source.read_text()))
    lib = cpu.library()
    assert {"lif_forward_f32", "lif_backward_f64", "lif_pool_backward_f32", "max_pool_backward_f64",
            "norm_input_grad_f32", "lif_block"} <= set(declared)
    for name, (ret, params) in declared.items():
        fn = getattr(lib, name)
        expected = [ctypes.c_void_p if "*" in p else c_types[p.replace("const ", "").strip()] for p in params]
        assert fn.argtypes == expected, f"{name}: argtypes {fn.argtypes} but C declares ({', '.join(params)})"
        assert fn.restype == c_types[ret], f"{name}: restype {fn.restype} but C returns {ret}"


def test_the_parameter_record_matches_its_c_declaration():
    """The neuron's settings cross into C as one record, lif_cpu_body.h's lif_params, which kernels/cpu.py mirrors
    with ctypes; a field out of order or of another type would hand the kernels wrong settings silently. Its fields
    as the C declares them (in order, TYPE as float / double) against the ctypes mirror, and LifParams.c's values
    in the fields (that the kernels compute with them: the reference tests above)."""
    import ctypes
    import re

    from snnexp.ops.kernels import cpu

    header = next(h for h in cpu.HEADERS if h.name == "lif_cpu_body.h").read_text()
    body = re.search(r"typedef struct \{(.*?)\} NAME\(lif_params\);", header, re.S).group(1)
    declared = []
    for ctype, names in re.findall(r"^\s*(int|TYPE)\s+([^;]+);", body, re.M):
        declared += [(name.strip(), ctype) for name in names.split(",")]
    assert [n for n, _ in declared] == ["leak", "soft_reset", "detach_reset", "sg_kind", "tau_inv", "v_th",
                                        "v_reset", "sg_a", "sg_b"]
    for dtype, real in ((torch.float32, ctypes.c_float), (torch.float64, ctypes.c_double)):
        mirror = cpu._C_PARAMS[dtype]._fields_
        assert mirror == [(n, ctypes.c_int if t == "int" else real) for n, t in declared], dtype
        record = cpu.LifParams("plain", 0.25, 1.5, -0.5, True, True, "rect", 0.75, 0.125).c(dtype)
        assert (record.leak, record.soft_reset, record.detach_reset, record.sg_kind) == (
            cpu.LEAK["plain"], 1, 1, cpu.SURROGATE_KINDS["rect"])
        assert (record.tau_inv, record.v_th, record.v_reset, record.sg_a, record.sg_b) == (0.25, 1.5, -0.5, 0.75,
                                                                                           0.125)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("alpha", [4.0, 3.7])
def test_the_sigmoid_surrogate_matches_its_formula_in_double(dtype, alpha, rtol):
    """The kernel's sigmoid surrogate, alpha s (1 - s) with s = sigma(alpha x), computed in float32 with its own
    branch-free e^x (lif_cpu.c, exp_neg_f32; float64 uses libm's exp), against the formula in double precision:
    within rtol of it everywhere, saturated tails included (written as alpha e / (1 + e)^2, e = e^-|alpha x|, it has
    no cancellation in 1 - s), and 0 only where the exact value is below 1e-36. T = 1, IF from rest: H = X, and the
    gradient of the spikes' sum is the surrogate's derivative at X - V_th, element by element (the tail of the
    vectorised loop included: N is no multiple of the vector width)."""
    f64 = torch.float64
    ax = torch.cat([torch.zeros(1, dtype=f64), torch.linspace(-20, 20, 100_003, dtype=f64),
                    torch.logspace(-9, 2.5, 20_001, dtype=f64), -torch.logspace(-9, 2.5, 20_001, dtype=f64)])
    x = (ax / alpha + 1.0).to(dtype).requires_grad_()
    lif_multistep_fused(x[None], None, Sigmoid(alpha), v_threshold=1.0, v_reset=0.0).sum().backward()
    z = (torch.tensor(alpha, dtype=dtype) * (x.detach() - 1.0)).double()  # alpha (H - V_th), rounded as the kernel
    e = torch.exp(-z.abs())
    exact = torch.tensor(alpha, dtype=dtype).double() * e / (1 + e) ** 2
    assert z[0] == 0 and x.grad[0] == torch.tensor(alpha / 4, dtype=dtype)  # the peak, exactly
    assert z.abs().max() > 300 and exact.min() < 1e-100  # reaches far into the saturated tails
    torch.testing.assert_close(x.grad.double(), exact, rtol=rtol, atol=1e-36)
