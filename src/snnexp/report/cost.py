"""What a network costs, beside its activity over a test pass (activity.py): the static metrics NeuroBench reports
[Yik 2025], and an energy estimate per inference from the operation counts.

    footprint_bytes      bytes of all parameters and buffers (BN running statistics included): NeuroBench's Footprint
    parameter_count      the number of parameters: its ParameterCount
    connection_sparsity  the share of weights that are exactly 0 among those of all Linear and Conv layers: its
                         ConnectionSparsity (which rounds to 4 decimals; ours is not rounded)

Energy of one inference (one sample, all its T steps), in picojoules:

    E = E_AC x effective ACs + E_MAC x effective MACs

with the per-operation energies of the run's config (energy.ac_pj, energy.mac_pj; conf/energy/). Dense operations
are what the same network would do without sparsity; they get no energy of their own.
"""

from typing import Dict

from torch import nn

from snnexp.nn.delays import DelayedFC

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, DelayedFC)


def static_metrics(model: nn.Module) -> Dict[str, float]:
    """footprint_bytes, parameter_count, connection_sparsity of `model` (module docstring). One pass over the
    weights, far less than one test batch's forward: cheap enough for every test pass."""
    params = list(model.parameters())
    footprint = sum(t.numel() * t.element_size() for t in [*params, *model.buffers()])
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    zeros = int(sum((w == 0).sum() for w in weights)) if weights else 0
    total = sum(w.numel() for w in weights)
    return {"footprint_bytes": footprint, "parameter_count": sum(p.numel() for p in params),
            "connection_sparsity": zeros / total if total else 0.0}


def energy_pj(effective_acs: float, effective_macs: float, ac_pj: float, mac_pj: float) -> float:
    """Picojoules of one inference: E_AC x ACs + E_MAC x MACs (module docstring)."""
    return ac_pj * effective_acs + mac_pj * effective_macs
