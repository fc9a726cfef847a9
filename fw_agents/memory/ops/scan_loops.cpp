// The per-step loops of the chunked fast-weights scan, compiled (fw_agents.memory.ops.compiled).
//
// Each function is a line-for-line port of the Python loop it replaces (same ATen ops, same
// order, same buffers), so its results are bitwise those of the Python loop: it removes the
// interpreter's cost per op (~3 us of the ~7 us each small op takes at the RL shape), not maths.
//   forward_steps  <- chunked_scan_fwd._forward_chunk's loop over the chunk's steps
//   backward_steps <- chunked_scan_bwd._backward_chunk's loop over the chunk's steps
//   rollout_step   <- FastWeightsRNN.forward_packed's rollout step (bias_corrected_writes'
//                     one-step case, then step.fast_weights_step_into)
// Equations: Eq. 5's inner loop with Eq. 1 unrolled to Eq. 4 over the chunk (fast_weights.md).
#include <torch/extension.h>

#include <limits>
#include <optional>
#include <vector>

using at::Tensor;
using at::indexing::None;
using at::indexing::Slice;

namespace {

// [rows, 1, n] views of a [rows, n] step, as the Python loops' `unsqueeze(...).unbind(...)` views.
inline Tensor row3(const Tensor& x) { return x.unsqueeze(1); }

// norms.normalize: layer norm, or RMS norm (the scale alone) plus the bias.
inline Tensor normalize(const Tensor& u, at::IntArrayRef shape, const std::optional<Tensor>& weight,
                        const std::optional<Tensor>& bias, double eps, bool rms) {
  if (!rms) return at::layer_norm(u, shape, weight, bias, eps);
  Tensor out = at::rms_norm(u, shape, weight, eps);
  return bias ? at::add(out, *bias) : out;
}

}  // namespace

// Steps start .. stop-1 of one chunk; fills queries/pre_act/hidden/scores in place and returns h(stop-1).
//   zx [T, B, H]; hidden [B, T, H]; queries, pre_act [S, T, B, H]; scores [S, B, K, K];
//   weights [B, K+1, K]; Wt = W^T; keep_h [T, B] with reset_steps[t] saying whether step t resets;
//   A_read_T [readers, H, H] (A_init^T of the reading rows) with read_coef [readers, K+1] or
//   read_scale (one g_j per step, when every reading row shares it).
Tensor forward_steps(const Tensor& zx, const Tensor& hidden, const Tensor& queries, const Tensor& pre_act,
                     const Tensor& scores, const Tensor& weights, const Tensor& Wt,
                     const std::optional<Tensor>& ln_weight, const std::optional<Tensor>& ln_bias, double eps,
                     bool layer_norm, bool rms_norm, const std::optional<Tensor>& keep_h,
                     const std::vector<bool>& reset_steps, const std::optional<Tensor>& A_read_T, int64_t readers, const std::optional<Tensor>& read_coef,
                     const std::optional<std::vector<double>>& read_scale, int64_t start, int64_t stop, bool whole,
                     Tensor h) {
  const int64_t K = stop - start, S = queries.size(0), H = hidden.size(2);
  const std::vector<int64_t> norm_shape{H};
  const Tensor block = hidden.slice(1, start, stop);
  const Tensor block_T = hidden.transpose(1, 2).slice(2, start, stop);
  for (int64_t j = 0; j < K; ++j) {
    const int64_t t = start + j;
    if (keep_h && reset_steps[t]) h = h * keep_h->select(0, t).unsqueeze(1);
    Tensor z = at::addmm(zx.select(0, t), h, Wt);
    Tensor z3 = z.unsqueeze(1);
    Tensor q0 = queries.select(0, 0).select(0, t);
    at::clamp_min_out(q0, z, 0.0);  // h_0 = relu(z)
    Tensor past, past_T, w_row;
    if (j > 0 && whole) {  // h(tau >= t) get w[t, tau] = 0: one view for every step
      past = block, past_T = block_T, w_row = weights.select(1, j).unsqueeze(1);
    } else if (j > 0) {
      past = hidden.slice(1, start, t);
      past_T = hidden.transpose(1, 2).slice(2, start, t);
      w_row = weights.select(1, j).unsqueeze(1).slice(2, 0, j);
    }
    for (int64_t s = 0; s < S; ++s) {
      Tensor u = pre_act.select(0, s).select(0, t);
      Tensor u3 = row3(u);
      Tensor q = queries.select(0, s).select(0, t);
      if (j > 0) {  // Eq. 4 over this chunk's past: sum_tau w[t, tau] h(tau) (h(tau) . h_s)
        Tensor ws = scores.select(0, s).slice(1, j, j + 1);
        if (!whole) ws = ws.slice(2, 0, j);
        at::mul_out(ws, at::bmm(row3(q), past_T), w_row);
        at::baddbmm_out(u3, z3, ws, past);
      } else {
        u3.copy_(z3);
      }
      if (A_read_T) {  // + g_j A_init h_s, reading rows only
        Tensor read_u3 = row3(u.slice(0, 0, readers));
        Tensor read_q3 = row3(q.slice(0, 0, readers));
        if (!read_scale) {
          read_u3.baddbmm_(read_q3 * read_coef->unsqueeze(2).slice(1, j, j + 1), *A_read_T);
        } else if ((*read_scale)[j] != 0.0) {
          read_u3.baddbmm_(read_q3, *A_read_T, 1.0, (*read_scale)[j]);
        }
      }
      Tensor n = layer_norm ? normalize(u, norm_shape, ln_weight, ln_bias, eps, rms_norm) : u;
      Tensor target = s == S - 1 ? hidden.select(1, t) : queries.select(0, s + 1).select(0, t);
      at::clamp_min_out(target, n, 0.0);  // Eq. 5
    }
    h = hidden.select(1, t);
  }
  return h;
}

// BPTT through steps stop-1 .. start of one chunk (after the chunk-end term of dL/dA was added
// by the caller). Fills grad_z/ln_out for its steps, adds into grad_hidden of earlier steps.
// Returns (dL/dh_in or undefined when start > 0, the reading rows' g_j dL/du_s and h_s
// per read, in the order the Python loop appends them, for dL/dA_init).
std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>> backward_steps(
    const Tensor& hidden, const Tensor& queries, const Tensor& pre_act, const Tensor& chunk_scores,
    const Tensor& weights, const Tensor& W, const std::optional<Tensor>& ln_weight,
    const std::optional<Tensor>& ln_bias, bool layer_norm, bool rms_norm, const std::optional<Tensor>& mean,
    const std::optional<Tensor>& rstd, const std::optional<Tensor>& keep_h, const std::vector<bool>& reset_steps,
    const Tensor& grad_hidden, const Tensor& grad_z_all, const Tensor& ln_out, const std::optional<Tensor>& A,
    int64_t readers, const Tensor& init_coef, const std::optional<std::vector<double>>& read_scale,
    bool collect_reads, int64_t start, int64_t stop, bool whole) {
  const int64_t K = stop - start, S = queries.size(0), B = hidden.size(0), H = hidden.size(2);
  const std::vector<int64_t> norm_shape{H};
  const std::array<bool, 3> ln_mask{true, false, false};
  const Tensor block = hidden.slice(1, start, stop);
  const Tensor hidden_T = hidden.transpose(1, 2);
  const Tensor block_T = hidden_T.slice(2, start, stop);
  const Tensor grad_block = grad_hidden.slice(1, start, stop);
  Tensor grad_h_in;
  std::vector<Tensor> init_rows, init_queries;
  for (int64_t j = K - 1; j >= 0; --j) {
    const int64_t t = start + j;
    Tensor past, past_T, grad_past, w_row;
    if (j > 0 && whole) {
      past = block, past_T = block_T, grad_past = grad_block, w_row = weights.select(1, j).unsqueeze(1);
    } else if (j > 0) {
      past = hidden.slice(1, start, t), past_T = hidden_T.slice(2, start, t);
      grad_past = grad_hidden.slice(1, start, t), w_row = weights.select(1, j).unsqueeze(1).slice(2, 0, j);
    }
    Tensor grad_q = grad_hidden.select(1, t);
    Tensor grad_z = grad_z_all.select(0, t);
    for (int64_t s = S - 1; s >= 0; --s) {
      // h_{s+1} = relu(LN(u_s)): back through the ReLU (into the ln_out buffer) and the LN
      Tensor q_out = s + 1 < S ? queries.select(0, s + 1).select(0, t) : hidden.select(1, t);
      Tensor grad_ln = ln_out.select(0, s).select(0, t);
      Tensor grad_u = at::threshold_backward_out(grad_ln, grad_q, q_out, 0);
      if (layer_norm) {  // norms.normalize_backward
        const Tensor r = rstd->select(0, s).select(0, t);
        Tensor grad_n = grad_u;
        grad_u = std::get<0>(at::native_layer_norm_backward(
            grad_n, pre_act.select(0, s).select(0, t), norm_shape, mean->select(0, s).select(0, t), r, ln_weight,
            ln_bias, ln_mask));
        if (rms_norm) {  // layer norm's backward at mean 0 takes away r mean(g), which RMS norm's keeps
          Tensor g = ln_weight ? grad_n * *ln_weight : grad_n;
          grad_u = grad_u.addcmul_(g.mean(-1, true), r);
        }
      }
      if (s == S - 1) {  // u_s = z + A h_s: z gets every inner step's dL/du_s
        grad_z.copy_(grad_u);
      } else {
        grad_z += grad_u;
      }
      Tensor q = queries.select(0, s).select(0, t);
      Tensor grad_q3;  // dL/dh_s(t) through the fast-weight read, [B, 1, H]
      Tensor grad_u3 = row3(grad_u);
      if (j > 0) {  // read = sum_tau w h(tau) (h(tau) . q): d/dq and d/dh(tau)
        Tensor back = at::bmm(grad_u3, past_T).mul_(w_row);
        grad_q3 = at::bmm(back, past);
        Tensor score_col = chunk_scores.select(0, s).select(1, j).unsqueeze(2);
        if (!whole) score_col = score_col.slice(1, 0, j);
        grad_past.addcmul_(score_col, grad_u3);
        grad_past.addcmul_(back.transpose(1, 2), row3(q));
      }
      if (A) {  // read = g_j A_init q in the first `readers` rows
        if (!grad_q3.defined()) grad_q3 = at::zeros({B, 1, H}, grad_u.options());
        Tensor coef = init_coef.slice(0, 0, readers).slice(1, j, j + 1);  // [readers, 1]
        Tensor grad_q3_readers = grad_q3.slice(0, 0, readers);
        if (collect_reads) {
          Tensor scaled = grad_u.slice(0, 0, readers) * coef;
          init_rows.push_back(scaled);
          init_queries.push_back(q.slice(0, 0, readers));
          grad_q3_readers.baddbmm_(scaled.unsqueeze(1), *A);
        } else if (!read_scale) {
          grad_q3_readers.baddbmm_(grad_u3.slice(0, 0, readers) * coef.unsqueeze(2), *A);
        } else if ((*read_scale)[j] != 0.0) {
          grad_q3_readers.baddbmm_(grad_u3.slice(0, 0, readers), *A, 1.0, (*read_scale)[j]);
        }
      }
      if (!grad_q3.defined()) {  // first step of a chunk with no initial A: nothing read
        if (s == 0) break;
        grad_q = at::zeros_like(q);
      } else {
        grad_q = grad_q3.squeeze(1);
        if (s == 0) grad_z += at::threshold_backward(grad_q, q, 0);  // h_0 = relu(z)
      }
    }
    // z(t) = W h(t-1) + C x(t), with h(t-1) zeroed where the row resets
    Tensor grad_z_kept = (keep_h && reset_steps[t]) ? grad_z * keep_h->select(0, t).unsqueeze(1) : grad_z;
    if (t > 0) {
      grad_hidden.select(1, t - 1).addmm_(grad_z_kept, W);
    } else {
      grad_h_in = at::matmul(grad_z_kept, W);
    }
  }
  return {grad_h_in, init_rows, init_queries};
}

// One rollout step on packed states, no autograd: FastWeightsRNN.forward_packed's rollout branch
// (the starts as x's dtype, _bias_corrected_step, C x, fast_weights_step_into), same ATen ops in the
// same order. packed [B, >= state_size] holds (h [H], A [H*H], m [1] with bias correction); the new
// state goes into out [B, width] (zero past state_size); returns h(t) [B, H], a view of out.
Tensor rollout_step(const Tensor& x, const Tensor& packed, const std::optional<Tensor>& episode_starts,
                    Tensor out, const Tensor& C_weight, const std::optional<Tensor>& C_bias, const Tensor& W,
                    const std::optional<Tensor>& ln_weight, const std::optional<Tensor>& ln_bias, double eps,
                    bool layer_norm, bool rms_norm, double decay, double fast_lr, int64_t inner_steps,
                    bool bias_correction) {
  const int64_t B = x.size(1), H = W.size(0), HH = H * H, state_size = H + HH + (bias_correction ? 1 : 0);
  Tensor h = packed.slice(1, 0, H);
  const Tensor A = packed.slice(1, H, H + HH).reshape({B, H, H});
  std::optional<Tensor> starts;  // [1, B] in x's dtype, None when no row starts (as _prepare)
  if (episode_starts) {
    Tensor cast = episode_starts->to(x.device(), x.scalar_type());
    if (cast.any().item<bool>()) starts = cast;
  }
  Tensor h_out = out.slice(1, 0, H);
  Tensor A_out = out.slice(1, H, H + HH).view({B, H, H});
  std::optional<Tensor> write;  // the write weights w [B] (bias correction)
  if (bias_correction) {  // _bias_corrected_step with no write mask: m = 1 - λ (1 - m0), w = 1/m
    Tensor empty = at::rsub(packed.select(1, H + HH).to(at::kDouble), 1.0);
    if (starts) empty = at::where(starts->select(0, 0) > 0.5, 1.0, empty);
    Tensor m = at::rsub(at::mul(empty, decay), 1.0);
    write = at::reciprocal(m.clamp_min(std::numeric_limits<double>::min())).to(packed.scalar_type());
    out.select(1, H + HH).copy_(m.to(packed.scalar_type()));
  }
  out.slice(1, state_size).zero_();
  const Tensor zx = at::linear(x, C_weight, C_bias);
  // fast_weights_step_into: restarting rows are replaced after the step, never masked before it
  std::optional<Tensor> restart;
  if (starts) {
    Tensor bool_starts = *starts > 0.5;
    Tensor rows = bool_starts.select(0, 0).nonzero().squeeze(1);
    if (rows.numel() > 0) restart = rows;
    h = h.masked_fill(bool_starts.select(0, 0).unsqueeze(1), 0.0);
  }
  Tensor z = at::addmm(zx.select(0, 0), h, W.t());
  Tensor q = at::relu(z);
  const Tensor A_T = A.transpose(1, 2);
  const std::vector<int64_t> norm_shape{H};
  for (int64_t s = 0; s < inner_steps; ++s) {  // Eq. 5, with A(t-1) = 0 in the restarting rows
    Tensor u = at::baddbmm(z.unsqueeze(1), q.unsqueeze(1), A_T).squeeze(1);
    if (restart) u.index_copy_(0, *restart, z.index_select(0, *restart));
    if (layer_norm) u = normalize(u, norm_shape, ln_weight, ln_bias, eps, rms_norm);
    q = at::relu(u);
  }
  h_out.copy_(q);
  if (write) write = write->to(q.scalar_type());
  // step._write_terms: A <- keep A + value scaled q^T (Eq. 1, per-row weights with bias correction)
  Tensor keep, scaled = q;
  double value = fast_lr;
  if (write) {
    keep = at::rsub(at::mul(*write, 1.0 - decay), 1.0).unsqueeze(1).unsqueeze(2);
    scaled = q * at::mul(*write, fast_lr).unsqueeze(1);
    value = 1.0;
  } else {
    keep = at::scalar_tensor(decay, at::kDouble);  // a Python float, as torch.mul(A, λ, out=) wraps it
    keep.unsafeGetTensorImpl()->set_wrapped_number(true);
  }
  at::mul_out(A_out, A, keep);
  if (restart) A_out.index_fill_(0, *restart, 0.0);  // then A(t) = η h hᵀ there, as after a masked A
  A_out.addcmul_(scaled.unsqueeze(2), q.unsqueeze(1), value);
  return h_out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_steps", &forward_steps, "the chunked scan's forward loop over one chunk");
  m.def("backward_steps", &backward_steps, "the chunked scan's backward loop over one chunk");
  m.def("rollout_step", &rollout_step, "a rollout step of FastWeightsRNN on packed states, no autograd");
}
