"""The fidelity metrics live in ``runtime.parity`` (the runtime's ``selftest`` needs them without
torch); the export side imports them from here as it always has."""

from runtime.parity import Fidelity, Gate, compare, maxsim_rel_error, topk_agreement

__all__ = ["Fidelity", "Gate", "compare", "maxsim_rel_error", "topk_agreement"]
