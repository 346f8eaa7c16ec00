// The multiresolution hash grid's lookup and its backward, fused for the CPU: one pass over
// the points per call, every level and corner of a point done in registers, instead of the
// ~25 tensor passes over [2^D, B] temporaries of the pure-PyTorch path
// (talkingface/render/encoding.py, whose maths this is: the same rows, weights and
// gradients, summed in another order). Built on first use by torch.utils.cpp_extension
// (talkingface/render/kernels.py); the PyTorch path stays the reference and the fallback.
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

#include <atomic>
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

inline void locate(const float* x, const Level& level, int dims, int64_t mask, Cell& cell) {
  const float n = static_cast<float>(level.resolution);
  for (int d = 0; d < dims; ++d) {
    const float pos = x[d] * n;
    float c = std::floor(pos);
    if (c > n - 1.0f) c = n - 1.0f;
    if (!(c >= 0.0f)) c = 0.0f;  // below the cube, or NaN: never a row outside the table
    cell.t[d] = pos - c;
    const int64_t ci = static_cast<int64_t>(c);
    int64_t lo = ci * level.mult[d], hi = lo + level.mult[d];
    if (level.hashed) {
      lo &= mask;
      hi &= mask;
    }
    cell.term[d][0] = lo;
    cell.term[d][1] = hi;
  }
}

inline int64_t corner_row(const Cell& cell, const Level& level, int dims, int corner) {
  int64_t row = 0;
  for (int d = 0; d < dims; ++d) {
    const int bit = (corner >> (dims - 1 - d)) & 1;
    row = level.hashed ? (row ^ cell.term[d][bit]) : (row + cell.term[d][bit]);
  }
  return row + level.offset;
}

inline float corner_weight(const Cell& cell, int dims, int corner) {
  float w = 1.0f;
  for (int d = 0; d < dims; ++d) {
    const int bit = (corner >> (dims - 1 - d)) & 1;
    w *= bit ? cell.t[d] : 1.0f - cell.t[d];
  }
  return w;
}

inline void atomic_add(float* target, float value) {
  std::atomic_ref<float> ref(*target);
  float seen = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(seen, seen + value, std::memory_order_relaxed)) {
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
  const int corners = 1 << dims;
  // Level by level: one level's rows (a few hundred KB) stay in cache while every point
  // reads them; a point-major loop would touch every level's table per point.
  for (int64_t l = 0; l < count; ++l) {
    const Level& level = levels[l];
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      Cell cell;
      for (int64_t b = begin; b < end; ++b) {
        locate(xp + b * dims, level, dims, mask, cell);
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int c = 0; c < corners; ++c) {
          const float w = corner_weight(cell, dims, c);
          const float* row = tp + corner_row(cell, level, dims, c) * features;
          for (int64_t f = 0; f < features; ++f) acc[f] += w * row[f];
        }
        float* ob = op + (b * count + l) * features;
        for (int64_t f = 0; f < features; ++f) ob[f] = acc[f];
      }
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
  const int corners = 1 << dims;
  const bool shared = at::get_num_threads() > 1;  // tasks may add into the same row
  for (int64_t l = 0; l < count; ++l) {  // level by level, as the forward
    const Level& level = levels[l];
    const float scale = static_cast<float>(level.resolution);  // dt/dx = N_l
    at::parallel_for(0, batch, kGrain, [&](int64_t begin, int64_t end) {
      Cell cell;
      for (int64_t b = begin; b < end; ++b) {
        locate(xp + b * dims, level, dims, mask, cell);
        const float* g = gp + (b * count + l) * features;
        float dt[kMaxDims] = {0, 0, 0, 0};
        for (int c = 0; c < corners; ++c) {
          const int64_t row = corner_row(cell, level, dims, c);
          if (need_table) {
            const float w = corner_weight(cell, dims, c);
            float* target = gtp + row * features;
            for (int64_t f = 0; f < features; ++f) {
              if (shared) {
                atomic_add(target + f, w * g[f]);
              } else {
                target[f] += w * g[f];
              }
            }
          }
          if (need_x) {
            // dL/dw_c, then dw_c/dt_d = (o_d ? 1 : -1) * prod_{e != d} (o_e ? t_e : 1 - t_e)
            const float* value = tp + row * features;
            float dw = 0.0f;
            for (int64_t f = 0; f < features; ++f) dw += value[f] * g[f];
            for (int d = 0; d < dims; ++d) {
              float w = ((c >> (dims - 1 - d)) & 1) ? 1.0f : -1.0f;
              for (int e = 0; e < dims; ++e) {
                if (e == d) continue;
                const int bit = (c >> (dims - 1 - e)) & 1;
                w *= bit ? cell.t[e] : 1.0f - cell.t[e];
              }
              dt[d] += dw * w;
            }
          }
        }
        if (need_x) {
          float* gx = gxp + b * dims;  // each point's own row: no other task writes it
          for (int d = 0; d < dims; ++d) gx[d] += dt[d] * scale;
        }
      }
    });
  }
  return {grad_x, grad_table};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &hashgrid_forward, "hash grid lookup (CPU)");
  m.def("backward", &hashgrid_backward, "hash grid lookup backward (CPU)");
}
