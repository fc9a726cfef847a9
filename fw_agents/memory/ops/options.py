"""The non-tensor options of a fast-weights op, one encoding for every op's internals.

The public ops take these as keyword arguments (one signature shared with
:func:`~fw_agents.memory.ops.fast_weights_reference`); inside, the chunked scan
(:mod:`fw_agents.memory.ops.chunked_scan`) and the fused Triton kernel
(:mod:`fw_agents.memory.ops.fused_recurrent`) carry them from the forward to the backward
as one frozen :class:`OpOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OpOptions:
    """An op's non-tensor settings, as checked and converted by its public function.

    :param decay: λ, the fast weights' decay (Eq. 1); a tuple: one per time scale
        (:mod:`~fw_agents.memory.ops.time_scales`).
    :param fast_lr: η, the fast weights' learning rate (Eq. 1); a tuple: one per time scale.
    :param inner_steps: S >= 1, inner iterations per time step (Eq. 5).
    :param chunk_size: Steps per chunk; what a chunk is depends on the op. The chunked scan:
        the steps unrolled to Eq. 4 at once (1 is the per-step matrix form, >= T one
        attention-like block). The fused kernel: the steps between the forward's
        checkpoints of ``A`` that its backward restarts from (a power of two, at most 64).
    :param layer_norm: Layer norm on every inner step.
    :param eps: The layer norm's epsilon.
    :param output_final_state: Whether the op returns the final fast weights ``A_T``.
    :param rms_norm: With ``layer_norm``, RMS norm instead (:mod:`~fw_agents.memory.ops.norms`).
    """

    decay: float | tuple[float, ...]
    fast_lr: float | tuple[float, ...]
    inner_steps: int
    chunk_size: int
    layer_norm: bool = True
    eps: float = 1e-5
    output_final_state: bool = True
    rms_norm: bool = False


def refuse_gate(gate_x: object, gate_weight: object) -> None:
    """The update gate (``FastWeightsRNN(update_gate=True)``) runs in ``fast_weights_reference`` only:
    the other ops take ``gate_x`` and ``gate_weight`` for the common signature and refuse anything but None."""
    if gate_x is not None or gate_weight is not None:
        raise ValueError("gate_x and gate_weight (the update gate) run in fast_weights_reference only; give None here")
