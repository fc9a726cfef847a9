"""A fused Triton kernel pair (forward and backward) for the fast-weights recurrence.

One Triton program per sequence walks the time steps with ``A`` (fast weights) and
``W`` (slow recurrent weights) held on chip, for ``H <= 128`` (the host zero-pads the
hidden axes to a power of two, so the kernels need no masks). Same numbers as
:func:`fw_agents.memory.ops.reference.fast_weights_reference`; the design and the
backward's maths are in ``fused_recurrent.md`` next to this file.

* Forward: matrix form, ``A`` updated every step (O(S·H²) per step). It stores the
  outputs ``y``, and, when a gradient is needed, every inner step's input ``h_s`` and
  pre-layer-norm ``u_s`` (``[T, B, S, H]`` each) and ``A`` at the start of every chunk of
  ``K`` steps (``[ceil(T/K), B, H, H]``): never ``[T, B, H, H]``.
* Backward: chunks in reverse. Within a chunk ``A(t-1)`` is never formed: with ``A_c``
  the checkpoint, ``A(t-1) = g_t A_c + sum_tau w[t, tau] h(tau) h(tau)^T`` (Eq. 4, the
  chunk's ``h(tau)`` held on chip as a ``[K, H]`` tile), so ``A(t-1)^T v`` costs
  O(H² + K·H). ``dL/dA`` is carried explicitly (``[H, H]`` on chip), ``dL/dW`` is one
  ``[T·B, H]^T [T·B, H]`` matmul afterwards, the layer-norm gain and bias gradients are
  summed per program and then over programs.

Layout and names as flash-linear-attention's ``fused_recurrent`` ops:
:func:`fused_recurrent_fast_weights_fwd` and :func:`fused_recurrent_fast_weights_bwd` launch
the kernels, a thin autograd Function joins them, and :func:`fused_recurrent_fast_weights`
(the public op, the reference's signature) pads, converts and runs the forward alone when no gradient is needed (a rollout step: no autograd bookkeeping,
and no device-to-host sync anywhere on the way).

Triton runs on CUDA tensors, or on CPU tensors under its interpreter
(``TRITON_INTERPRET=1``, slow: for tests). The environment variable is read when the
op is called (the kernels are decorated lazily, once per mode), so setting it after
import works.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
import torch.nn.functional as F

from fw_agents.memory.ops import time_scales
from fw_agents.memory.ops.options import OpOptions, refuse_gate
from fw_agents.memory.ops.triton_kernels import _fw_backward_kernel, _fw_forward_kernel, _launch_options
from fw_agents.memory.ops.triton_kernels import NUM_WARPS, launch_options  # noqa: F401 - the op's tuning knobs
from fw_agents.validation import one_line

try:  # optional dependency: pip install "fw-agents[gpu]"
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    triton = None
    tl = None

#: Largest hidden size the kernels hold on chip; above it use the PyTorch scan.
MAX_HIDDEN = 128
#: Default steps between the forward's checkpoints of ``A`` (the backward's chunk).
DEFAULT_CHUNK = 16
#: Largest checkpoint interval (the backward holds a ``[K, H]`` tile and a ``[K, K]`` one).
MAX_CHUNK = 64
INSTALL_HINT = 'the Triton fast-weights kernel needs triton: pip install "fw-agents[gpu]"'


def triton_available() -> bool:
    """True when triton imports (it does not say whether a GPU is present)."""
    return triton is not None


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


#: Devices where the kernel failed to build or launch (``str(device)``: the one-line error);
#: ``mode="auto"`` keeps the PyTorch scan there for the rest of the process.
UNUSABLE: dict[str, str] = {}


def supports(hidden_size: int, device: torch.device | str) -> bool:
    """Whether :func:`fused_recurrent_fast_weights` runs at this size on this device: compiled on an
    NVIDIA GPU, or any device under ``TRITON_INTERPRET=1``. What ``mode="auto"`` asks.

    A ROCm build of torch also calls its AMD GPUs ``cuda``; the kernels are compiled and
    checked for NVIDIA targets only, so ``"auto"`` keeps the PyTorch scan there
    (``mode="triton"`` still asks for the kernel). Nor on a device in :data:`UNUSABLE`."""
    device = torch.device(device)
    nvidia = device.type == "cuda" and torch.version.hip is None
    usable = str(device) not in UNUSABLE
    return triton is not None and 1 <= hidden_size <= MAX_HIDDEN and (nvidia or _interpret()) and usable


def kernel_unavailable(hidden_size: int, device: torch.device | str) -> str | None:
    """Why :func:`fused_recurrent_fast_weights` (``mode="triton"``) cannot run at this size on this device, in
    one line, or None when it can: what a run checks before it starts, rather than fail at its first step."""
    problem = _kernel_problem(hidden_size, torch.device(device))
    return None if problem is None else str(problem)


def _kernel_problem(hidden_size: int, device: torch.device) -> Exception | None:
    """The error :func:`fused_recurrent_fast_weights` raises for this size and device (None: it runs)."""
    if triton is None:
        return ImportError(INSTALL_HINT)
    if hidden_size > MAX_HIDDEN:
        return ValueError(
            f"the Triton fast-weights kernel holds A on chip for H <= {MAX_HIDDEN}, got H = {hidden_size}; "
            "use fast_weights_scan (FastWeightsRNN mode='auto' falls back to it)"
        )
    if device.type != "cuda" and not _interpret():
        return RuntimeError(
            f"the Triton fast-weights kernel needs CUDA tensors (got {device.type}), "
            "or TRITON_INTERPRET=1 to run it (slowly) on CPU"
        )
    return None


def mark_unusable(device: torch.device | str, error: BaseException) -> None:
    """Record that the kernel failed on ``device`` (a Triton that cannot compile or launch it
    there: an old driver, a toolchain mismatch) and warn once, in one line, that
    ``mode="auto"`` falls back to the PyTorch scan (same numbers, slower)."""
    message = one_line(error, 300)
    UNUSABLE[str(torch.device(device))] = message
    warnings.warn(
        f"fast weights: the Triton kernel failed on {torch.device(device)} ({message}); mode='auto' uses the "
        "PyTorch scan there from now on (mode='scan' chooses it, mode='triton' raises the error)",
        RuntimeWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- kernels
# triton_kernels holds plain functions, decorated with triton.jit on first use (see _kernels):
# triton picks "compiled" or "interpreted" when it decorates, from TRITON_INTERPRET then.

_KERNELS: dict[bool, tuple] = {}


def _kernels() -> tuple:
    """The (forward, backward) kernels, decorated for the current TRITON_INTERPRET."""
    interpret = _interpret()
    if interpret not in _KERNELS:
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            _KERNELS[interpret] = (triton.jit(_fw_forward_kernel), triton.jit(_fw_backward_kernel))
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
    return _KERNELS[interpret]


def _on_device(tensor: torch.Tensor):
    """Triton launches on the current CUDA device and its current stream: make that the
    tensor's device (a model on ``cuda:1`` while ``cuda:0`` is current, say)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n >= 1`` (``triton.next_power_of_2`` is a jit function:
    a host call costs microseconds, at every rollout step)."""
    return 1 << (n - 1).bit_length()


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# --------------------------------------------------------------------------- fwd / bwd ops
# Free functions, as flash-linear-attention's ops: the autograd Function below is a thin
# wrapper around them, and a call that needs no gradient runs the forward op alone.
# Every hidden axis arrives padded to a power of two, H; ``hidden`` is the real size, and
# ``options`` the public op's settings (``chunk_size`` already the checkpoint interval K).


def fused_recurrent_fast_weights_fwd(
    zx, h, A, W, ln_weight, ln_bias, starts, write, resets, hidden: int, options: OpOptions, save: bool,
):  # fmt: skip
    """Launch the forward kernel. ``save``: also store what the backward reads.

    :return: ``(y, h_T, A_T, saved)``: ``A_T`` is an empty tensor unless
        ``options.output_final_state``; ``saved = (hs, u, ckpt)`` (``[T, B, S, H]`` twice,
        ``[ceil(T/chunk), B, H, H]``) when ``save``, else None.
    """
    T, B, H = zx.shape
    S, chunk, output_final_state = options.inner_steps, options.chunk_size, options.output_final_state
    dev, dtype = zx.device, zx.dtype
    y = torch.empty(T, B, H, device=dev, dtype=dtype)
    h_T = torch.empty(B, H, device=dev, dtype=dtype)
    A_T = torch.empty(B, H, H, device=dev, dtype=dtype) if output_final_state else y.new_empty(0)
    hs_buf = torch.empty(T, B, S, H, device=dev, dtype=dtype) if save else y
    u_buf = torch.empty(T, B, S, H, device=dev, dtype=dtype) if save else y
    ckpt = torch.empty(-(-T // chunk), B, H, H, device=dev, dtype=dtype) if save else y
    dummy = y
    forward_kernel, _ = _kernels()
    with _on_device(zx):
        forward_kernel[(B,)](
            zx, h, dummy if A is None else A.transpose(1, 2).contiguous(), W.t().contiguous(),
            dummy if ln_weight is None else ln_weight, dummy if ln_bias is None else ln_bias,
            dummy if starts is None else starts, dummy if write is None else write, dummy if resets is None else resets,
            y, hs_buf, u_buf, ckpt, h_T, A_T if output_final_state else dummy,
            T, B, hidden, options.decay, options.fast_lr, options.eps,
            S=S, BH=H, K=chunk, ACC=_acc_dtype(dtype), LAYER_NORM=options.layer_norm,
            RMS_NORM=options.rms_norm, HAS_A0=A is not None,
            HAS_START=starts is not None, HAS_WRITE=write is not None, HAS_RESET=resets is not None,
            SAVE=save, STORE_AT=output_final_state, **_launch_options(H, backward=False),
        )  # fmt: skip
    return y, h_T, A_T, (hs_buf, u_buf, ckpt) if save else None


def fused_recurrent_fast_weights_bwd(
    grad_y, grad_h_T, grad_A_T, h, W, ln_weight, y, hs_buf, u_buf, ckpt, starts, write, resets,
    hidden: int, options: OpOptions, grad_A: bool, grad_W: bool,
):  # fmt: skip
    """Launch the backward kernel (chunks in reverse from the forward's checkpoints) and
    form ``dW`` and the layer-norm gradients from its outputs.

    :param grad_y, grad_h_T, grad_A_T: Gradients of the outputs (None: zero).
    :param grad_A: Whether to return ``dA`` (the initial ``A`` needs a gradient).
    :param grad_W: Whether to form ``dW`` (one ``[T·B, H]^T [T·B, H]`` matmul).
    :return: ``(dzx, dh, dA or None, dW or None, d_ln_weight or None, d_ln_bias or None)``;
        the layer-norm ones are per-program ``[B, H]`` rows summed over programs.
    """
    T, B, H = y.shape
    dev, dtype = y.device, y.dtype
    layer_norm = options.layer_norm
    grad_y, grad_h_T, grad_A_T = (None if g is None else g.contiguous() for g in (grad_y, grad_h_T, grad_A_T))
    dzx = torch.empty(T, B, H, device=dev, dtype=dtype)
    dh0 = torch.empty(B, H, device=dev, dtype=dtype)
    dA0 = torch.empty(B, H, H, device=dev, dtype=dtype) if grad_A else dzx
    dlnw = torch.empty(B, H, device=dev, dtype=dtype) if layer_norm else dzx
    dlnb = torch.empty(B, H, device=dev, dtype=dtype) if layer_norm else dzx
    dummy = dzx
    _, backward_kernel = _kernels()
    with _on_device(y):
        backward_kernel[(B,)](
            y, hs_buf, u_buf, ckpt, W, dummy if ln_weight is None else ln_weight,
            dummy if starts is None else starts, dummy if write is None else write, dummy if resets is None else resets,
            dummy if grad_y is None else grad_y, dummy if grad_h_T is None else grad_h_T,
            dummy if grad_A_T is None else grad_A_T,
            dzx, dh0, dA0, dlnw, dlnb,
            T, B, hidden, options.decay, options.fast_lr, options.eps,
            S=options.inner_steps, BH=H, K=options.chunk_size, ACC=_acc_dtype(dtype), LAYER_NORM=layer_norm,
            RMS_NORM=options.rms_norm, HAS_START=starts is not None, HAS_WRITE=write is not None, HAS_RESET=resets is not None,
            HAS_GY=grad_y is not None, HAS_GHT=grad_h_T is not None, HAS_GAT=grad_A_T is not None,
            STORE_DA0=grad_A, **_launch_options(H, backward=True),
        )  # fmt: skip
    dW = None
    if grad_W:
        # z(t) = W h_in(t) + zx(t), h_in(t) = h(t-1) after the resets: dW = sum_t dz(t) h_in(t)^T
        if starts is not None:  # as the kernel: a start at t = 0 clears a carried NaN exactly
            h = h.masked_fill(starts[0, :, None] > 0.5, 0.0)
        if resets is not None:  # and so does a hidden reset at t = 0
            h = h.masked_fill(resets[0, :, None] > 0.5, 0.0)
        h_in = torch.cat([h[None], y[:-1]])
        if starts is not None:
            h_in = h_in * (1.0 - starts)[..., None]
        if resets is not None:
            h_in = h_in * (1.0 - resets)[..., None]
        dW = dzx.reshape(-1, H).T @ h_in.reshape(-1, H)
    d_lnw, d_lnb = (dlnw.sum(0), dlnb.sum(0)) if layer_norm else (None, None)
    return dzx, dh0, dA0 if grad_A else None, dW, d_lnw, d_lnb


class _FastWeightsTriton(torch.autograd.Function):
    """Autograd for :func:`fused_recurrent_fast_weights_fwd` / :func:`fused_recurrent_fast_weights_bwd`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, zx, h, A, W, ln_weight, ln_bias, starts, write, resets, hidden: int, options: OpOptions,
    ):  # fmt: skip
        save = any(ctx.needs_input_grad[:6])
        # an output the loss does not use gets None, not zeros: no [B, H, H] zero tensor for an
        # unused final A, and the backward is launched without it (HAS_GHT / HAS_GAT off)
        ctx.set_materialize_grads(False)
        y, h_T, A_T, saved = fused_recurrent_fast_weights_fwd(
            zx, h, A, W, ln_weight, ln_bias, starts, write, resets, hidden, options, save=save
        )
        if save:
            ctx.save_for_backward(h, W, ln_weight, y, *saved, starts, write, resets)
            ctx.hidden, ctx.options = hidden, options
            ctx.grad_A = A is not None and ctx.needs_input_grad[2]  # the carried state of a rollout has none
        if not options.output_final_state:
            ctx.mark_non_differentiable(A_T)
        return y, h_T, A_T

    @staticmethod
    def backward(ctx, grad_y, grad_h_T, grad_A_T):  # type: ignore[override]
        h, W, ln_weight, y, hs_buf, u_buf, ckpt, starts, write, resets = ctx.saved_tensors
        if grad_A_T is not None and grad_A_T.numel() == 0:  # no final state was asked for
            grad_A_T = None
        dzx, dh, dA, dW, d_lnw, d_lnb = fused_recurrent_fast_weights_bwd(
            grad_y, grad_h_T, grad_A_T, h, W, ln_weight, y, hs_buf, u_buf, ckpt, starts, write, resets,
            ctx.hidden, ctx.options, grad_A=ctx.grad_A, grad_W=ctx.needs_input_grad[3],
        )  # fmt: skip
        d_lnw = d_lnw if ctx.needs_input_grad[4] else None
        d_lnb = d_lnb if ctx.needs_input_grad[5] else None
        return (dzx, dh, dA, dW, d_lnw, d_lnb) + (None,) * 5  # masks, hidden, options


# --------------------------------------------------------------------------- public op


def _mask(mask: torch.Tensor | None, T: int, B: int, name: str, like: torch.Tensor, dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if tuple(mask.shape) != (T, B):
        raise ValueError(f"{name} must be [T, B] = {(T, B)}, got {tuple(mask.shape)}")
    return mask.to(device=like.device, dtype=dtype).contiguous()


def fused_recurrent_fast_weights(
    zx: torch.Tensor,
    h: torch.Tensor,
    A: torch.Tensor | None,
    W: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    *,
    decay: float,
    fast_lr: float,
    inner_steps: int,
    episode_starts: torch.Tensor | None = None,
    write_mask: torch.Tensor | None = None,
    hidden_resets: torch.Tensor | None = None,
    layer_norm: bool = True,
    eps: float = 1e-5,
    output_final_state: bool = True,
    chunk_size: int | None = None,
    rms_norm: bool = False,
    gate_x: torch.Tensor | None = None,
    gate_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fast-weights recurrence as one fused Triton kernel (forward and backward).

    Per step t and sequence b (an episode start zeroes ``h`` and ``A`` first, a hidden
    reset ``h`` alone)::

        z      = W h(t-1) + zx(t)
        h_0    = relu(z)
        h_s+1  = relu(LN[z + A(t-1) h_s]),  s < S
        h(t)   = h_S
        A(t)   = d_t A(t-1) + fast_lr w_t h(t) h(t)^T,   d_t = 1 - w_t (1 - decay)

    Same numbers as :func:`~fw_agents.memory.ops.reference.fast_weights_reference`;
    differentiable in ``zx``, ``h``, ``A``, ``W``, ``ln_weight`` and ``ln_bias``.

    Args:
        zx: ``C x(t) + bias``, ``[T, B, H]``, float32 (float64 also runs, float16/bfloat16
            are computed in float32 and returned in their dtype). CUDA, or any device
            under ``TRITON_INTERPRET=1``. The scalars (η, λ, eps) enter the kernels as
            float32 whatever the dtype, so float64 agrees with the reference to about 1e-8
            relative unless they are float32-exact.
        h: Hidden state before the first step, ``[B, H]``.
        A: Fast weights before the first step, ``[B, H, H]``; None for zeros.
        W: Slow recurrent weights ``[H, H]`` (``z = h @ W.T``).
        ln_weight, ln_bias: Layer-norm gain and bias ``[H]`` (None: no affine part).
        decay: λ. fast_lr: η (the paper's, Eq. 1). inner_steps: S >= 1.
        episode_starts: ``[T, B]``, 1 resets ``h`` and ``A`` of that row before step t.
        write_mask: ``[T, B]``, 0 leaves ``A`` unchanged by step t (no decay, no write).
        hidden_resets: ``[T, B]``, 1 zeroes the row's ``h`` (not ``A``) before step t.
        layer_norm: Layer norm on every inner step. eps: its epsilon. rms_norm: RMS norm instead
            (no mean removed; :mod:`~fw_agents.memory.ops.norms`). gate_x, gate_weight: refused (the
            update gate runs in the reference loop only).
        output_final_state: False returns None for ``A_T`` (never stored), as the other ops.
        chunk_size: Steps between the forward's checkpoints of ``A`` for the backward
            (rounded up to a power of two, at most 64; default 16). Memory for the
            backward: ``ceil(T / chunk) · B · H²`` plus ``2 · T · B · S · H`` floats.

    Returns:
        ``(y [T, B, H], h_T [B, H], A_T [B, H, H] or None)``.

    Raises:
        ImportError: triton is not installed (``pip install "fw-agents[gpu]"``).
        RuntimeError: CPU tensors without ``TRITON_INTERPRET=1``.
        ValueError: ``H > 128`` (use :func:`~fw_agents.memory.ops.fast_weights_scan`),
            or bad shapes.

    Examples:
        >>> T, B, H = 16, 256, 128  # doctest: +SKIP
        >>> zx = torch.randn(T, B, H, device="cuda", requires_grad=True)  # doctest: +SKIP
        >>> W = (0.05 * torch.eye(H, device="cuda")).requires_grad_()  # doctest: +SKIP
        >>> y, h_T, A_T = fused_recurrent_fast_weights(  # doctest: +SKIP
        ...     zx, torch.zeros(B, H, device="cuda"), None, W, None, None,
        ...     decay=0.95, fast_lr=0.5, inner_steps=1)
        >>> y.sum().backward()  # doctest: +SKIP
    """
    refuse_gate(gate_x, gate_weight)
    decay, fast_lr = time_scales.as_scales(decay, fast_lr)
    if not isinstance(decay, float):
        raise ValueError(f"the fused kernel runs one time scale, got decay={decay!r}; "
                         "several time scales run in fast_weights_scan")
    if triton is None:
        raise ImportError(INSTALL_HINT)
    if zx.dim() != 3:
        raise ValueError(f"zx must be [T, B, H], got shape {tuple(zx.shape)}")
    T, B, H = zx.shape
    problem = _kernel_problem(H, zx.device)
    if problem is not None:
        raise problem
    if not (isinstance(inner_steps, int) and inner_steps >= 1):
        raise ValueError(f"inner_steps must be an int >= 1, got {inner_steps!r}")
    if tuple(h.shape) != (B, H) or tuple(W.shape) != (H, H):
        raise ValueError(f"h must be [B, H] = {(B, H)} and W [H, H], got {tuple(h.shape)} and {tuple(W.shape)}")
    if A is not None and tuple(A.shape) != (B, H, H):
        raise ValueError(f"A must be [B, H, H] = {(B, H, H)} or None, got {tuple(A.shape)}")
    chunk = DEFAULT_CHUNK if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    chunk = min(next_power_of_2(chunk), MAX_CHUNK)
    out_dtype = zx.dtype
    dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    if T == 0 or B == 0:
        empty_A = zx.new_zeros(B, H, H) if A is None else A
        return zx.new_empty(T, B, H), h, empty_A if output_final_state else None

    def prep(x):
        return None if x is None else x.to(dtype).contiguous()

    if not layer_norm:
        ln_weight = ln_bias = None
    elif ln_weight is None or ln_bias is None:  # F.layer_norm without an affine part
        ln_weight = torch.ones(H, device=zx.device, dtype=dtype) if ln_weight is None else ln_weight
        ln_bias = torch.zeros(H, device=zx.device, dtype=dtype) if ln_bias is None else ln_bias
    # the kernels read the masks as given (a start at t = 0 also clears a carried NaN/inf
    # exactly there, as step.py does): no per-call host ops beyond a dtype/device move
    starts = _mask(episode_starts, T, B, "episode_starts", zx, dtype)
    write = _mask(write_mask, T, B, "write_mask", zx, dtype)
    resets = _mask(hidden_resets, T, B, "hidden_resets", zx, dtype)
    block = next_power_of_2(H)
    if block != H:  # zero-pad every hidden axis (differentiably): the kernels need no masks
        pad = block - H
        zx, h, ln_weight, ln_bias = (None if x is None else F.pad(x, (0, pad)) for x in (zx, h, ln_weight, ln_bias))
        A, W = (None if x is None else F.pad(x, (0, pad, 0, pad)) for x in (A, W))
    tensors = (prep(zx), prep(h), prep(A), prep(W), prep(ln_weight), prep(ln_bias), starts, write, resets)
    options = OpOptions(
        decay, fast_lr, inner_steps, chunk, bool(layer_norm), float(eps), bool(output_final_state), bool(rms_norm)
    )
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in tensors[:6]):
        y, h_T, A_T = _FastWeightsTriton.apply(*tensors, H, options)
    else:  # a rollout step or evaluation: the forward op alone, without autograd's bookkeeping
        y, h_T, A_T, _ = fused_recurrent_fast_weights_fwd(*tensors, H, options, save=False)
    if block != H:
        y, h_T = y[..., :H].contiguous(), h_T[:, :H].contiguous()
        A_T = A_T[:, :H, :H].contiguous() if output_final_state else A_T
    if out_dtype != dtype:
        y, h_T, A_T = y.to(out_dtype), h_T.to(out_dtype), A_T.to(out_dtype)
    return y, h_T, A_T if output_final_state else None
