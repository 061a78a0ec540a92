"""A kernel's parameters, declared once: the neuron's settings as one record (LifParams) from
SpikingNeuron.dynamics() down to the C kernels (passed by pointer as lif_cpu_body.h's struct lif_params, mirrored here
with ctypes) and to the Triton launch (kernels/cuda.py). A new neuron setting is added here and in that struct;
tests/test_fused.py compares the two field by field."""

import ctypes
from typing import Any, NamedTuple

import torch

SURROGATE_KINDS = {"atan": 0, "sigmoid": 1, "rect": 2, "triangle": 3, "fast_sigmoid": 4}
LEAK = {"if": 0, "decay_input": 1, "plain": 2}
C_TYPES = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}  # suffix, C real


class LifParams(NamedTuple):
    """A neuron's settings as the kernels take them: one record from SpikingNeuron.dynamics() down to the C (passed
    by pointer as lif_cpu_body.h's lif_params) or the Triton launch (kernels/cuda.py), so that a new setting is
    added in one place. tau_inv is a float for the CPU, a 0-d tensor on CUDA (the kernel reads it there)."""

    leak: str  # a key of LEAK
    tau_inv: Any
    v_th: float
    v_reset: float
    soft_reset: bool
    detach_reset: bool = False  # the backward's settings; the forward kernels ignore them
    surrogate: str = "atan"  # a key of SURROGATE_KINDS
    sg_a: float = 0.0
    sg_b: float = 0.0

    def c(self, dtype: torch.dtype) -> ctypes.Structure:
        """The C record for the kernels of `dtype` (float32 or float64), to pass with ctypes.byref."""
        return _C_PARAMS[dtype](LEAK[self.leak], int(self.soft_reset), int(self.detach_reset),
                                SURROGATE_KINDS[self.surrogate], self.tau_inv, self.v_th, self.v_reset, self.sg_a,
                                self.sg_b)


def _c_params(real) -> type:
    """lif_cpu_body.h's lif_params for TYPE `real`, field by field (tests/test_fused.py compares them)."""
    return type(f"lif_params_{real.__name__}", (ctypes.Structure,), {"_fields_": [
        ("leak", ctypes.c_int), ("soft_reset", ctypes.c_int), ("detach_reset", ctypes.c_int),
        ("sg_kind", ctypes.c_int), ("tau_inv", real), ("v_th", real), ("v_reset", real), ("sg_a", real),
        ("sg_b", real)]})


_C_PARAMS = {dtype: _c_params(real) for dtype, (_, real) in C_TYPES.items()}
