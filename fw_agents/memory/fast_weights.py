"""The fast-weights RNN of Ba, Hinton, Mnih, Leibo and Ionescu (NIPS 2016)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from fw_agents.memory.base import MemoryCore, State, check_packed_out
from fw_agents.memory.bias_correction import bias_corrected_writes
from fw_agents.memory.ops import compiled, fast_weights_reference, fast_weights_scan, fast_weights_step, fused_recurrent
from fw_agents.memory.ops.step import fast_weights_step_into
from fw_agents.memory.ops.chunking import default_chunk_size
from fw_agents.memory.ops.fused_recurrent import fused_recurrent_fast_weights
from fw_agents.memory.options import OPTIONS, resolve_eta, translate_legacy_mode
from fw_agents.validation import check_bool, check_choice

# The op that runs a call, by mode: (a sequence, a one-step call). All of them share one signature.
# A rollout step in "auto"/"scan" mode takes the matrix-form step (fewest ops). "auto" on CUDA: _op.
# Former modes ("matrix", "attention": the scan at chunk 1 / T) are read as "scan"
# (fw_agents.memory.options.translate_legacy_mode).
_OPS = {
    "auto": (fast_weights_scan, fast_weights_step),
    "scan": (fast_weights_scan, fast_weights_step),
    "triton": (fused_recurrent_fast_weights, fused_recurrent_fast_weights),
    "reference": (fast_weights_reference, fast_weights_reference),
}
MODES = tuple(_OPS)


class FastWeightsRNN(MemoryCore):
    """A ReLU RNN with a layer-normed fast-weight inner loop ("Using Fast Weights to
    Attend to the Recent Past", Ba et al. 2016).

    Per time step, with ``h`` and ``A`` zero at every sequence start::

        z        = W h(t-1) + C x(t)                  # computed once per step
        h_0      = relu(z)                            # preliminary state, no layer norm
        h_{s+1}  = relu(LN[z + A(t-1) h_s])           # Eq. 5, s = 0 .. S-1
        h(t)     = h_S
        A(t)     = λ A(t-1) + η h(t) h(t)^T           # Eq. 1

    Layer norm normalises each example over its ``H`` hidden units (never across
    the batch), with a learned gain and bias.

    **Two units for η, two names.** ``fast_lr`` (the default, 0.5) is the paper's
    η of Eq. 1, exactly. That η is an absolute scale: after layer norm and the ReLU
    ``|h|² ≈ H/2``, and the decayed sum of writes grows to ``1/(1-λ)`` of one write, so
    ``A h`` grows like ``η·H/(1-λ)`` against an input drive ``W h + C x`` of order one,
    and an η that suits one width and decay drowns the input at another.
    ``fast_share`` (the agents' default) divides the write by both factors::

        A(t) = λ A(t-1) + η (1-λ)/H · h(t) h(t)^T     # η = fast_share, η_paper = η (1-λ)/H

    ``A`` is then η times an exponential moving average of ``h hᵀ/H`` with horizon
    ``1/(1-λ)`` steps (Eq. 4: ``A h_s = η (1-λ) Σ_k λ^k h(τ) (h(τ)·h_s / H)``). With a unit
    layer-norm gain ``|h|² ≤ H``, so ``‖A‖_F ≤ η`` whatever ``H`` and the sequence length,
    and ``|A h_s| ≤ η |h_s|``: η is the fast memory's share of the drive, λ its time scale,
    and the two no longer interact. The recurrence is the paper's with η replaced by
    :attr:`paper_fast_lr`, so every path stays held to the Eq. 1/5 reference.

    How ``A(t-1) h_s`` is computed (all exact, same numbers):

    * ``"scan"``: attention over the call's past hidden states (Eq. 4) in chunks of at most
      ``2·hidden_size`` steps, forming ``A`` between chunks, so neither long sequences nor
      large ``H`` blow up; a one-step call keeps ``A`` explicitly (matrix form, O(H²)).
      The op's ``chunk_size`` spans both ends: 1 is the matrix form every step, ``>= T``
      attention over the whole call (:func:`~fw_agents.memory.ops.fast_weights_scan`).
    * ``"reference"``: the slow per-step loop of
      :func:`~fw_agents.memory.ops.fast_weights_reference` (autograd), for checking.
    * ``"triton"``: the fused Triton kernel pair (:mod:`fw_agents.memory.ops.fused_recurrent`,
      ``A`` and ``W`` on chip, ``H <= 128``): CUDA tensors, or CPU under
      ``TRITON_INTERPRET=1`` (how the tests run it).
    * ``"auto"`` (default): ``"triton"`` for CUDA inputs on an NVIDIA GPU when triton is
      installed and ``H <= 128``, ``"scan"`` otherwise (ROCm included: the kernels are
      checked for NVIDIA targets only). Where triton cannot build or launch the kernel (an
      old driver, say), one ``RuntimeWarning`` and the scan on that device from then on.

    :param input_size: Number of input features.
    :param hidden_size: Number of recurrent units ``H``.
    :param fast_lr: The paper's fast learning rate η of Eq. 1 (> 0). Paper: 0.5, the default
        when neither it nor ``fast_share`` is given; give at most one of them.
    :param decay: Fast-weight decay λ, in (0, 1). Paper: 0.95 (0.9 for associative retrieval).
    :param inner_steps: Inner-loop steps S (>= 1). Paper: 1.
    :param layer_norm: Layer norm on every inner step (paper: yes).
    :param mode: One of ``"auto"``, ``"scan"``, ``"triton"``, ``"reference"``. The former
        ``"matrix"`` and ``"attention"`` (the scan at a fixed chunk size) are read as
        ``"scan"``, quietly, so that saved configs naming them still load.
    :param fast_share: η as the fast memory's share of the drive (> 0): the write is scaled by
        ``(1-λ)/H`` (see above). Ranges and defaults of every option:
        :data:`fw_agents.memory.options.FAST_WEIGHTS_OPTIONS`.
    :param identity_scale: Scale ``s`` of the initial slow recurrent weights ``W = s·I`` (> 0).
        Paper: 0.05 (its IRNN baseline: 0.5).
    :param bias_correction: Read the fast memory at full strength from an episode's first
        step: ``A`` is divided by its filled share ``m(t) = 1 - λ^n`` (``n`` writes since the
        start), as Adam corrects its moment estimates. See :func:`bias_corrected_writes`.
    :param relative_slow_weights: Train ``W`` as ``s·W̃`` with ``W̃ = I`` at first (the parameter
        ``W.weight`` holds ``W̃``; :attr:`slow_weights` is ``W``): the same ``W`` at
        initialisation, but an optimizer that steps each parameter by about its learning rate
        (Adam) moves ``W`` by ``s·lr``, i.e. relative to its own scale, as it moves an IRNN's
        ``W = 0.5·I``; with ``s = 0.05`` the plain parameter changes 20× faster relative to itself.
    :param time_scales: ``G`` fast-memory time scales at once: the rows of ``A`` in ``G`` groups,
        group ``g`` decaying with ``λ_g = 1 - (1-λ)·2^g`` (:attr:`decays`) and written with its own
        η (a share's write scaled by ``(1-λ_g)/H``); 1 is the paper's single λ. Not in the
        Triton kernel (``"auto"`` takes the scan for it).
    :param rms_norm: Normalise the inner loop by the root mean square alone (RMS norm, same gain
        and bias) instead of layer norm: ``relu(RMS(h)) = h/rms(h)`` for ``h >= 0``, so a state
        driven by ``W h`` alone (a blank input) keeps its pattern, which ``relu(LN(h))``, zeroing
        every unit below the mean, rewrites at every step (:mod:`~fw_agents.memory.ops.norms`).
    :param update_gate: A GRU-style update gate around the inner loop (not the paper's): ``h(t) = (1-g) ⊙
        h(t-1) + g ⊙ h_S``, ``g = sigmoid(G_h h(t-1) + G_x x(t) + b)``; ``A`` is written with the gated ``h(t)``.
        Runs the reference loop, modes ``"auto"``/``"reference"`` (docs/fast_weights_learning.md §13).
    :param learned_memory: Train λ and η (in its unit, ``fast_share`` or ``fast_lr``) by gradient from
        the given values, as ``λ = sigmoid(g ρ)`` and ``η = exp(g κ)`` (parameters ``decay_logit`` ρ
        and ``log_eta`` κ, kept in range by that form; :attr:`learned_decay`, :attr:`paper_fast_lr`).
        Runs the reference loop (autograd), one time scale, modes ``"auto"``/``"reference"``;
        several times slower than the scan (docs/fast_weights_learning.md §10).
    :param memory_lr_scale: ``g``, the learned λ and η's learning rate relative to the other
        parameters': an optimizer that steps each parameter by about its learning rate (Adam)
        moves ``gρ`` and ``gκ`` by ``g`` times it.

    State: ``(h [B, H], A [B, H, H])``, and ``m [B, G]`` (the filled share of each time scale)
    with ``bias_correction``.
    """

    supports_write_mask = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        fast_lr: float | None = None,
        decay: float = OPTIONS["decay"].default,
        inner_steps: int = OPTIONS["inner_steps"].default,
        layer_norm: bool = True,
        mode: str = "auto",
        fast_share: float | None = None,
        identity_scale: float = OPTIONS["identity_scale"].default,
        bias_correction: bool = OPTIONS["bias_correction"].default,
        relative_slow_weights: bool = OPTIONS["relative_slow_weights"].default,
        time_scales: int = OPTIONS["time_scales"].default,
        rms_norm: bool = OPTIONS["rms_norm"].default,
        update_gate: bool = OPTIONS["update_gate"].default,
        learned_memory: bool = OPTIONS["learned_memory"].default,
        memory_lr_scale: float = OPTIONS["memory_lr_scale"].default,
    ) -> None:
        super().__init__(input_size, hidden_size)
        # every range is the spec's (fw_agents.memory.options), as every flag and search is
        self.decay = OPTIONS["decay"].check(decay)
        eta_name, eta = resolve_eta(fast_lr, fast_share)
        #: η as given: the paper's (``fast_lr``) or a share of the drive (``fast_share``); the other is None.
        self.fast_lr = eta if eta_name == "fast_lr" else None
        self.fast_share = eta if eta_name == "fast_share" else None
        self.inner_steps = OPTIONS["inner_steps"].check(inner_steps)
        self.mode = check_choice("mode", translate_legacy_mode(mode), MODES)
        self.identity_scale = OPTIONS["identity_scale"].check(identity_scale)
        self.bias_correction = OPTIONS["bias_correction"].check(bias_correction)
        self.relative_slow_weights = OPTIONS["relative_slow_weights"].check(relative_slow_weights)
        self.time_scales = OPTIONS["time_scales"].check(time_scales)
        self.rms_norm = OPTIONS["rms_norm"].check(rms_norm)
        self.update_gate = OPTIONS["update_gate"].check(update_gate)
        self.learned_memory = OPTIONS["learned_memory"].check(learned_memory)
        self.memory_lr_scale = OPTIONS["memory_lr_scale"].check(memory_lr_scale)
        if self.learned_memory and (self.time_scales > 1 or self.mode not in ("auto", "reference")):
            raise ValueError(f"learned_memory=True with time_scales={self.time_scales}, mode={self.mode!r}: it runs one "
                             "time scale through the reference loop (mode 'auto' or 'reference')")
        if self.update_gate and self.mode not in ("auto", "reference"):
            raise ValueError(f"update_gate=True with mode={self.mode!r}: it runs the reference loop "
                             "(mode 'auto' or 'reference')")
        if self.memory_lr_scale != 1.0 and not self.learned_memory:
            raise ValueError(f"memory_lr_scale={memory_lr_scale!r} applies with learned_memory=True only")
        most = max(g for g in range(1, 64) if (1.0 - self.decay) * 2 ** (g - 1) < 1.0)
        if self.time_scales > most:
            raise ValueError(f"time_scales={time_scales} with decay={decay}: "
                             f"accepted 1 to {most} (the shortest scale's λ = 1 - (1-λ)·2^(g-1) must stay > 0)")
        if self.time_scales > 1 and self.mode == "triton":
            raise ValueError(f"mode='triton' runs one time scale; time_scales={time_scales} runs with mode "
                             "'auto', 'scan' or 'reference'")
        #: λ of each time scale, the longest first: ``1 - (1-λ)·2^g``.
        self.decays = tuple(1.0 - (1.0 - self.decay) * 2**g for g in range(self.time_scales))
        self.W = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
        if self.learned_memory:  # λ = sigmoid(g ρ), η = exp(g κ) in its unit: set by reset_parameters
            self.decay_logit = nn.Parameter(torch.zeros(()))
            self.log_eta = nn.Parameter(torch.zeros(()))
        self.C = nn.Linear(self.input_size, self.hidden_size)
        if self.update_gate:  # g = sigmoid(G_h h(t-1) + G_x x(t) + b)
            self.G_h = nn.Linear(self.hidden_size, self.hidden_size, bias=False)
            self.G_x = nn.Linear(self.input_size, self.hidden_size)
        self.ln = nn.LayerNorm(self.hidden_size) if check_bool("layer_norm", layer_norm) else None
        if self.rms_norm and self.ln is None:
            raise ValueError("rms_norm=True with layer_norm=False: RMS norm replaces the inner loop's layer norm; "
                             "give layer_norm=True (the default) or rms_norm=False")
        self.reset_parameters()

    @property
    def learned_decay(self) -> torch.Tensor:
        """λ as trained: ``sigmoid(g ρ)`` (0-d)."""
        return torch.sigmoid(self.memory_lr_scale * self.decay_logit)

    @property
    def paper_fast_lr(self) -> float | torch.Tensor:
        """The η of the paper's Eq. 1 this core computes with: ``fast_lr``, or
        ``fast_share·(1-λ)/H``; a 0-d tensor with ``learned_memory``."""
        if self.learned_memory:
            eta = torch.exp(self.memory_lr_scale * self.log_eta)
            return eta if self.fast_share is None else eta * (1.0 - self.learned_decay) / self.hidden_size
        if self.fast_share is not None:
            return self.fast_share * (1.0 - self.decay) / self.hidden_size
        return self.fast_lr

    @property
    def op_decay(self) -> float | tuple[float, ...] | torch.Tensor:
        """The ops' ``decay``: λ, or one λ per time scale (:mod:`~fw_agents.memory.ops.time_scales`),
        or the learned λ (0-d tensor)."""
        if self.learned_memory:
            return self.learned_decay
        return self.decay if self.time_scales == 1 else self.decays

    @property
    def op_fast_lr(self) -> float | tuple[float, ...]:
        """The ops' ``fast_lr``: :attr:`paper_fast_lr`, or with several time scales one per scale
        (a share's write scaled by each scale's ``(1-λ_g)/H``, so each is a moving average)."""
        if self.time_scales == 1 or self.fast_share is None:
            return self.paper_fast_lr
        return tuple(self.fast_share * (1.0 - d) / self.hidden_size for d in self.decays)

    @property
    def slow_weights(self) -> torch.Tensor:
        """``W``, the slow recurrent weights the ops use: ``W.weight``, or ``s·W.weight`` with
        ``relative_slow_weights`` (one ``[H, H]`` product per call, through autograd)."""
        return self.W.weight * self.identity_scale if self.relative_slow_weights else self.W.weight

    @property
    def layer_norm(self) -> bool:
        return self.ln is not None

    def reset_parameters(self) -> None:
        """Paper's initialisation: ``W = identity_scale·I`` (0.05); input weights uniform in ±1/√H."""
        with torch.no_grad():
            scale = 1.0 if self.relative_slow_weights else self.identity_scale
            self.W.weight.copy_(scale * torch.eye(self.hidden_size))
            bound = 1.0 / math.sqrt(self.hidden_size)
            self.C.weight.uniform_(-bound, bound)
            self.C.bias.zero_()
            if self.update_gate:  # as C; a zero bias opens every gate halfway at first
                for weight in (self.G_x.weight, self.G_h.weight):
                    weight.uniform_(-bound, bound)
                self.G_x.bias.zero_()
            if self.ln is not None:
                self.ln.reset_parameters()
            if self.learned_memory:
                eta = self.fast_lr if self.fast_share is None else self.fast_share
                self.decay_logit.fill_(math.log(self.decay / (1.0 - self.decay)) / self.memory_lr_scale)
                self.log_eta.fill_(math.log(eta) / self.memory_lr_scale)

    @property
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        shapes = ((self.hidden_size,), (self.hidden_size, self.hidden_size))
        return (*shapes, (self.time_scales,)) if self.bias_correction else shapes

    def chunk_size(self, steps: int) -> int:
        """Steps between explicit formations of ``A`` for a call of ``steps`` steps."""
        return default_chunk_size(steps, self.hidden_size)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
        write_mask: torch.Tensor | None = None,
        hidden_resets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Process a sequence.

        :param x: Inputs ``[T, B, input_size]``.
        :param state: ``(h [B, H], A [B, H, H])`` before ``x[0]``; None for a fresh start.
        :param episode_starts: ``[T, B]``; 1 resets that row's ``h`` and ``A`` before step t.
        :param write_mask: ``[T, B]``; 0 where step t must leave ``A`` unchanged (no decay,
            no write), as in the paper's multi-level glimpse model. Default: write every step.
        :param hidden_resets: ``[T, B]``; 1 zeroes that row's ``h`` but keeps ``A`` before step t
            (the multi-level model's wipe between levels, paper Figure 3). Default: never.
        :return: ``(y [T, B, H], (h [B, H], A [B, H, H]))``.
        """
        return self._run(x, state, episode_starts, write_mask, hidden_resets, final_state=True)

    def outputs(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
        write_mask: torch.Tensor | None = None,
        hidden_resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward`'s outputs ``y`` alone: the final ``A`` is never formed."""
        return self._run(x, state, episode_starts, write_mask, hidden_resets, final_state=False)[0]

    def forward_packed(
        self,
        x: torch.Tensor,
        packed: torch.Tensor,
        episode_starts: torch.Tensor | None,
        width: int,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`MemoryCore.forward_packed`; a rollout step (one step, no autograd, the
        PyTorch ops) writes ``h``, ``A`` and the filled share straight into the new packed rows
        (:func:`~fw_agents.memory.ops.step.fast_weights_step_into`): bitwise the unpacked step's.
        On the CPU the same ops run as one compiled call where the C++ loops build
        (:mod:`~fw_agents.memory.ops.compiled`), bitwise the Python ones."""
        reference = self.learned_memory or self.update_gate
        generic = reference or _OPS[self.mode][1] is not fast_weights_step or self._uses_kernel(x)
        if x.shape[0] != 1 or torch.is_grad_enabled() or generic:
            return super().forward_packed(x, packed, episode_starts, width, out)
        state = self.unpack_state(packed[:, : self.state_size])
        H, batch = self.hidden_size, x.shape[1]
        check_packed_out(out, batch, width, packed.dtype)
        new = x.new_empty(batch, width) if out is None else out
        loops = compiled.loops_for(x) if self.time_scales == 1 else None
        if loops is not None:  # the same ops in C++ (ops/scan_loops.cpp): bitwise the step below
            self._check_inputs(x, state, episode_starts)
            ln_weight, ln_bias, eps = self._layer_norm_parameters()
            h_out = loops.rollout_step(
                x, packed, episode_starts, new, self.C.weight, self.C.bias, self.slow_weights, ln_weight, ln_bias, eps,
                self.layer_norm, self.rms_norm, self.decay, self.paper_fast_lr, self.inner_steps, self.bias_correction,
            )  # fmt: skip
            return h_out.unsqueeze(0), new
        (h, A, *filled), starts = self._prepare(x, state, episode_starts)
        h_out, A_out = new[:, :H], new[:, H : H + H * H].view(batch, H, H)
        write_mask = None
        if self.bias_correction:
            write_mask, filled_T = self._bias_corrected_writes(filled[0], starts, None, 1)
            new[:, H + H * H : self.state_size].copy_(filled_T)
        new[:, self.state_size :].zero_()
        ln_weight, ln_bias, eps = self._layer_norm_parameters()
        fast_weights_step_into(
            h_out, A_out, self.C(x), h, A, self.slow_weights, ln_weight, ln_bias, decay=self.op_decay,
            fast_lr=self.op_fast_lr, inner_steps=self.inner_steps, episode_starts=starts, write_mask=write_mask,
            layer_norm=self.layer_norm, eps=eps, rms_norm=self.rms_norm,
        )  # fmt: skip
        return h_out.unsqueeze(0), new

    def _run(
        self,
        x: torch.Tensor,
        state: State | None,
        episode_starts: torch.Tensor | None,
        write_mask: torch.Tensor | None,
        hidden_resets: torch.Tensor | None,
        final_state: bool,
    ) -> tuple[torch.Tensor, State]:
        fresh = state is None
        if fresh:  # A is never read (None to the op): a zero view, not a [B, H, H] buffer to fill
            device, dtype = self._device_dtype(x.device)
            zero, (B, H) = torch.zeros((), device=device, dtype=dtype), (x.shape[1], self.hidden_size)
            filled = [zero.new_zeros(B, self.time_scales)] if self.bias_correction else []
            state = (zero.new_zeros(B, H), zero.expand(B, H, H), *filled)
        # the kernel reads the starts as they come: no device sync to ask whether any is set
        (h, A, *filled), starts = self._prepare(x, state, episode_starts, drop_idle_starts=not self._uses_kernel(x))
        for name, mask in (("write_mask", write_mask), ("hidden_resets", hidden_resets)):
            if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"{name} must be [T, B] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}")
        if self.bias_correction:
            write_mask, filled_T = self._bias_corrected_writes(filled[0], starts, write_mask, x.shape[0])
        op, chunk_size = self._op(x)
        ln_weight, ln_bias, eps = self._layer_norm_parameters()
        inputs = (
            self.C(x),  # C x(t) for every step at once
            h,
            None if fresh else A,  # None: known zeros, never read
            self.slow_weights,
            ln_weight,
            ln_bias,
        )
        options = dict(
            decay=self.op_decay,
            fast_lr=self.op_fast_lr,
            inner_steps=self.inner_steps,
            episode_starts=starts,
            write_mask=write_mask,
            hidden_resets=hidden_resets,
            layer_norm=self.layer_norm,
            eps=eps,
            output_final_state=final_state,
            rms_norm=self.rms_norm,
        )
        if self.update_gate:
            options.update(gate_x=self.G_x(x), gate_weight=self.G_h.weight)
        try:
            y, h_T, A_T = op(*inputs, **options, chunk_size=chunk_size)
        except (ValueError, TypeError, torch.cuda.OutOfMemoryError):
            raise  # bad input or memory: not the kernel's failure, and the scan would fail alike
        except Exception as error:  # noqa: BLE001 - compiler, driver or toolchain
            if op is not fused_recurrent_fast_weights or self.mode == "triton":
                raise
            # "auto" chose the kernel and triton cannot build or launch it here: the scan instead
            fused_recurrent.mark_unusable(x.device, error)
            op, chunk_size = self._op(x)
            y, h_T, A_T = op(*inputs, **options, chunk_size=chunk_size)
        if self.bias_correction:
            return y, (h_T, A_T, filled_T.detach() if self.learned_memory else filled_T)
        return y, (h_T, A_T)

    def _bias_corrected_writes(
        self, filled: torch.Tensor, starts: torch.Tensor | None, write_mask: torch.Tensor | None, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`bias_corrected_writes` for each time scale: write weights ``[T, B]`` (one scale)
        or ``[T, B, G]``, and the filled shares ``[B, G]`` after the last step."""
        decays = (self.learned_decay,) if self.learned_memory else self.decays
        per_scale = [bias_corrected_writes(d, filled[:, g], starts, write_mask, steps) for g, d in enumerate(decays)]
        if self.time_scales == 1:
            return per_scale[0][0], per_scale[0][1][:, None]
        return torch.stack([w for w, _ in per_scale], dim=2), torch.stack([m for _, m in per_scale], dim=1)

    def _layer_norm_parameters(self) -> tuple[torch.Tensor | None, torch.Tensor | None, float]:
        """The ops' ``ln_weight``, ``ln_bias`` and ``eps`` (None, None and the default without layer norm)."""
        if self.ln is None:
            return None, None, 1e-5
        return self.ln.weight, self.ln.bias, self.ln.eps

    def _uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether this call runs the fused Triton kernel."""
        one_scale = self.time_scales == 1 and not self.learned_memory and not self.update_gate
        return self.mode == "triton" or (
            self.mode == "auto" and one_scale and x.is_cuda and fused_recurrent.supports(self.hidden_size, x.device)
        )

    def _op(self, x: torch.Tensor) -> tuple[Callable[..., tuple[torch.Tensor, ...]], int | None]:
        """The op for this call and its ``chunk_size`` (the kernel picks its own checkpoints)."""
        if self._uses_kernel(x):
            return fused_recurrent_fast_weights, None
        if self.learned_memory or self.update_gate:  # autograd through the reference loop (λ and η; the gate)
            return fast_weights_reference, None
        return _OPS[self.mode][x.shape[0] == 1], self.chunk_size(x.shape[0])

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, "
            + (f"fast_lr={self.fast_lr}" if self.fast_share is None else f"fast_share={self.fast_share}")
            + f", decay={self.decay}, inner_steps={self.inner_steps}, layer_norm={self.layer_norm}, mode={self.mode!r}, "
            f"identity_scale={self.identity_scale}, "
            f"bias_correction={self.bias_correction}"
            + (", relative_slow_weights=True" if self.relative_slow_weights else "")
            + (f", time_scales={self.time_scales}" if self.time_scales > 1 else "")
            + (", rms_norm=True" if self.rms_norm else "")
            + (", update_gate=True" if self.update_gate else "")
            + (f", learned_memory=True, memory_lr_scale={self.memory_lr_scale}" if self.learned_memory else "")
        )

