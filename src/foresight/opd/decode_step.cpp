// One-token decode step of a Qwen2/Qwen3/Llama decoder on a CPU, all layers in one call.
//
// The matrix products go through ATen (at::linear, as the Python lean decoder's F.linear); what is
// between them (RMSNorm and the cast to the compute dtype, Qwen3's per-head norm, rotary, the KV
// cache write, one-token attention, SiLU·up, the residual adds) runs as plain loops over each row.
// For the small models trained on a CPU those in-between operations, ~50 per layer, cost more than
// the products themselves when each is a separate PyTorch call. The arithmetic and its rounding
// points are the Python lean decoder's (fast_decode.py), operation for operation: float32 norms,
// rotary and attention, inputs of each product rounded to the compute dtype (float32, or bfloat16
// under autocast), each product's result in it. What differs is the order of additions inside sums
// and the softmax's exp and division (at::vec's exp, one division per head): float32 results agree
// to ~1e-6 relative, bfloat16 ones to one rounding (tests/opd/test_decode_step.py).
//
// Built at first use by foresight.opd.fused (torch.utils.cpp_extension), cached per machine.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kPerLayer = 9;  // weights per layer, in the order of LeanDecoder.flat_weights

// out[t] = C(w[t] * (x[t] * rstd)), rstd = 1 / sqrt(mean(x^2) + eps): the model's RMSNorm in float32,
// its result rounded to the compute dtype C for the next product.
template <typename C>
void norm_to(const float* x, const float* w, float eps, int64_t n, C* out) {
  float squares = 0.f;
#pragma omp simd reduction(+ : squares)
  for (int64_t t = 0; t < n; ++t) squares += x[t] * x[t];
  const float rstd = 1.f / std::sqrt(squares / static_cast<float>(n) + eps);
  for (int64_t t = 0; t < n; ++t) out[t] = static_cast<C>(w[t] * (x[t] * rstd));
}

template <typename C>
at::Tensor normed(const at::Tensor& hidden, const at::Tensor& weight, float eps) {
  const int64_t rows = hidden.size(0), width = hidden.size(1);
  auto out = at::empty({rows, width}, hidden.options().dtype(c10::CppTypeToScalarType<C>::value));
  const float* x = hidden.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  C* y = out.template data_ptr<C>();
  for (int64_t i = 0; i < rows; ++i) norm_to(x + i * width, w, eps, width, y + i * width);
  return out;
}

// hidden += float(delta), delta in the compute dtype.
template <typename C>
void add_into(at::Tensor& hidden, const at::Tensor& delta) {
  float* h = hidden.data_ptr<float>();
  const C* d = delta.data_ptr<C>();
  const int64_t n = hidden.numel();
  for (int64_t t = 0; t < n; ++t) h[t] += static_cast<float>(d[t]);
}

struct Shape {
  int64_t heads, kv_heads, head_dim, capacity, start;
  const int64_t* cache_rows;  // row i of the batch is row cache_rows[i] of the KV cache
};

// Queries and keys of the fused QKV output: Qwen3's per-head norm (float32, rounded to C, times the
// norm weight), then rotary in float32. Queries go to `query` (b, heads, d); keys and values are
// written to column `start` of the cache: keys (b, kv heads, d, capacity), values (b, kv heads,
// capacity, d).
template <typename C>
void rotate_and_cache(const at::Tensor& qkv, const at::Tensor& qk_norm, float qk_eps,
                      const at::Tensor& cos, const at::Tensor& sin, const Shape& s,
                      at::Tensor& query, at::Tensor& keys, at::Tensor& values) {
  const int64_t rows = qkv.size(0), d = s.head_dim, half = d / 2;
  const int64_t rotated_heads = s.heads + s.kv_heads, width = qkv.size(1);
  const C* in = qkv.data_ptr<C>();
  const float* norm_w = qk_norm.numel() ? qk_norm.data_ptr<float>() : nullptr;
  const float* c = cos.data_ptr<float>();
  const float* sn = sin.data_ptr<float>();
  float* q = query.data_ptr<float>();
  float* k = keys.data_ptr<float>();
  float* v = values.data_ptr<float>();
  std::vector<float> head(d);
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t cache_row = s.cache_rows[i];
    const C* row = in + i * width;
    const float* row_cos = c + i * d;
    const float* row_sin = sn + i * d;
    for (int64_t u = 0; u < rotated_heads; ++u) {
      const C* x = row + u * d;
      if (norm_w != nullptr) {
        float squares = 0.f;
#pragma omp simd reduction(+ : squares)
        for (int64_t t = 0; t < d; ++t) {
          const float f = static_cast<float>(x[t]);
          squares += f * f;
        }
        const float rstd = 1.f / std::sqrt(squares / static_cast<float>(d) + qk_eps);
        const float* w = norm_w + u * d;
        for (int64_t t = 0; t < d; ++t)
          head[t] = w[t] * static_cast<float>(static_cast<C>(static_cast<float>(x[t]) * rstd));
      } else {
        for (int64_t t = 0; t < d; ++t) head[t] = static_cast<float>(x[t]);
      }
      // A query's elements are contiguous; a key's are one column of its (d, capacity) matrix.
      const bool is_query = u < s.heads;
      float* out = is_query ? q + (i * s.heads + u) * d
                            : k + (cache_row * s.kv_heads + (u - s.heads)) * d * s.capacity + s.start;
      const int64_t stride = is_query ? 1 : s.capacity;
      for (int64_t t = 0; t < half; ++t) {
        out[t * stride] = head[t] * row_cos[t] + (-head[t + half]) * row_sin[t];
        out[(t + half) * stride] = head[t + half] * row_cos[t + half] + head[t] * row_sin[t + half];
      }
    }
    const C* value_in = row + rotated_heads * d;
    for (int64_t j = 0; j < s.kv_heads; ++j) {
      float* out = v + ((cache_row * s.kv_heads + j) * s.capacity + s.start) * d;
      for (int64_t t = 0; t < d; ++t) out[t] = static_cast<float>(value_in[j * d + t]);
    }
  }
}

// The key cache's capacity is a multiple of this (fast_decode.py pads it), so the score loop reads
// whole blocks of columns (two vectors of AVX-512, four of AVX2).
constexpr int64_t kColumnBlock = 32;

// One query token per row over cache columns [0, start]: column c is read when the attention mask
// marks it real, and the query's own column always. Softmax in float32; result (b, heads * d).
void attend(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
            const at::Tensor& mask, const Shape& s, at::Tensor& attended) {
  using Vec = at::vec::Vectorized<float>;
  constexpr int64_t W = Vec::size();
  static_assert(kColumnBlock % (2 * W) == 0, "a block is read two vectors at a time");
  const int64_t rows = query.size(0), d = s.head_dim, groups = s.heads / s.kv_heads;
  const int64_t columns = s.start + 1, mask_width = mask.size(1);
  TORCH_CHECK(s.capacity % kColumnBlock == 0, "decode_step: key capacity must be padded");
  const float scale = static_cast<float>(std::pow(static_cast<double>(d), -0.5));  // d ** -0.5
  const float minus_inf = -std::numeric_limits<float>::infinity();
  const float* q = query.data_ptr<float>();
  const float* k = keys.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  const int64_t* m = mask.data_ptr<int64_t>();
  float* out = attended.data_ptr<float>();
  at::parallel_for(0, rows * s.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(s.capacity);
    float* sc = scores.data();
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t i = unit / s.heads, h = unit % s.heads, j = h / groups;
      const int64_t cache_row = s.cache_rows[i];
      const float* qh = q + unit * d;
      const float* row_keys = k + (cache_row * s.kv_heads + j) * d * s.capacity;  // (d, capacity)
      const float* row_values = v + (cache_row * s.kv_heads + j) * s.capacity * d;  // (capacity, d)
      const int64_t* real = m + i * mask_width;
      // Two vectors of columns at a time, even and odd t in separate accumulators.
      for (int64_t c0 = 0; c0 < columns; c0 += 2 * W) {
        Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
        int64_t t = 0;
        for (; t + 2 <= d; t += 2) {
          const float* k0 = row_keys + t * s.capacity + c0;
          const float* k1 = k0 + s.capacity;
          const Vec q0(qh[t]), q1(qh[t + 1]);
          a0 = a0 + q0 * Vec::loadu(k0);
          a1 = a1 + q0 * Vec::loadu(k0 + W);
          a2 = a2 + q1 * Vec::loadu(k1);
          a3 = a3 + q1 * Vec::loadu(k1 + W);
        }
        if (t < d) {
          const float* k0 = row_keys + t * s.capacity + c0;
          a0 = a0 + Vec(qh[t]) * Vec::loadu(k0);
          a1 = a1 + Vec(qh[t]) * Vec::loadu(k0 + W);
        }
        (a0 + a2).store(sc + c0);
        (a1 + a3).store(sc + c0 + W);
      }
      float top = minus_inf;
      for (int64_t c = 0; c < columns; ++c) {
        sc[c] = (real[c] != 0 || c == s.start) ? sc[c] * scale : minus_inf;
        top = std::max(top, sc[c]);
      }
      float total = 0.f;
      for (int64_t c0 = 0; c0 < columns; c0 += W) {
        const int64_t n = std::min<int64_t>(W, columns - c0);
        (Vec::loadu(sc + c0, n) - Vec(top)).exp().store(sc + c0, n);
        for (int64_t c = c0; c < c0 + n; ++c) total += sc[c];
      }
      // Each block of the head dimension accumulates over the columns, four at a time.
      const Vec inverse(1.f / total);
      float* o = out + unit * d;
      for (int64_t t0 = 0; t0 < d; t0 += W) {
        const int64_t n = std::min<int64_t>(W, d - t0);
        Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
        const float* vt = row_values + t0;
        int64_t c = 0;
        for (; c + 4 <= columns; c += 4) {
          a0 = a0 + Vec(sc[c]) * Vec::loadu(vt + c * d, n);
          a1 = a1 + Vec(sc[c + 1]) * Vec::loadu(vt + (c + 1) * d, n);
          a2 = a2 + Vec(sc[c + 2]) * Vec::loadu(vt + (c + 2) * d, n);
          a3 = a3 + Vec(sc[c + 3]) * Vec::loadu(vt + (c + 3) * d, n);
        }
        for (; c < columns; ++c) a0 = a0 + Vec(sc[c]) * Vec::loadu(vt + c * d, n);
        (((a0 + a1) + (a2 + a3)) * inverse).store(o + t0, n);
      }
    }
  });
}

// silu(gate) * up in the compute dtype: the library's own SiLU and product (vectorized, and the
// same rounding as the Python step).
at::Tensor silu_times_up(const at::Tensor& gate_up) {
  const int64_t inner = gate_up.size(1) / 2;
  return at::silu(gate_up.narrow(1, 0, inner)).mul_(gate_up.narrow(1, inner, inner));
}

std::optional<at::Tensor> maybe(const at::Tensor& t) {
  return t.numel() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The op's arguments (see decode_step below), as the templated step reads them.
struct Inputs {
  at::Tensor hidden;
  const at::Tensor &cos, &sin, &mask;
  int64_t start;
  const at::Tensor& cache_rows;
  at::TensorList weights, keys, values;
  const at::Tensor &final_norm, &head_weight;
  const std::optional<at::Tensor>& head_bias;
  int64_t heads, kv_heads;
  double eps, qk_eps;
};

template <typename C>
at::Tensor step(const Inputs& in) {
  at::Tensor hidden = in.hidden;
  const float eps = static_cast<float>(in.eps), qk_eps = static_cast<float>(in.qk_eps);
  const int64_t rows = hidden.size(0), layers = static_cast<int64_t>(in.keys.size());
  const Shape s{in.heads, in.kv_heads, in.keys[0].size(2), in.keys[0].size(3), in.start,
                in.cache_rows.data_ptr<int64_t>()};
  const auto f32 = hidden.options().dtype(at::kFloat);
  auto query = at::empty({rows, s.heads, s.head_dim}, f32);
  auto attended = at::empty({rows, s.heads * s.head_dim}, f32);
  const auto compute = in.head_weight.scalar_type();
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* w = in.weights.data() + l * kPerLayer;
    // w: input norm, qkv weight, qkv bias, qk norm, o weight, o bias, post norm, gate_up, down
    auto x = normed<C>(hidden, w[0], eps);
    auto qkv = at::linear(x, w[1], maybe(w[2]));
    TORCH_CHECK(qkv.size(1) == (s.heads + 2 * s.kv_heads) * s.head_dim,
                "decode_step: the QKV weight does not match heads, kv heads and head dim");
    auto keys = in.keys[l], values = in.values[l];
    rotate_and_cache<C>(qkv, w[3], qk_eps, in.cos, in.sin, s, query, keys, values);
    attend(query, keys, values, in.mask, s, attended);
    add_into<C>(hidden, at::linear(attended.to(compute), w[4], maybe(w[5])));
    x = normed<C>(hidden, w[6], eps);
    add_into<C>(hidden, at::linear(silu_times_up(at::linear(x, w[7])), w[8]));
  }
  return at::linear(normed<C>(hidden, in.final_norm, eps), in.head_weight, in.head_bias);
}

// hidden (b, H) float32, the new tokens' embeddings (updated in place); cos, sin (b, d) float32;
// mask (b, start + 1) int64: 1 on real cache columns; cache_rows (b,) int64: each row's row of the
// KV cache (rows that stopped stay in the cache, unread); weights: 9 per layer, products' weights in
// the compute dtype, norms' weights float32, absent ones as empty tensors; keys, values: per layer
// keys (b, kv heads, d, capacity), values (b, kv heads, capacity, d), float32. Returns the logits
// (b, V) in the compute dtype.
at::Tensor decode_step(at::Tensor hidden, const at::Tensor& cos, const at::Tensor& sin,
                       const at::Tensor& mask, int64_t start, const at::Tensor& cache_rows,
                       at::TensorList weights, at::TensorList keys, at::TensorList values,
                       const at::Tensor& final_norm,
                       const at::Tensor& head_weight, const std::optional<at::Tensor>& head_bias,
                       int64_t heads, int64_t kv_heads, double eps, double qk_eps) {
  const int64_t rows = hidden.size(0);
  TORCH_CHECK(hidden.device().is_cpu() && hidden.scalar_type() == at::kFloat &&
                  hidden.is_contiguous() && hidden.dim() == 2,
              "decode_step: hidden must be a contiguous (b, H) float32 CPU tensor");
  TORCH_CHECK(!keys.empty() && keys.size() == values.size() &&
                  static_cast<int64_t>(weights.size()) ==
                      kPerLayer * static_cast<int64_t>(keys.size()),
              "decode_step: expected keys and values per layer and ", kPerLayer,
              " weights per layer");
  const int64_t cache_batch = keys[0].size(0), d = keys[0].size(2), capacity = keys[0].size(3);
  for (size_t l = 0; l < keys.size(); ++l) {
    TORCH_CHECK(keys[l].scalar_type() == at::kFloat && keys[l].is_contiguous() &&
                    keys[l].sizes() == at::IntArrayRef({cache_batch, kv_heads, d, capacity}),
                "decode_step: keys must be contiguous float32 (B, kv heads, d, capacity)");
    TORCH_CHECK(values[l].scalar_type() == at::kFloat && values[l].is_contiguous() &&
                    values[l].sizes() == at::IntArrayRef({cache_batch, kv_heads, capacity, d}),
                "decode_step: values must be contiguous float32 (B, kv heads, capacity, d)");
  }
  TORCH_CHECK(start >= 0 && start < capacity, "decode_step: the cache is full (start ", start,
              ", capacity ", capacity, ")");
  TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && d % 2 == 0,
              "decode_step: heads must be a multiple of kv heads, and head dim even");
  TORCH_CHECK(mask.scalar_type() == at::kLong && mask.is_contiguous() &&
                  mask.sizes() == at::IntArrayRef({rows, start + 1}),
              "decode_step: mask must be a contiguous (b, start + 1) int64 tensor");
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() &&
                    t->sizes() == at::IntArrayRef({rows, d}),
                "decode_step: cos and sin must be contiguous (b, head dim) float32");
  TORCH_CHECK(cache_rows.scalar_type() == at::kLong && cache_rows.is_contiguous() &&
                  cache_rows.numel() == rows,
              "decode_step: cache_rows must be a contiguous (b,) int64 tensor");
  const int64_t* cache_row = cache_rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i)
    TORCH_CHECK(cache_row[i] >= 0 && cache_row[i] < cache_batch,
                "decode_step: cache_rows out of range");
  const Inputs in{hidden,  cos,         sin,       mask,   start,  cache_rows,
                  weights, keys,        values,    final_norm,     head_weight,
                  head_bias, heads,     kv_heads,  eps,    qk_eps};
  if (head_weight.scalar_type() == at::kBFloat16) return step<c10::BFloat16>(in);
  TORCH_CHECK(head_weight.scalar_type() == at::kFloat,
              "decode_step: the compute dtype must be float32 or bfloat16");
  return step<float>(in);
}

}  // namespace

// The namespace carries a hash of this source (fused.py), so two versions can load in one process.
TORCH_LIBRARY(FORESIGHT_DECODE_NAMESPACE, m) {
  m.def(
      "decode_step(Tensor(a!) hidden, Tensor cos, Tensor sin, Tensor mask, int start, "
      "Tensor cache_rows, Tensor[] weights, Tensor(b!)[] keys, Tensor(c!)[] values, "
      "Tensor final_norm, "
      "Tensor head_weight, Tensor? head_bias, int heads, int kv_heads, float eps, "
      "float qk_eps) -> Tensor",
      &decode_step);
}
