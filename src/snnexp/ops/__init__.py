"""The fused ops and their kernels: fused.py (a spiking layer over T steps as one op), normalised.py (BN inside that
op), pooled.py (the op and the max pool after it); kernels/ (the C kernels for the CPU, built on first use, and the
Triton kernels for CUDA). A kernel's parameters are declared once: kernels/params.py's LifParams, mirrored by the
C struct lif_params in kernels/lif_cpu_body.h."""
