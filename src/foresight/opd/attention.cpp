// Causal / masked softmax attention for the training and scoring forward on a CPU, with its
// backward: the same function as torch's scaled_dot_product_attention (no dropout), for the short
// sequences of small models.
//
// torch's CPU flash kernel works in blocks of 32+ queries and keys through small GEMM calls, and at
// the sequence lengths these models train on (tens of tokens, head dim 32-64) its fixed costs
// dominate: 3-4 ms per layer for 64 rows x 40 tokens x 4 heads, ~10 GFLOP/s. Here each query row
// is one pass over its keys with the keys transposed (scores for a run of keys come from one
// vectorized multiply-add per head dimension), the softmax's exp is at::vec's, and grouped-query
// heads read their key/value head directly instead of a repeated copy. Work units are
// (batch row, key/value head), so gradients of keys and values need no atomics.
//
// Layouts: query (B, H, T, d), key and value (B, KV, T, d), any strides with the last dimension
// contiguous; the result is (B, T, H, d), as the library's attention functions return it. A query
// attends the keys its mask row marks (bool (B, 1 or H, T, T)), or keys 0..i when causal (no mask).
// A query with no key at all gives zeros, and log-sum-exp -inf (no gradient).
//
// Built at first use with rms_norm.cpp into one extension by foresight.opd.fused
// (torch.utils.cpp_extension), cached per machine.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

namespace {

// Element (b, h, t, 0) of a (B, heads, T, d) tensor with the last dimension contiguous.
template <typename S>
struct Rows {
  S* data;
  int64_t sb, sh, st;
  S* at(int64_t b, int64_t h, int64_t t) const { return data + b * sb + h * sh + t * st; }
};

template <typename S>
Rows<S> rows_of(const at::Tensor& t) {
  return {static_cast<S*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2)};
}

// The keys query i reads: [lo, hi] (none when hi < lo); `allowed` marks them when some key inside
// is masked (nullptr: all). Vector loops cover [begin, end), [lo, hi] rounded out to whole vectors.
struct Span {
  int64_t lo, hi, begin, end;
  const bool* allowed;
};

struct Problem {
  int64_t batch, heads, kv_heads, length, dim;
  const bool* mask;  // (B, mask_heads, T, T) or nullptr for causal
  int64_t mask_heads;
  double scale;
  int64_t padded;  // length rounded up to whole vectors: the transposed heads' row length

  // Each query's span for head h of batch row b.
  void spans(int64_t b, int64_t h, int64_t width, std::vector<Span>& out) const {
    for (int64_t i = 0; i < length; ++i) {
      int64_t lo = 0, hi = i;
      const bool* row = nullptr;
      if (mask != nullptr) {
        row = mask + ((b * mask_heads + (mask_heads == 1 ? 0 : h)) * length + i) * length;
        // A bool is one byte, 0 or 1: memchr and memrchr scan the row a vector at a time.
        const void* first = std::memchr(row, 1, length);
        if (first == nullptr) {
          out[i] = {0, -1, 0, 0, nullptr};
          continue;
        }
        lo = static_cast<const bool*>(first) - row;
        hi = static_cast<const bool*>(memrchr(row, 1, length)) - row;
        if (std::memchr(row + lo, 0, hi - lo + 1) == nullptr) row = nullptr;
      }
      out[i] = {lo, hi, lo / width * width, (hi + width) / width * width, row};
    }
  }
};

template <typename S>
using Vec = at::vec::Vectorized<S>;

// Asks for the cache lines of a row of `dim` elements ahead of its use: the rows of successive
// queries are cold (written by the previous operation, evicted since), and one query's work is
// shorter than a trip to memory.
template <int Write = 0, typename S>
void prefetch_row(const S* row, int64_t dim) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t byte = 0; byte < dim * static_cast<int64_t>(sizeof(S)); byte += 64)
    __builtin_prefetch(p + byte, Write);
}

constexpr int64_t kAhead = 2;  // queries ahead

// sum_c x[c] * y[c].
template <typename S>
S dot(const S* x, const S* y, int64_t dim) {
  constexpr int64_t W = Vec<S>::size();
  Vec<S> total(S(0));
  for (int64_t c = 0; c < dim; c += W) {
    const int64_t n = std::min<int64_t>(W, dim - c);
    total = at::vec::fmadd(Vec<S>::loadu(x + c, n), Vec<S>::loadu(y + c, n), total);
  }
  S lanes[W];
  total.store(lanes);
  return std::accumulate(lanes, lanes + W, S(0));
}

// out[j] = sum_c x[c] * cols[c * stride + j] for j in [begin, end), whole vectors.
template <typename S>
void dots(const S* x, const S* cols, int64_t dim, int64_t stride, int64_t begin, int64_t end,
          S* out) {
  constexpr int64_t W = Vec<S>::size();
  for (int64_t j = begin; j < end; j += W) {
    Vec<S> a0(S(0)), a1(S(0)), a2(S(0)), a3(S(0));
    const S* col = cols + j;
    int64_t c = 0;
    for (; c + 4 <= dim; c += 4) {
      a0 = at::vec::fmadd(Vec<S>(x[c]), Vec<S>::loadu(col + c * stride), a0);
      a1 = at::vec::fmadd(Vec<S>(x[c + 1]), Vec<S>::loadu(col + (c + 1) * stride), a1);
      a2 = at::vec::fmadd(Vec<S>(x[c + 2]), Vec<S>::loadu(col + (c + 2) * stride), a2);
      a3 = at::vec::fmadd(Vec<S>(x[c + 3]), Vec<S>::loadu(col + (c + 3) * stride), a3);
    }
    for (; c < dim; ++c) a0 = at::vec::fmadd(Vec<S>(x[c]), Vec<S>::loadu(col + c * stride), a0);
    ((a0 + a1) + (a2 + a3)).store(out + j);
  }
}

// out[c] = sum_j w[j] * rows[j * stride + c] over j in [lo, hi].
template <typename S>
void weighted_rows(const S* w, const S* rows, int64_t stride, int64_t lo, int64_t hi, int64_t dim,
                   S* out) {
  constexpr int64_t W = Vec<S>::size();
  for (int64_t c0 = 0; c0 < dim; c0 += W) {
    const int64_t n = std::min<int64_t>(W, dim - c0);
    Vec<S> a0(S(0)), a1(S(0)), a2(S(0)), a3(S(0));
    const S* r = rows + c0;
    int64_t j = lo;
    for (; j + 4 <= hi + 1; j += 4) {
      a0 = at::vec::fmadd(Vec<S>(w[j]), Vec<S>::loadu(r + j * stride, n), a0);
      a1 = at::vec::fmadd(Vec<S>(w[j + 1]), Vec<S>::loadu(r + (j + 1) * stride, n), a1);
      a2 = at::vec::fmadd(Vec<S>(w[j + 2]), Vec<S>::loadu(r + (j + 2) * stride, n), a2);
      a3 = at::vec::fmadd(Vec<S>(w[j + 3]), Vec<S>::loadu(r + (j + 3) * stride, n), a3);
    }
    for (; j <= hi; ++j) a0 = at::vec::fmadd(Vec<S>(w[j]), Vec<S>::loadu(r + j * stride, n), a0);
    ((a0 + a1) + (a2 + a3)).store(out + c0, n);
  }
}

// acc[j * dim + c] += w[j] * x[c] for j in [lo, hi].
template <typename S>
void add_outer(const S* w, const S* x, int64_t lo, int64_t hi, int64_t dim, S* acc) {
  constexpr int64_t W = Vec<S>::size();
  for (int64_t c0 = 0; c0 < dim; c0 += W) {
    const int64_t n = std::min<int64_t>(W, dim - c0);
    const Vec<S> xv = Vec<S>::loadu(x + c0, n);
    for (int64_t j = lo; j <= hi; ++j) {
      S* a = acc + j * dim + c0;
      at::vec::fmadd(Vec<S>(w[j]), xv, Vec<S>::loadu(a, n)).store(a, n);
    }
  }
}

// Scores of query q (scaled) over [begin, end) from the transposed keys; -inf outside the span and
// on masked keys. Returns their maximum.
template <typename S>
S scores(const S* q, const S* keys_t, const Span& span, const Problem& p, S* s) {
  constexpr int64_t W = Vec<S>::size();
  dots(q, keys_t, p.dim, p.padded, span.begin, span.end, s);
  const S minus_inf = -std::numeric_limits<S>::infinity();
  const Vec<S> scale(static_cast<S>(p.scale));
  for (int64_t j = span.begin; j < span.end; j += W) (Vec<S>::loadu(s + j) * scale).store(s + j);
  for (int64_t j = span.begin; j < span.lo; ++j) s[j] = minus_inf;
  for (int64_t j = span.hi + 1; j < span.end; ++j) s[j] = minus_inf;
  if (span.allowed != nullptr)
    for (int64_t j = span.lo; j <= span.hi; ++j)
      if (!span.allowed[j]) s[j] = minus_inf;
  Vec<S> top(minus_inf);
  for (int64_t j = span.begin; j < span.end; j += W) top = at::vec::maximum(top, Vec<S>::loadu(s + j));
  S lanes[W];
  top.store(lanes);
  return *std::max_element(lanes, lanes + W);
}

// s[j] = exp(s[j] - shift) over [begin, end); returns their sum.
template <typename S>
S exp_shifted(S* s, const Span& span, S shift) {
  constexpr int64_t W = Vec<S>::size();
  Vec<S> total(S(0));
  for (int64_t j = span.begin; j < span.end; j += W) {
    const Vec<S> e = (Vec<S>::loadu(s + j) - Vec<S>(shift)).exp();
    e.store(s + j);
    total = total + e;
  }
  S lanes[W];
  total.store(lanes);
  return std::accumulate(lanes, lanes + W, S(0));
}

// (d, padded) copy of one (T, d) key or value head, zeros past T.
template <typename S>
void transpose_head(const Rows<const S>& x, int64_t b, int64_t g, const Problem& p, S* out) {
  const S* head = x.at(b, g, 0);
  for (int64_t c = 0; c < p.dim; ++c) {
    S* column = out + c * p.padded;
    for (int64_t t = 0; t < p.length; ++t) column[t] = head[t * x.st + c];
    std::fill(column + p.length, column + p.padded, S(0));
  }
}

template <typename S>
void forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
             const Problem& p, at::Tensor& out, at::Tensor& lse) {
  const auto q = rows_of<const S>(query), k = rows_of<const S>(key), v = rows_of<const S>(value);
  S* o = out.data_ptr<S>();  // (B, T, H, d)
  S* l = lse.data_ptr<S>();  // (B, H, T)
  const int64_t T = p.length, d = p.dim, groups = p.heads / p.kv_heads;
  at::parallel_for(0, p.batch * p.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<S> keys_t(d * p.padded), s(p.padded);
    std::vector<Span> spans(T);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / p.kv_heads, g = unit % p.kv_heads;
      transpose_head(k, b, g, p, keys_t.data());
      for (int64_t h = g * groups; h < (g + 1) * groups; ++h) {
        if (h == g * groups || p.mask_heads > 1) p.spans(b, h, Vec<S>::size(), spans);
        for (int64_t i = 0; i < T; ++i) {
          if (i + kAhead < T) {
            prefetch_row(q.at(b, h, i + kAhead), d);
            prefetch_row<1>(o + ((b * T + i + kAhead) * p.heads + h) * d, d);
          }
          S* oi = o + ((b * T + i) * p.heads + h) * d;
          const Span& span = spans[i];
          S* li = l + (b * p.heads + h) * T + i;
          if (span.hi < span.lo) {
            std::fill(oi, oi + d, S(0));
            *li = -std::numeric_limits<S>::infinity();
            continue;
          }
          const S top = scores(q.at(b, h, i), keys_t.data(), span, p, s.data());
          const S total = exp_shifted(s.data(), span, top);
          weighted_rows(s.data(), v.at(b, g, 0), v.st, span.lo, span.hi, d, oi);
          const S inverse = S(1) / total;
          for (int64_t c = 0; c < d; ++c) oi[c] *= inverse;
          *li = top + std::log(total);
        }
      }
    }
  });
}

template <typename S>
void backward(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
              const at::Tensor& value, const at::Tensor& out, const at::Tensor& lse,
              const Problem& p, at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_v) {
  const auto q = rows_of<const S>(query), k = rows_of<const S>(key), v = rows_of<const S>(value);
  const auto dq = rows_of<S>(grad_q), dk = rows_of<S>(grad_k), dv = rows_of<S>(grad_v);
  const S* o = out.data_ptr<S>();        // (B, T, H, d)
  const S* go = grad_out.data_ptr<S>();  // (B, T, H, d)
  const S* l = lse.data_ptr<S>();
  const int64_t T = p.length, d = p.dim, groups = p.heads / p.kv_heads;
  const Vec<S> scale(static_cast<S>(p.scale));
  constexpr int64_t W = Vec<S>::size();
  at::parallel_for(0, p.batch * p.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<S> keys_t(d * p.padded), values_t(d * p.padded), s(p.padded), ds(p.padded);
    std::vector<S> dkg(T * d), dvg(T * d);
    std::vector<Span> spans(T);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / p.kv_heads, g = unit % p.kv_heads;
      transpose_head(k, b, g, p, keys_t.data());
      transpose_head(v, b, g, p, values_t.data());
      std::fill(dkg.begin(), dkg.end(), S(0));
      std::fill(dvg.begin(), dvg.end(), S(0));
      for (int64_t h = g * groups; h < (g + 1) * groups; ++h) {
        if (h == g * groups || p.mask_heads > 1) p.spans(b, h, Vec<S>::size(), spans);
        for (int64_t i = 0; i < T; ++i) {
          if (i + kAhead < T) {
            const int64_t ahead = ((b * T + i + kAhead) * p.heads + h) * d;
            prefetch_row(q.at(b, h, i + kAhead), d);
            prefetch_row(o + ahead, d);
            prefetch_row(go + ahead, d);
            prefetch_row<1>(dq.at(b, h, i + kAhead), d);
          }
          S* dq_i = dq.at(b, h, i);
          const Span& span = spans[i];
          if (span.hi < span.lo) {
            std::fill(dq_i, dq_i + d, S(0));
            continue;
          }
          const S* qi = q.at(b, h, i);
          const S* oi = o + ((b * T + i) * p.heads + h) * d;
          const S* goi = go + ((b * T + i) * p.heads + h) * d;
          scores(qi, keys_t.data(), span, p, s.data());
          exp_shifted(s.data(), span, l[(b * p.heads + h) * T + i]);  // the softmax weights
          const Vec<S> delta(dot(goi, oi, d));  // sum_c dO_ic O_ic = sum_j P_ij dP_ij
          dots(goi, values_t.data(), d, p.padded, span.begin, span.end, ds.data());  // dP
          for (int64_t j = span.begin; j < span.end; j += W)  // dS, scaled (zero outside the span)
            (Vec<S>::loadu(s.data() + j) * (Vec<S>::loadu(ds.data() + j) - delta) * scale)
                .store(ds.data() + j);
          weighted_rows(ds.data(), k.at(b, g, 0), k.st, span.lo, span.hi, d, dq_i);
          add_outer(ds.data(), qi, span.lo, span.hi, d, dkg.data());
          add_outer(s.data(), goi, span.lo, span.hi, d, dvg.data());
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        std::copy(dkg.data() + t * d, dkg.data() + (t + 1) * d, dk.at(b, g, t));
        std::copy(dvg.data() + t * d, dvg.data() + (t + 1) * d, dv.at(b, g, t));
      }
    }
  });
}

void check_last_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.stride(3) == 1, "attention: ", name,
              " must be 4-D with its last dimension contiguous");
}

Problem problem(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                const std::optional<at::Tensor>& mask, double scale) {
  check_last_contiguous(query, "query");
  check_last_contiguous(key, "key");
  check_last_contiguous(value, "value");
  const int64_t B = query.size(0), H = query.size(1), T = query.size(2), d = query.size(3);
  const int64_t KV = key.size(1);
  TORCH_CHECK(query.device().is_cpu(), "attention: CPU tensors only");
  TORCH_CHECK(query.scalar_type() == at::kFloat || query.scalar_type() == at::kDouble,
              "attention: float32 or float64 only");
  TORCH_CHECK(key.scalar_type() == query.scalar_type() &&
                  value.scalar_type() == query.scalar_type(),
              "attention: query, key and value must share a dtype");
  TORCH_CHECK(key.sizes() == at::IntArrayRef({B, KV, T, d}) && value.sizes() == key.sizes(),
              "attention: key and value must be (B, KV, T, d) with the query's B, T and d");
  TORCH_CHECK(KV > 0 && H % KV == 0, "attention: heads must be a multiple of key/value heads");
  const int64_t width = query.scalar_type() == at::kDouble ? Vec<double>::size() : Vec<float>::size();
  Problem p{B, H, KV, T, d, nullptr, 1, scale, (T + width - 1) / width * width};
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kBool && m.is_contiguous() && m.dim() == 4 &&
                    m.size(0) == B && (m.size(1) == 1 || m.size(1) == H) && m.size(2) == T &&
                    m.size(3) == T,
                "attention: the mask must be a contiguous bool (B, 1 or H, T, T) tensor");
    p.mask = m.data_ptr<bool>();
    p.mask_heads = m.size(1);
  }
  return p;
}

// Returns the result (B, T, H, d) and each query's log-sum-exp of scores (B, H, T).
std::tuple<at::Tensor, at::Tensor> attention_forward(const at::Tensor& query,
                                                     const at::Tensor& key,
                                                     const at::Tensor& value,
                                                     const std::optional<at::Tensor>& mask,
                                                     double scale) {
  const Problem p = problem(query, key, value, mask, scale);
  auto out = at::empty({p.batch, p.length, p.heads, p.dim}, query.options());
  auto lse = at::empty({p.batch, p.heads, p.length}, query.options());
  if (query.scalar_type() == at::kDouble)
    forward<double>(query, key, value, p, out, lse);
  else
    forward<float>(query, key, value, p, out, lse);
  return {out, lse};
}

// Gradients of query, key and value (their shapes and strides) from the gradient of the result.
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& mask, const at::Tensor& out,
    const at::Tensor& lse, double scale) {
  const Problem p = problem(query, key, value, mask, scale);
  const std::vector<int64_t> result_shape{p.batch, p.length, p.heads, p.dim};
  TORCH_CHECK(out.sizes() == at::IntArrayRef(result_shape) && out.is_contiguous() &&
                  grad_out.sizes() == at::IntArrayRef(result_shape) && grad_out.is_contiguous() &&
                  out.scalar_type() == query.scalar_type() &&
                  grad_out.scalar_type() == query.scalar_type(),
              "attention: the result and its gradient must be contiguous (B, T, H, d)");
  TORCH_CHECK(lse.scalar_type() == query.scalar_type() && lse.is_contiguous() &&
                  lse.sizes() == at::IntArrayRef({p.batch, p.heads, p.length}),
              "attention: lse must be a contiguous (B, H, T) tensor of the query's dtype");
  auto grad_q = at::empty_like(query), grad_k = at::empty_like(key),
       grad_v = at::empty_like(value);
  if (query.scalar_type() == at::kDouble)
    backward<double>(grad_out, query, key, value, out, lse, p, grad_q, grad_k, grad_v);
  else
    backward<float>(grad_out, query, key, value, out, lse, p, grad_q, grad_k, grad_v);
  return {grad_q, grad_k, grad_v};
}

}  // namespace

// The namespace carries a hash of this source (fused.py), so two versions can load in one process.
TORCH_LIBRARY_FRAGMENT(FORESIGHT_LAYERS_NAMESPACE, m) {
  m.def(
      "attention_forward(Tensor query, Tensor key, Tensor value, Tensor? mask, float scale) "
      "-> (Tensor, Tensor)",
      &attention_forward);
  m.def(
      "attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, "
      "Tensor? mask, Tensor out, Tensor lse, float scale) -> (Tensor, Tensor, Tensor)",
      &attention_backward);
}
