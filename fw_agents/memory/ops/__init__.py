"""Functional forms of the fast-weights recurrence, all with one signature.

* :func:`fast_weights_reference`: the naive per-step loop (autograd), for checking;
* :func:`fast_weights_scan`: the chunked scan with a hand-written backward (any ``T``);
* :func:`fast_weights_step`: one step in matrix form (``T = 1``, the rollout case).

``fast_weights.md`` in this folder derives the scan's forward and backward passes.
"""

from fw_agents.memory.ops.chunked_scan import fast_weights_scan
from fw_agents.memory.ops.reference import fast_weights_reference
from fw_agents.memory.ops.step import fast_weights_step

__all__ = ["fast_weights_reference", "fast_weights_scan", "fast_weights_step"]
