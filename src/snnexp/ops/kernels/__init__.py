"""Fused multi-step LIF kernels: `cpu` (C, lif_cpu.c) and `cuda` (Triton). snnexp/ops/fused.py dispatches."""
