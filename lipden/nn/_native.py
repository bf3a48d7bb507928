"""A hand-written CPU kernel of the linear spline (forward and backward in one pass each).

The eager path computes an index tensor, gathers two tables and reduces the table gradients
with ``bincount``: several passes over memory per call. Here each (image, channel) plane is
read once: forward ``y = a[c, k(x)] + x * s[c, k(x)]``; backward ``grad_x = g * s[c, k(x)]``
with the table gradients ``sum g`` and ``sum g * x`` per interval accumulated in float64 in
per-thread buffers (no atomics), then summed. Compiled with the machine's C++ compiler on
first use (``torch.utils.cpp_extension``, cached between processes); :func:`native_kernels`
returns None when that is impossible, and the eager path is used instead.
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
"""

_STATE: dict[str, Any] = {}
_LOCK = threading.Lock()


def native_kernels() -> Any | None:
    """The compiled module (``spline_forward``, ``spline_backward``), built on first call;
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
            name="lipden_spline_v5",
            cpp_sources=[_SOURCE],
            functions=["spline_forward", "spline_backward"],
            extra_cflags=["-O3", "-march=native"],
            verbose=False,
        )
    except Exception as error:  # no compiler, no headers, a failed build: the eager path works
        _STATE["error"] = f"{type(error).__name__}: {error}"
        return None


def build_error() -> str | None:
    """Why :func:`native_kernels` returned None, if it did."""
    return _STATE.get("error")
