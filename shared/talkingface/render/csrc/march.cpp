// The inference march's sample selection (talkingface/render/march.py), compiled for the CPU:
// which of each ray's `samples` equal steps across the bounding cube fall in an occupied cell
// of the occupancy grid, without building the [rays, samples, 3] points and the ~10 tensor
// passes over them that `OccupancyGrid.lookup` makes (a sixth of a trained avatar's frame).
//
// The float operations are the torch expressions' own, in their order, each rounded to
// float32 (the build turns off contraction into fused multiply-adds), so exactly the same
// samples are kept:
//   t = near + (s + 0.5) * delta;  p = o + t * d;  u = (p / bound + 1) * 0.5 * res
//   inside = all(0 <= u < res);    cell = clamp(trunc(u), 0, res - 1)

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cstdint>

namespace {

void occupied_range(const float* __restrict origins, const float* __restrict dirs,
                    const float* __restrict near, const float* __restrict delta,
                    const bool* __restrict occupied, bool* __restrict out, int64_t samples,
                    int64_t res, float bound, int64_t begin, int64_t end) {
  const float scale = static_cast<float>(res);
  const int64_t top = res - 1;
  for (int64_t r = begin; r < end; ++r) {
    const float* o = origins + r * 3;
    const float* d = dirs + r * 3;
    bool* row = out + r * samples;
    for (int64_t s = 0; s < samples; ++s) {
      const float mid = static_cast<float>(s) + 0.5f;
      const float t = near[r] + mid * delta[r];
      bool inside = true;
      int64_t cell = 0;
      for (int a = 0; a < 3; ++a) {
        const float p = o[a] + t * d[a];
        const float u = ((p / bound + 1.0f) * 0.5f) * scale;
        inside = inside && u >= 0.0f && u < scale;
        int64_t i = static_cast<int64_t>(u);  // truncation, as torch's .long()
        i = i < 0 ? 0 : (i > top ? top : i);
        cell = cell * res + i;
      }
      row[s] = inside && occupied[cell];
    }
  }
}

}  // namespace

// occupied [H, S] (bool): sample s of ray h, at near[h] + (s + 0.5) * delta[h] along the ray
// (origins[h], dirs[h]), lies inside the cube [-bound, bound]^3 in an occupied cell of
// `occupied` (the grid's flat [res^3] mask, x-major as OccupancyGrid.cell_of numbers it).
torch::Tensor occupied_samples(torch::Tensor origins, torch::Tensor dirs, torch::Tensor near,
                               torch::Tensor delta, int64_t samples, torch::Tensor occupied,
                               int64_t res, double bound) {
  for (const auto& t : {origins, dirs, near, delta}) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
                "occupied samples: contiguous float32 CPU tensors");
  }
  TORCH_CHECK(origins.dim() == 2 && origins.size(1) == 3 && dirs.sizes() == origins.sizes(),
              "occupied samples: origins and dirs [H, 3]");
  const int64_t rays = origins.size(0);
  TORCH_CHECK(near.numel() == rays && delta.numel() == rays, "occupied samples: near, delta [H]");
  TORCH_CHECK(occupied.scalar_type() == torch::kBool && occupied.is_contiguous() &&
                  occupied.numel() == res * res * res,
              "occupied samples: a contiguous bool grid of res^3 cells");
  auto out = torch::empty({rays, samples}, origins.options().dtype(torch::kBool));
  const float* op = origins.data_ptr<float>();
  const float* dp = dirs.data_ptr<float>();
  const float* np_ = near.data_ptr<float>();
  const float* tp = delta.data_ptr<float>();
  const bool* gp = occupied.data_ptr<bool>();
  bool* out_p = out.data_ptr<bool>();
  const float b = static_cast<float>(bound);
  at::parallel_for(0, rays, 64, [&](int64_t begin, int64_t end) {
    occupied_range(op, dp, np_, tp, gp, out_p, samples, res, b, begin, end);
  });
  return out;
}
