"""A hand-written CPU kernel of the linear spline (forward and backward in one pass each).

The eager path computes an index tensor, gathers two tables and reduces the table gradients
with ``bincount``: several passes over memory per call. Here each (image, channel) plane is
read once: forward ``y = a[c, k(x)] + x * s[c, k(x)]``; backward ``grad_x = g * s[c, k(x)]``
with the table gradients ``sum g`` and ``sum g * x`` per interval accumulated in float64 in
per-thread buffers (no atomics), then summed. ``spline_pad_forward`` / ``spline_pad_backward``
are the fused training variant (:mod:`lipden.nn.fused`): channels-last bfloat16 in and out,
float32 arithmetic, the next convolution's circular padding written in the same pass.
Compiled with the machine's C++ compiler (with OpenMP) on first use
(``torch.utils.cpp_extension``, cached between processes); :func:`native_kernels` returns None
when that is impossible, and the eager path is used instead.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

template <typename T>
inline int32_t interval(T x, T scale, T shift, T last) {
  // selects, not branches, so that the loops vectorize; NaN fails u >= 0 and goes to interval 0
  T u = std::floor(x * scale + shift);
  u = u >= T(0) ? u : T(0);
  u = u <= last ? u : last;
  return static_cast<int32_t>(u);
}

void check(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& a, const at::Tensor& s) {
  TORCH_CHECK(x.device().is_cpu() && x.is_contiguous() && x.dim() >= 2, "spline kernel: contiguous CPU (B, C, ...) input");
  TORCH_CHECK(a.dim() == 2 && s.sizes() == a.sizes() && a.size(0) == x.size(1), "spline kernel: (C, K) tables");
  TORCH_CHECK(scale.numel() == x.size(1), "spline kernel: (C,) index scale");
  TORCH_CHECK(a.is_contiguous() && s.is_contiguous() && scale.is_contiguous(), "spline kernel: contiguous tables");
  TORCH_CHECK(a.scalar_type() == x.scalar_type() && s.scalar_type() == x.scalar_type() &&
              scale.scalar_type() == x.scalar_type(), "spline kernel: one dtype");
}

}  // namespace

at::Tensor spline_forward(at::Tensor x, at::Tensor scale, double shift, at::Tensor a, at::Tensor s) {
  check(x, scale, a, s);
  auto y = at::empty_like(x);
  const int64_t channels = x.size(1), intervals = a.size(1);
  const int64_t planes = x.numel() ? x.size(0) * channels : 0;
  const int64_t plane = planes ? x.numel() / planes : 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spline_forward", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    scalar_t* py = y.data_ptr<scalar_t>();
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* ps = s.data_ptr<scalar_t>();
    const scalar_t* pscale = scale.data_ptr<scalar_t>();
    const scalar_t sh = static_cast<scalar_t>(shift);
    const scalar_t last = static_cast<scalar_t>(intervals - 1);
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % channels;
        const scalar_t sc = pscale[c];
        const scalar_t* ta = pa + c * intervals;
        const scalar_t* ts = ps + c * intervals;
        const scalar_t* xi = px + p * plane;
        scalar_t* yi = py + p * plane;
        for (int64_t i = 0; i < plane; ++i) {
          const scalar_t v = xi[i];
          const int32_t k = interval(v, sc, sh, last);
          yi[i] = ta[k] + v * ts[k];
        }
      }
    });
  });
  return y;
}

std::vector<at::Tensor> spline_backward(at::Tensor x, at::Tensor g, at::Tensor scale, double shift, at::Tensor a,
                                        at::Tensor s) {
  check(x, scale, a, s);
  g = g.contiguous();
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == x.scalar_type(), "spline kernel: gradient like input");
  auto grad_x = at::empty_like(x);
  const int64_t channels = x.size(1), intervals = a.size(1), table = channels * intervals;
  const int64_t planes = x.numel() ? x.size(0) * channels : 0;
  const int64_t plane = planes ? x.numel() / planes : 0;
  const int64_t threads = at::get_num_threads();
  // per thread: two interleaved copies of (sum g, sum g x), so that consecutive entries of one
  // interval do not wait on each other's additions
  std::vector<double> sums(static_cast<size_t>(threads) * 4 * table, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spline_backward", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* pgx = grad_x.data_ptr<scalar_t>();
    const scalar_t* ps = s.data_ptr<scalar_t>();
    const scalar_t* pscale = scale.data_ptr<scalar_t>();
    const scalar_t sh = static_cast<scalar_t>(shift);
    const scalar_t last = static_cast<scalar_t>(intervals - 1);
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      double* mine = sums.data() + static_cast<size_t>(at::get_thread_num()) * 4 * table;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % channels;
        const scalar_t sc = pscale[c];
        const scalar_t* ts = ps + c * intervals;
        double* ga0 = mine + c * intervals;
        double* gs0 = mine + table + c * intervals;
        double* ga1 = mine + 2 * table + c * intervals;
        double* gs1 = mine + 3 * table + c * intervals;
        const scalar_t* xi = px + p * plane;
        const scalar_t* gi = pg + p * plane;
        scalar_t* gxi = pgx + p * plane;
        for (int64_t i = 0; i < plane; i += 2) {  // table sums in float64, two interleaved copies
          const int32_t k0 = interval(xi[i], sc, sh, last);
          const double w0 = static_cast<double>(gi[i]);
          gxi[i] = gi[i] * ts[k0];
          ga0[k0] += w0;
          gs0[k0] += w0 * static_cast<double>(xi[i]);
          if (i + 1 < plane) {
            const int32_t k1 = interval(xi[i + 1], sc, sh, last);
            const double w1 = static_cast<double>(gi[i + 1]);
            gxi[i + 1] = gi[i + 1] * ts[k1];
            ga1[k1] += w1;
            gs1[k1] += w1 * static_cast<double>(xi[i + 1]);
          }
        }
      }
    });
  });
  auto total = at::zeros({2, channels, intervals}, at::kDouble);
  double* pt = total.data_ptr<double>();
  for (int64_t t = 0; t < threads; ++t) {
    const double* part = sums.data() + static_cast<size_t>(t) * 4 * table;
    for (int64_t j = 0; j < 2 * table; ++j) pt[j] += part[j] + part[2 * table + j];
  }
  return {grad_x, total[0].to(a.scalar_type()), total[1].to(s.scalar_type())};
}

namespace {

void check_padded(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& a, const at::Tensor& s, int64_t ph,
                  int64_t pw) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast) &&
              x.scalar_type() == at::kBFloat16, "padded spline kernel: channels-last bfloat16 CPU (B, C, H, W) input");
  TORCH_CHECK(a.dim() == 2 && s.sizes() == a.sizes() && a.size(0) == x.size(1) && scale.numel() == x.size(1),
              "padded spline kernel: (C, K) tables and (C,) index scale");
  TORCH_CHECK(a.is_contiguous() && s.is_contiguous() && scale.is_contiguous() && a.scalar_type() == at::kFloat &&
              s.scalar_type() == at::kFloat && scale.scalar_type() == at::kFloat,
              "padded spline kernel: contiguous float32 tables");
  TORCH_CHECK(ph >= 0 && pw >= 0 && ph <= x.size(2) && pw <= x.size(3), "padded spline kernel: padding within the image");
}

// bfloat16 <-> float32 as bit operations (vectorizable): widening is exact; narrowing rounds to
// nearest even, NaN to the quiet NaN 0x7FC0, as c10::BFloat16 and Tensor.to(torch.bfloat16) do.
inline float widen(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t narrow(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;
  return f != f ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(rounded);
}

}  // namespace

// Channels-last (B, H, W, C in memory) bfloat16 x; returns circular_pad(bfloat16(spline(float(x)))),
// channels-last too: the spline in float32, rounded once to bfloat16 (as a float32 spline followed
// by the cast autocast makes for the next convolution), written straight into the padded image.
at::Tensor spline_pad_forward(at::Tensor x, at::Tensor scale, double shift, at::Tensor a, at::Tensor s, int64_t ph,
                              int64_t pw) {
  check_padded(x, scale, a, s, ph, pw);
  const int64_t batch = x.size(0), channels = x.size(1), h = x.size(2), w = x.size(3), intervals = a.size(1);
  const int64_t hp = h + 2 * ph, wp = w + 2 * pw;
  auto y = at::empty({batch, channels, hp, wp}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const uint16_t* __restrict__ px = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  uint16_t* __restrict__ py = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  const float* __restrict__ pa = a.data_ptr<float>();
  const float* __restrict__ ps = s.data_ptr<float>();
  const float* __restrict__ pscale = scale.data_ptr<float>();
  const float sh = static_cast<float>(shift);
  const float last = static_cast<float>(intervals - 1);
  std::vector<int32_t> offsets(channels);
  for (int64_t c = 0; c < channels; ++c) offsets[c] = static_cast<int32_t>(c * intervals);
  const int32_t* __restrict__ po = offsets.data();
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      uint16_t* image = py + b * hp * wp * channels;
      for (int64_t r = 0; r < h; ++r) {
        uint16_t* row = image + (r + ph) * wp * channels;
        const uint16_t* in = px + (b * h + r) * w * channels;
        for (int64_t q = 0; q < w; ++q) {
          const uint16_t* xi = in + q * channels;
          uint16_t* yi = row + (pw + q) * channels;
          for (int64_t c = 0; c < channels; ++c) {
            const float v = widen(xi[c]);
            const int32_t k = po[c] + interval(v, pscale[c], sh, last);
            yi[c] = narrow(pa[k] + v * ps[k]);
          }
        }
        std::copy(row + w * channels, row + (w + pw) * channels, row);
        std::copy(row + pw * channels, row + 2 * pw * channels, row + (w + pw) * channels);
      }
      for (int64_t r = 0; r < ph; ++r) {
        std::copy(image + (h + r) * wp * channels, image + (h + r + 1) * wp * channels, image + r * wp * channels);
        std::copy(image + (ph + r) * wp * channels, image + (ph + r + 1) * wp * channels,
                  image + (h + ph + r) * wp * channels);
      }
    }
  });
  return y;
}

// Backward of spline_pad_forward: the padded gradient g is folded back onto the H x W image in
// float32 (in the order of the circular pad's backward: interior, pad columns, pad rows, corners),
// then goes through the spline's backward; grad_x is rounded to bfloat16 and channels-last, the
// table sums are float64 as in spline_backward.
std::vector<at::Tensor> spline_pad_backward(at::Tensor x, at::Tensor g, at::Tensor scale, double shift, at::Tensor a,
                                            at::Tensor s, int64_t ph, int64_t pw) {
  check_padded(x, scale, a, s, ph, pw);
  g = g.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t batch = x.size(0), channels = x.size(1), h = x.size(2), w = x.size(3), intervals = a.size(1);
  const int64_t hp = h + 2 * ph, wp = w + 2 * pw, table = channels * intervals;
  TORCH_CHECK(g.dim() == 4 && g.size(0) == batch && g.size(1) == channels && g.size(2) == hp && g.size(3) == wp &&
              g.scalar_type() == at::kBFloat16, "padded spline kernel: bfloat16 gradient of the padded output");
  auto grad_x = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const int64_t image = h * w * channels;
  const int64_t threads = at::get_num_threads();
  std::vector<double> sums(static_cast<size_t>(threads) * 2 * table, 0.0);
  std::vector<float> folds(static_cast<size_t>(threads) * image);
  std::vector<int32_t> indices(static_cast<size_t>(threads) * image);
  std::vector<int32_t> offsets(channels);
  for (int64_t c = 0; c < channels; ++c) offsets[c] = static_cast<int32_t>(c * intervals);
  const int32_t* __restrict__ po = offsets.data();
  const uint16_t* __restrict__ px = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const uint16_t* __restrict__ pg = reinterpret_cast<const uint16_t*>(g.data_ptr<at::BFloat16>());
  uint16_t* __restrict__ pgx = reinterpret_cast<uint16_t*>(grad_x.data_ptr<at::BFloat16>());
  const float* __restrict__ ps = s.data_ptr<float>();
  const float* __restrict__ pscale = scale.data_ptr<float>();
  const float sh = static_cast<float>(shift);
  const float last = static_cast<float>(intervals - 1);
  const int64_t C = channels;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    const int64_t thread = at::get_thread_num();
    double* __restrict__ mine = sums.data() + static_cast<size_t>(thread) * 2 * table;
    float* __restrict__ fold = folds.data() + static_cast<size_t>(thread) * image;
    int32_t* __restrict__ entries = indices.data() + static_cast<size_t>(thread) * image;
    // fold[(r, q)] += g[(gr, gq)] over n consecutive pixels
    auto add = [&](const uint16_t* gi, int64_t r, int64_t q, int64_t gr, int64_t gq, int64_t n) {
      float* out = fold + (r * w + q) * C;
      const uint16_t* in = gi + (gr * wp + gq) * C;
      for (int64_t i = 0; i < n * C; ++i) out[i] += widen(in[i]);
    };
    for (int64_t b = begin; b < end; ++b) {
      const uint16_t* gi = pg + b * hp * wp * C;
      for (int64_t r = 0; r < h; ++r) {
        const uint16_t* in = gi + ((r + ph) * wp + pw) * C;
        float* out = fold + r * w * C;
        for (int64_t i = 0; i < w * C; ++i) out[i] = widen(in[i]);
      }
      if (pw) {
        for (int64_t r = 0; r < h; ++r) {
          add(gi, r, 0, r + ph, w + pw, pw);
          add(gi, r, w - pw, r + ph, 0, pw);
        }
      }
      if (ph) {
        for (int64_t r = 0; r < ph; ++r) add(gi, r, 0, h + ph + r, pw, w);
        for (int64_t r = 0; r < ph; ++r) add(gi, h - ph + r, 0, r, pw, w);
      }
      if (ph && pw) {
        for (int64_t r = 0; r < ph; ++r) add(gi, h - ph + r, w - pw, r, 0, pw);
        for (int64_t r = 0; r < ph; ++r) add(gi, h - ph + r, 0, r, w + pw, pw);
        for (int64_t r = 0; r < ph; ++r) add(gi, r, w - pw, h + ph + r, 0, pw);
        for (int64_t r = 0; r < ph; ++r) add(gi, r, 0, h + ph + r, w + pw, pw);
      }
      const uint16_t* xi = px + b * image;
      uint16_t* gxi = pgx + b * image;
      for (int64_t p = 0; p < h * w; ++p) {  // vectorized: the entries, and the input gradient
        const uint16_t* xp = xi + p * C;
        const float* fp = fold + p * C;
        uint16_t* gp = gxi + p * C;
        int32_t* kp = entries + p * C;
        for (int64_t c = 0; c < C; ++c) {
          const int32_t k = po[c] + interval(widen(xp[c]), pscale[c], sh, last);
          kp[c] = k;
          gp[c] = narrow(fp[c] * ps[k]);
        }
      }
      // table sums in float64, (sum g, sum g x) side by side per entry; consecutive channels hit
      // different entries, so the additions do not wait on each other
      for (int64_t i = 0; i < image; ++i) {
        double* entry = mine + 2 * entries[i];
        entry[0] += static_cast<double>(fold[i]);
        entry[1] += static_cast<double>(fold[i]) * static_cast<double>(widen(xi[i]));
      }
    }
  });
  auto total = at::zeros({2, channels, intervals}, at::kDouble);
  double* pt = total.data_ptr<double>();
  for (int64_t t = 0; t < threads; ++t) {
    const double* part = sums.data() + static_cast<size_t>(t) * 2 * table;
    for (int64_t j = 0; j < table; ++j) {
      pt[j] += part[2 * j];
      pt[table + j] += part[2 * j + 1];
    }
  }
  return {grad_x, total[0].to(at::kFloat), total[1].to(at::kFloat)};
}
"""

_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()


def native_kernels() -> Any | None:
    """The compiled module (``spline_forward``, ``spline_backward``, ``spline_pad_forward``,
    ``spline_pad_backward``), built on first call;
    None if it cannot be built here (no compiler, or ``LIPDEN_NATIVE_SPLINE=0``)."""
    with _LOCK:
        if "module" not in _STATE:
            _STATE["module"] = _build()
        return _STATE["module"]


def _build() -> Any | None:
    if os.environ.get("LIPDEN_NATIVE_SPLINE", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        return load_inline(
            name="lipden_spline_v10",
            cpp_sources=[_SOURCE],
            functions=["spline_forward", "spline_backward", "spline_pad_forward", "spline_pad_backward"],
            # no trapping math: lets the float-to-int loops vectorize (results unchanged);
            # OpenMP: at::parallel_for runs on one thread in code compiled without it
            extra_cflags=["-O3", "-march=native", "-fno-trapping-math", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no headers, a failed build: the eager path works
        _STATE["error"] = f"{type(error).__name__}: {error}"
        return None


def build_error() -> str | None:
    """Why :func:`native_kernels` returned None, if it did."""
    return _STATE.get("error")
