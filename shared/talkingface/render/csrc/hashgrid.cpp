// The multiresolution hash grid's lookup and its backward, fused for the CPU: one pass over
// the points per call, every level and corner of a point done in registers, instead of the
// ~25 tensor passes over [2^D, B] temporaries of the pure-PyTorch path
// (talkingface/render/encoding.py, whose maths this is: the same rows, weights and
// gradients, summed in another order). Built on first use by torch.utils.cpp_extension
// (talkingface/render/kernels.py) with -fopenmp, which ATen's parallel_for needs to run its
// tasks on several threads; the PyTorch path stays the reference and the fallback.
//
// Layout (GridConfig.levels()): level l has resolution N_l, its rows start at offset_l, and a
// vertex v (integer coordinates, D of them) is row
//   hashed:  offset_l + XOR_d ((v_d * m_d) & mask)    (m: the hash primes)
//   dense:   offset_l + sum_d v_d * m_d               (m_d = (N_l + 1)^d)
// A point x in [0, 1]^D sits in cell c = min(floor(x * N_l), N_l - 1) with in-cell position
// t = x * N_l - c; corner o in {0, 1}^D (axis 0 most significant) has weight
// prod_d (o_d ? t_d : 1 - t_d).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int kMaxDims = 4;
constexpr int64_t kGrain = 256;  // points per parallel task, at least

struct Level {
  int64_t resolution;
  int64_t offset;
  bool hashed;
  int64_t mult[kMaxDims];
};

std::vector<Level> read_levels(const torch::Tensor& resolution, const torch::Tensor& offset,
                               const torch::Tensor& hashed, const torch::Tensor& multipliers,
                               int64_t dims) {
  TORCH_CHECK(dims >= 1 && dims <= kMaxDims, "hash grid: 1 to 4 input dimensions");
  auto r = resolution.accessor<int64_t, 1>();
  auto o = offset.accessor<int64_t, 1>();
  auto h = hashed.accessor<bool, 1>();
  auto m = multipliers.accessor<int64_t, 2>();
  std::vector<Level> levels(r.size(0));
  for (int64_t l = 0; l < r.size(0); ++l) {
    levels[l].resolution = r[l];
    levels[l].offset = o[l];
    levels[l].hashed = h[l];
    for (int64_t d = 0; d < dims; ++d) levels[l].mult[d] = m[l][d];
  }
  return levels;
}

// A point's cell at one level: per axis the two candidate row terms and the in-cell position.
struct Cell {
  int64_t term[kMaxDims][2];
  float t[kMaxDims];
};

// D (input dimensions), F (features) and H (hashed level) are compile-time constants in the
// loops below, so the corner loops unroll and the per-axis choices are made before the loops
// run: with the loops of forward_range below, half the lookup time of runtime-bound loops on
// a trained avatar's march (measured, one thread).
template <int D, bool H>
inline void locate(const float* x, const Level& level, int64_t mask, Cell& cell) {
  const float n = static_cast<float>(level.resolution);
#pragma GCC unroll 4
  for (int d = 0; d < D; ++d) {
    const float pos = x[d] * n;
    float c = std::floor(pos);
    if (c > n - 1.0f) c = n - 1.0f;
    if (!(c >= 0.0f)) c = 0.0f;  // below the cube, or NaN: never a row outside the table
    cell.t[d] = pos - c;
    const int64_t ci = static_cast<int64_t>(c);
    int64_t lo = ci * level.mult[d], hi = lo + level.mult[d];
    if constexpr (H) {
      lo &= mask;
      hi &= mask;
    }
    cell.term[d][0] = lo;
    cell.term[d][1] = hi;
  }
}

template <int D, bool H>
inline int64_t corner_row(const Cell& cell, const Level& level, int corner) {
  int64_t row = 0;
#pragma GCC unroll 4
  for (int d = 0; d < D; ++d) {
    const int bit = (corner >> (D - 1 - d)) & 1;
    if constexpr (H) {
      row ^= cell.term[d][bit];
    } else {
      row += cell.term[d][bit];
    }
  }
  return row + level.offset;
}

template <int D>
inline float corner_weight(const Cell& cell, int corner) {
  float w = 1.0f;
#pragma GCC unroll 4
  for (int d = 0; d < D; ++d) {
    const int bit = (corner >> (D - 1 - d)) & 1;
    w *= bit ? cell.t[d] : 1.0f - cell.t[d];
  }
  return w;
}

// F: features per row when it is a compile-time constant (2, 4), 0 when read at run time.
template <int F>
inline int64_t feature_count(int64_t runtime) {
  if constexpr (F > 0) {
    return F;
  } else {
    return runtime;
  }
}

// Calls fn.template operator()<D, F, H>() for the run-time (dims, features, hashed).
template <typename Fn>
void dispatch(int64_t dims, int64_t features, bool hashed, Fn&& fn) {
  auto by_hash = [&]<int D, int F>() {
    if (hashed) {
      fn.template operator()<D, F, true>();
    } else {
      fn.template operator()<D, F, false>();
    }
  };
  auto by_features = [&]<int D>() {
    if (features == 2) {
      by_hash.template operator()<D, 2>();
    } else if (features == 4) {
      by_hash.template operator()<D, 4>();
    } else {
      by_hash.template operator()<D, 0>();
    }
  };
  switch (dims) {
    case 1: by_features.template operator()<1>(); break;
    case 2: by_features.template operator()<2>(); break;
    case 3: by_features.template operator()<3>(); break;
    default: by_features.template operator()<4>(); break;
  }
}

// One level's forward over points [begin, end): a plain function of its own, not code inside
// the parallel_for lambda. Built with -fopenmp, ATen's parallel_for outlines the lambda into an
// OpenMP region that reaches its captures through pointers, and the loop lost its registers
// (2.7x slower on one thread, measured).
template <int D, int F, bool H>
__attribute__((noinline)) void forward_range(const float* __restrict x,
                                             const float* __restrict table,
                                             float* __restrict out, const Level level,
                                             int64_t mask, int64_t stride, int64_t nf,
                                             int64_t begin, int64_t end) {
  nf = feature_count<F>(nf);
  Cell cell;
  for (int64_t b = begin; b < end; ++b) {
    locate<D, H>(x + b * D, level, mask, cell);
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma GCC unroll 16
    for (int c = 0; c < (1 << D); ++c) {
      const float w = corner_weight<D>(cell, c);
      const float* row = table + corner_row<D, H>(cell, level, c) * nf;
      for (int64_t f = 0; f < nf; ++f) acc[f] += w * row[f];
    }
    float* o = out + b * stride;
    for (int64_t f = 0; f < nf; ++f) o[f] = acc[f];
  }
}

// One level's backward over points [begin, end): adds into the level's table gradient
// `grad_table` (rows indexed as the table's; each task has its own, see hashgrid_backward) and
// applies the chain rule to x, laid out as forward_range.
template <int D, int F, bool H>
__attribute__((noinline)) void backward_range(const float* __restrict x,
                                              const float* __restrict table,
                                              const float* __restrict grad,
                                              float* __restrict grad_x, float* grad_table,
                                              const Level level, int64_t mask, int64_t stride,
                                              int64_t nf, int64_t begin, int64_t end) {
  nf = feature_count<F>(nf);
  const float scale = static_cast<float>(level.resolution);  // dt/dx = N_l
  Cell cell;
  for (int64_t b = begin; b < end; ++b) {
    locate<D, H>(x + b * D, level, mask, cell);
    const float* g = grad + b * stride;
    float dt[kMaxDims] = {0, 0, 0, 0};
#pragma GCC unroll 16
    for (int c = 0; c < (1 << D); ++c) {
      const int64_t row = corner_row<D, H>(cell, level, c);
      if (grad_table != nullptr) {
        const float w = corner_weight<D>(cell, c);
        float* target = grad_table + row * nf;
        for (int64_t f = 0; f < nf; ++f) target[f] += w * g[f];
      }
      if (grad_x != nullptr) {
        // dL/dw_c, then dw_c/dt_d = (o_d ? 1 : -1) * prod_{e != d} (o_e ? t_e : 1 - t_e)
        const float* value = table + row * nf;
        float dw = 0.0f;
        for (int64_t f = 0; f < nf; ++f) dw += value[f] * g[f];
#pragma GCC unroll 4
        for (int d = 0; d < D; ++d) {
          float w = ((c >> (D - 1 - d)) & 1) ? 1.0f : -1.0f;
#pragma GCC unroll 4
          for (int e = 0; e < D; ++e) {
            if (e == d) continue;
            const int bit = (c >> (D - 1 - e)) & 1;
            w *= bit ? cell.t[e] : 1.0f - cell.t[e];
          }
          dt[d] += dw * w;
        }
      }
    }
    if (grad_x != nullptr) {
      float* gx = grad_x + b * D;  // each point's own row: no other task writes it
      for (int d = 0; d < D; ++d) gx[d] += dt[d] * scale;
    }
  }
}

void check_inputs(const torch::Tensor& x, const torch::Tensor& table) {
  TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu(), "hash grid kernel: CPU tensors");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && table.scalar_type() == torch::kFloat32,
              "hash grid kernel: float32");
  TORCH_CHECK(x.dim() == 2 && table.dim() == 2, "hash grid kernel: x [B, D], table [R, F]");
  TORCH_CHECK(x.is_contiguous() && table.is_contiguous(), "hash grid kernel: contiguous");
  TORCH_CHECK(table.size(1) <= 8, "hash grid kernel: at most 8 features per level");
}

}  // namespace

// out [B, L * F]: level-major features of every point.
torch::Tensor hashgrid_forward(torch::Tensor x, torch::Tensor table, torch::Tensor resolution,
                               torch::Tensor offset, torch::Tensor hashed,
                               torch::Tensor multipliers, int64_t mask) {
  check_inputs(x, table);
  const int64_t batch = x.size(0), dims = x.size(1), features = table.size(1);
  const auto levels = read_levels(resolution, offset, hashed, multipliers, dims);
  const int64_t count = static_cast<int64_t>(levels.size());
  auto out = torch::empty({batch, count * features}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // Level by level: one level's rows (a few hundred KB) stay in cache while every point
  // reads them; a point-major loop would touch every level's table per point.
  for (int64_t l = 0; l < count; ++l) {
    const Level& level = levels[l];
    dispatch(dims, features, level.hashed, [&]<int D, int F, bool H>() {
      at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
        forward_range<D, F, H>(xp, tp, op + l * features, level, mask, count * features,
                               features, begin, end);
      });
    });
  }
  return out;
}

// (grad_x [B, D] or an empty tensor, grad_table [R, F] or an empty tensor).
std::vector<torch::Tensor> hashgrid_backward(torch::Tensor grad_out, torch::Tensor x,
                                             torch::Tensor table, torch::Tensor resolution,
                                             torch::Tensor offset, torch::Tensor hashed,
                                             torch::Tensor multipliers, int64_t mask,
                                             bool need_x, bool need_table) {
  check_inputs(x, table);
  grad_out = grad_out.contiguous();
  const int64_t batch = x.size(0), dims = x.size(1), features = table.size(1);
  const auto levels = read_levels(resolution, offset, hashed, multipliers, dims);
  const int64_t count = static_cast<int64_t>(levels.size());
  auto grad_x = need_x ? torch::zeros_like(x) : torch::empty({0}, x.options());
  auto grad_table = need_table ? torch::zeros_like(table) : torch::empty({0}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* tp = table.data_ptr<float>();
  const float* gp = grad_out.data_ptr<float>();
  float* gxp = need_x ? grad_x.data_ptr<float>() : nullptr;
  float* gtp = need_table ? grad_table.data_ptr<float>() : nullptr;
  // The table gradient without atomics: tasks on the calling thread add into grad_table, the
  // others into a private copy of the level's rows, summed in after the level (a CAS loop
  // per add made two threads 3x slower than one).
  const int threads = at::get_num_threads();
  std::vector<torch::Tensor> own(need_table ? threads : 0);
  for (int64_t l = 0; l < count; ++l) {  // level by level, as the forward
    const Level& level = levels[l];
    const int64_t first = level.offset * features;
    const int64_t size = ((l + 1 < count ? levels[l + 1].offset : table.size(0)) - level.offset)
                         * features;
    for (int t = 1; t < threads && need_table; ++t) {
      if (!own[t].defined() || own[t].numel() < size) own[t] = torch::empty({size}, x.options());
      own[t].narrow(0, 0, size).zero_();
    }
    dispatch(dims, features, level.hashed, [&]<int D, int F, bool H>() {
      at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
        const int t = at::get_thread_num();
        TORCH_CHECK(t < threads, "hash grid kernel: thread ", t, " of ", threads);
        // Rows of the table, shifted so that row offset_l is the copy's first.
        float* target = !need_table ? nullptr
                        : t == 0    ? gtp
                                    : own[t].data_ptr<float>() - first;
        backward_range<D, F, H>(xp, tp, gp + l * features, gxp, target, level, mask,
                                count * features, features, begin, end);
      });
    });
    if (need_table && threads > 1) {
      at::parallel_for(0, size, 1 << 14, [&](int64_t begin, int64_t end) {
        float* into = gtp + first;
        for (int t = 1; t < threads; ++t) {
          const float* from = own[t].data_ptr<float>();
          for (int64_t i = begin; i < end; ++i) into[i] += from[i];
        }
      });
    }
  }
  return {grad_x, grad_table};
}

// csrc/march.cpp, built into the same module.
torch::Tensor occupied_samples(torch::Tensor origins, torch::Tensor dirs, torch::Tensor near,
                               torch::Tensor delta, int64_t samples, torch::Tensor occupied,
                               int64_t res, double bound);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &hashgrid_forward, "hash grid lookup (CPU)");
  m.def("backward", &hashgrid_backward, "hash grid lookup backward (CPU)");
  m.def("occupied_samples", &occupied_samples, "the march's occupied samples (CPU)");
}
