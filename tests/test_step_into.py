"""fast_weights_step_into (a rollout step writing into packed rows) against fast_weights_step."""

from __future__ import annotations

import itertools

import pytest
import torch

from fw_agents.memory.ops.step import fast_weights_step, fast_weights_step_into


@pytest.mark.parametrize(
    "write, resets, inner_steps, layer_norm",
    list(itertools.product([False, True], [False, True], [1, 2], [True, False])),
)
def test_step_into_writes_bitwise_the_steps_outputs(write, resets, inner_steps, layer_norm):
    g = torch.Generator().manual_seed(0)
    B, H = 5, 8
    zx, h = torch.randn(1, B, H, generator=g), torch.randn(B, H, generator=g)
    A = 0.1 * torch.randn(B, H, H, generator=g)
    A[1] = float("nan")  # a restarting row's carried A: must not reach the outputs
    A[3, 0, 0] = float("inf")
    W = 0.3 * torch.randn(H, H, generator=g)
    ln_w, ln_b = 1 + 0.1 * torch.randn(H, generator=g), 0.1 * torch.randn(H, generator=g)
    starts = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]])
    options = dict(
        decay=0.9, fast_lr=0.4, inner_steps=inner_steps, episode_starts=starts, layer_norm=layer_norm,
        write_mask=torch.tensor([[1.0, 2.5, 0.0, 1.2, 0.7]]) if write else None,
        hidden_resets=torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0]]) if resets else None,
    )  # fmt: skip
    _, h_ref, A_ref = fast_weights_step(zx, h, A, W, ln_w, ln_b, **options)
    packed = torch.full((B, H + H * H + 1), float("nan"))
    h_out, A_out = packed[:, :H], packed[:, H : H + H * H].view(B, H, H)
    fast_weights_step_into(h_out, A_out, zx, h, A, W, ln_w, ln_b, **options)
    assert torch.isfinite(A_ref).all()
    assert torch.equal(h_out, h_ref) and torch.equal(A_out, A_ref)
    assert packed[:, -1].isnan().all()  # nothing written beyond the two outputs


def test_step_into_without_restarts_and_with_parameters_that_need_grad():
    B, H = 2, 4
    args = (torch.zeros(1, B, H), torch.ones(B, H), torch.ones(B, H, H), torch.eye(H), None, None)
    h_out, A_out = torch.empty(B, H), torch.empty(B, H, H)
    fast_weights_step_into(h_out, A_out, *args, decay=0.5, fast_lr=1.0, inner_steps=1, layer_norm=False)
    _, h_ref, A_ref = fast_weights_step(*args, decay=0.5, fast_lr=1.0, inner_steps=1, layer_norm=False)
    assert torch.equal(h_out, h_ref) and torch.equal(A_out, A_ref)
    W = torch.eye(H, requires_grad=True)  # no autograd: the outputs are written in place
    fast_weights_step_into(h_out, A_out, args[0], args[1], args[2], W, None, None, decay=0.5, fast_lr=1.0,
                           inner_steps=1, layer_norm=False)  # fmt: skip
    assert not h_out.requires_grad and not A_out.requires_grad
