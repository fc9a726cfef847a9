"""Functional forms of the fast-weights recurrence: a naive reference and the fused scan."""

from fw_agents.memory.ops.fused import fast_weights_scan, fast_weights_step
from fw_agents.memory.ops.reference import fast_weights_reference

__all__ = ["fast_weights_reference", "fast_weights_scan", "fast_weights_step"]
