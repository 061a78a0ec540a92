"""The neurons and surrogates the fused CPU kernels take, one of each kind (reset, leak, threshold), for the tests
of the joined ops (test_pooled.py, test_normalised.py), and the sizes at which the kernels' blocks split."""

from snnexp.nn.neurons import IF, LIF, PLIF, STBPLIF
from snnexp.nn.surrogate import ATan, FastSigmoid, Rect, Sigmoid, Triangle

NEURONS = {
    "plif": lambda sg: PLIF(tau0=2.5, surrogate=sg),
    "lif-soft-plain": lambda sg: LIF(tau=3.0, decay_input=False, v_reset=None, surrogate=sg),
    "lif-reset-kept": lambda sg: LIF(tau=1.5, v_reset=-0.25, detach_reset=False, surrogate=sg),
    "if": lambda sg: IF(v_threshold=0.75, surrogate=sg),
    "stbp": lambda sg: STBPLIF(k=0.25, surrogate=sg),
}
SURROGATES = [ATan(2.0), Sigmoid(4.0), Rect(1.0), Triangle(1.0), FastSigmoid(25.0)]


def over_a_block(shape):
    """shape with None replaced by more channels than the kernels' block of neurons (lif_cpu.c's BLOCK), so that
    a pixel's channels are cut into blocks."""
    from snnexp.ops.kernels import cpu

    return tuple(cpu.block() + 44 if n is None else n for n in shape)
