// RMSNorm of Qwen2/Qwen3/Llama decoders, forward and backward, one pass over each row.
//
// The library's norm is eight PyTorch operations forward (cast to float32, square, mean, add eps,
// rsqrt, scale, cast back, times the weight) and about twice as many backward; at the widths of
// small models (128-576) each is a separate pass over memory with its own fixed cost, so the norms
// took ~15% of a training step. This computes the same function with the same rounding points:
// x in float32 (float64 inputs too, as the library casts them), rstd = 1 / sqrt(mean(x^2) + eps) in
// float32, h = x * rstd rounded to x's dtype, y = w * h in the promoted dtype of w and x. Backward:
// dh = dy * w rounded to x's dtype, dx = rstd * dh - x * rstd^3 * mean(dh * x) rounded to x's
// dtype, dw = sum over rows of dy * h (accumulated in float32 or float64, rounded to w's dtype).
// Sums inside a row run in another order than the library's, so results agree to rounding.
//
// Built with attention.cpp into one extension (fused.py); the ops live in its namespace.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace {

using fVec = at::vec::Vectorized<float>;
using bVec = at::vec::Vectorized<c10::BFloat16>;

// Row conversions to and from float32 buffers; bfloat16 a vector at a time (round to nearest even,
// as c10::BFloat16).
template <typename T>
void to_float(const T* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
}

template <>
void to_float<float>(const float* in, float* out, int64_t n) {
  std::copy(in, in + n, out);
}

template <>
void to_float<c10::BFloat16>(const c10::BFloat16* in, float* out, int64_t n) {
  constexpr int64_t W = fVec::size();
  for (int64_t i = 0; i < n; i += 2 * W) {
    const int64_t m = std::min<int64_t>(2 * W, n - i);
    auto [a, b] = at::vec::convert_to_float<c10::BFloat16>(bVec::loadu(in + i, m));
    a.store(out + i, std::min<int64_t>(W, m));
    if (m > W) b.store(out + i + W, m - W);
  }
}

template <typename T>
void from_float(const float* in, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(in[i]);
}

template <>
void from_float<c10::BFloat16>(const float* in, c10::BFloat16* out, int64_t n) {
  constexpr int64_t W = fVec::size();
  for (int64_t i = 0; i < n; i += 2 * W) {
    const int64_t m = std::min<int64_t>(2 * W, n - i);
    const fVec a = fVec::loadu(in + i, std::min<int64_t>(W, m));
    const fVec b = m > W ? fVec::loadu(in + i + W, m - W) : fVec(0.f);
    at::vec::convert_from_float<c10::BFloat16>(a, b).store(out + i, m);
  }
}

// Rounds float values to T's precision in place (nothing for float32 and float64).
template <typename T>
void round_to(float* values, int64_t n, c10::BFloat16* scratch) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    from_float(values, scratch, n);
    to_float(scratch, values, n);
  }
}

// The promoted dtype's arithmetic: float for float32 and bfloat16 results, double for float64.
template <typename O>
using Compute = std::conditional_t<std::is_same_v<O, double>, double, float>;

struct RowBuffers {
  std::vector<float> x, h;
  std::vector<c10::BFloat16> scratch;
  explicit RowBuffers(int64_t n) : x(n), h(n), scratch(n) {}
};

// x (rows, n) -> float32 x, rstd, and h = X(x * rstd) in `b`.
template <typename X>
float normalize(const X* row, int64_t n, double eps, RowBuffers& b) {
  to_float(row, b.x.data(), n);
  float squares = 0.f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < n; ++i) squares += b.x[i] * b.x[i];
  const float rstd = 1.f / std::sqrt(squares / static_cast<float>(n) + static_cast<float>(eps));
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) b.h[i] = b.x[i] * rstd;
  round_to<X>(b.h.data(), n, b.scratch.data());
  return rstd;
}

template <typename X, typename Wt, typename O>
void forward(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& y,
             at::Tensor& rstd) {
  using C = Compute<O>;
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const X* xp = x.data_ptr<X>();
  const Wt* wp = w.data_ptr<Wt>();
  O* yp = y.data_ptr<O>();
  float* rp = rstd.data_ptr<float>();
  std::vector<C> weight(n);
  for (int64_t i = 0; i < n; ++i) weight[i] = static_cast<C>(wp[i]);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    RowBuffers b(n);
    std::vector<C> out(n);
    for (int64_t r = begin; r < end; ++r) {
      rp[r] = normalize(xp + r * n, n, eps, b);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = weight[i] * static_cast<C>(b.h[i]);
      if constexpr (std::is_same_v<O, C>)
        std::copy(out.begin(), out.end(), yp + r * n);
      else
        from_float(out.data(), yp + r * n, n);
    }
  });
}

template <typename X, typename Wt, typename O>
void backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
              const at::Tensor& rstd, double eps, at::Tensor& dx, at::Tensor& dw) {
  using C = Compute<O>;
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const O* gp = dy.data_ptr<O>();
  const X* xp = x.data_ptr<X>();
  const Wt* wp = w.data_ptr<Wt>();
  const float* rp = rstd.data_ptr<float>();
  X* dxp = dx.data_ptr<X>();
  std::vector<C> weight(n);
  for (int64_t i = 0; i < n; ++i) weight[i] = static_cast<C>(wp[i]);
  // Per-thread sums of dy * h, added up at the end.
  const int64_t threads = at::get_num_threads();
  std::vector<C> weight_grads(threads * n, C(0));
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    RowBuffers b(n);
    std::vector<C> g(n);
    std::vector<float> dh(n), out(n);
    C* wg = weight_grads.data() + at::get_thread_num() * n;
    for (int64_t r = begin; r < end; ++r) {
      normalize(xp + r * n, n, eps, b);
      const float s = rp[r];
      if constexpr (std::is_same_v<O, C>)
        std::copy(gp + r * n, gp + (r + 1) * n, g.begin());
      else
        to_float(gp + r * n, g.data(), n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        wg[i] += g[i] * static_cast<C>(b.h[i]);
        dh[i] = static_cast<float>(g[i] * weight[i]);
      }
      round_to<X>(dh.data(), n, b.scratch.data());
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < n; ++i) dot += dh[i] * b.x[i];
      const float cube = s * s * s * dot / static_cast<float>(n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = s * dh[i] - b.x[i] * cube;
      from_float(out.data(), dxp + r * n, n);
    }
  });
  std::vector<C> total(n, C(0));
  for (int64_t t = 0; t < threads; ++t)
    for (int64_t i = 0; i < n; ++i) total[i] += weight_grads[t * n + i];
  Wt* dwp = dw.data_ptr<Wt>();
  for (int64_t i = 0; i < n; ++i) dwp[i] = static_cast<Wt>(total[i]);
}

// Calls f.template operator()<X, Wt, O>() for the supported dtype combinations.
template <typename F>
void dispatch(at::ScalarType x, at::ScalarType w, F&& f) {
  using at::kBFloat16, at::kDouble, at::kFloat;
  if (x == kFloat && w == kFloat) return f.template operator()<float, float, float>();
  if (x == kBFloat16 && w == kFloat) return f.template operator()<c10::BFloat16, float, float>();
  if (x == kBFloat16 && w == kBFloat16)
    return f.template operator()<c10::BFloat16, c10::BFloat16, c10::BFloat16>();
  if (x == kFloat && w == kBFloat16) return f.template operator()<float, c10::BFloat16, float>();
  if (x == kDouble && w == kDouble) return f.template operator()<double, double, double>();
  TORCH_CHECK(false, "rms_norm: unsupported dtypes ", x, " and ", w);
}

void check(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() >= 1,
              "rms_norm: x must be a contiguous CPU tensor");
  TORCH_CHECK(w.is_contiguous() && w.dim() == 1 && w.size(0) == x.size(-1),
              "rms_norm: the weight must be a contiguous vector of x's last dimension");
}

// y (x's shape, dtype promote(x, w)) and each row's rstd (float32, x's shape without its last
// dimension).
std::tuple<at::Tensor, at::Tensor> rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  check(x, w);
  auto y = at::empty(x.sizes(), x.options().dtype(at::promote_types(x.scalar_type(),
                                                                      w.scalar_type())));
  auto rstd = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(at::kFloat));
  dispatch(x.scalar_type(), w.scalar_type(),
           [&]<typename X, typename Wt, typename O>() { forward<X, Wt, O>(x, w, eps, y, rstd); });
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& dy, const at::Tensor& x,
                                                     const at::Tensor& w, const at::Tensor& rstd,
                                                     double eps) {
  check(x, w);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.is_contiguous() &&
                  dy.scalar_type() == at::promote_types(x.scalar_type(), w.scalar_type()),
              "rms_norm: the gradient must be contiguous, of the result's shape and dtype");
  TORCH_CHECK(rstd.scalar_type() == at::kFloat && rstd.numel() * x.size(-1) == x.numel(),
              "rms_norm: rstd must hold one float32 per row");
  auto dx = at::empty_like(x);
  auto dw = at::empty_like(w);
  dispatch(x.scalar_type(), w.scalar_type(), [&]<typename X, typename Wt, typename O>() {
    backward<X, Wt, O>(dy, x, w, rstd, eps, dx, dw);
  });
  return {dx, dw};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(FORESIGHT_LAYERS_NAMESPACE, m) {
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> (Tensor, Tensor)", &rms_norm);
  m.def(
      "rms_norm_backward(Tensor dy, Tensor x, Tensor w, Tensor rstd, float eps) -> "
      "(Tensor, Tensor)",
      &rms_norm_backward);
}
