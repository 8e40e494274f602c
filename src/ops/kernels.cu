// kdet's CUDA kernels, compiled to PTX by build.rs with the `cuda` feature and loaded by
// src/ops/cuda.rs. RoIAlign with the semantics of kdet's CPU kernel (src/ops/roi_align.rs):
// torchvision's roi_align (torchvision/csrc/ops/cpu|cuda/roi_align_kernel) with aligned=False —
// a RoI (b, x1, y1, x2, y2) in image pixels is scaled by spatial_scale, widened to at least
// 1 x 1, split into o x o bins, each the mean of grid_h x grid_w bilinear samples
// (sampling_ratio, or ceil(roi / o) per side when it is 0). One thread per output element
// (RoI, channel, bin), grid-stride loops; f32 only (kdet casts other dtypes around the op).

// The four bilinear taps of the sample (y, x) on an h x w plane: flat indices and weights.
// Returns false for a sample outside [-1, h] x [-1, w] (it adds nothing), as the CPU `taps`.
__device__ __forceinline__ bool kdet_taps(int h, int w, float y, float x, int idx[4],
                                          float wt[4]) {
  if (y < -1.0f || y > (float)h || x < -1.0f || x > (float)w) {
    return false;
  }
  if (y <= 0.0f) y = 0.0f;
  if (x <= 0.0f) x = 0.0f;
  int y_low = (int)y, x_low = (int)x, y_high, x_high;
  if (y_low >= h - 1) {
    y_high = y_low = h - 1;
    y = (float)y_low;
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= w - 1) {
    x_high = x_low = w - 1;
    x = (float)x_low;
  } else {
    x_high = x_low + 1;
  }
  float ly = y - (float)y_low, lx = x - (float)x_low;
  float hy = 1.0f - ly, hx = 1.0f - lx;
  idx[0] = y_low * w + x_low;
  idx[1] = y_low * w + x_high;
  idx[2] = y_high * w + x_low;
  idx[3] = y_high * w + x_high;
  wt[0] = hy * hx;
  wt[1] = hy * lx;
  wt[2] = ly * hx;
  wt[3] = ly * lx;
  return true;
}

// The sampling geometry of one RoI, as the CPU `roi_samples`.
struct KdetRoi {
  int b;
  float x1, y1, bin_h, bin_w;
  int grid_h, grid_w;
  float count;
};

__device__ __forceinline__ KdetRoi kdet_roi(const float* roi, int o, float scale,
                                            int sampling_ratio) {
  KdetRoi r;
  r.b = (int)roi[0];
  r.x1 = roi[1] * scale;
  r.y1 = roi[2] * scale;
  float roi_w = fmaxf(roi[3] * scale - r.x1, 1.0f);
  float roi_h = fmaxf(roi[4] * scale - r.y1, 1.0f);
  r.bin_h = roi_h / (float)o;
  r.bin_w = roi_w / (float)o;
  r.grid_h = sampling_ratio > 0 ? sampling_ratio : (int)ceilf(roi_h / (float)o);
  r.grid_w = sampling_ratio > 0 ? sampling_ratio : (int)ceilf(roi_w / (float)o);
  r.count = (float)max(r.grid_h * r.grid_w, 1);
  return r;
}

// Output element i = (RoI ri, channel ch, bin ph, pw) of a k x c x o x o output.
struct KdetBin {
  int ri, ch, ph, pw;
};

__device__ __forceinline__ KdetBin kdet_bin(long long i, int c, int o) {
  KdetBin b;
  b.pw = (int)(i % o);
  b.ph = (int)((i / o) % o);
  b.ch = (int)((i / o / o) % c);
  b.ri = (int)(i / o / o / c);
  return b;
}

// Calls f(idx, wt) for the taps of every sample of bin (ph, pw) of RoI r that lies on the
// plane, in the CPU kernel's order (rows of samples, then columns).
template <class F>
__device__ __forceinline__ void kdet_samples(const KdetRoi& r, int ph, int pw, int h, int w,
                                             F f) {
  int idx[4];
  float wt[4];
  for (int iy = 0; iy < r.grid_h; iy++) {
    float y = r.y1 + ph * r.bin_h + (iy + 0.5f) * r.bin_h / (float)r.grid_h;
    for (int ix = 0; ix < r.grid_w; ix++) {
      float x = r.x1 + pw * r.bin_w + (ix + 0.5f) * r.bin_w / (float)r.grid_w;
      if (kdet_taps(h, w, y, x, idx, wt)) {
        f(idx, wt);
      }
    }
  }
}

// out[k][c][o][o] from x[n][c][h][w] and rois[k][5]. A RoI naming an image outside the batch
// gives NaN (the CPU kernel refuses it; the RoIs kdet builds never do).
extern "C" __global__ void kdet_roi_align_fwd(const float* x, const float* rois, float* out,
                                              int n, int c, int h, int w, int k, int o,
                                              float scale, int sampling_ratio) {
  long long total = (long long)k * c * o * o;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    KdetBin b = kdet_bin(i, c, o);
    KdetRoi r = kdet_roi(rois + b.ri * 5, o, scale, sampling_ratio);
    if (r.b < 0 || r.b >= n) {
      out[i] = __int_as_float(0x7fc00000);
      continue;
    }
    const float* plane = x + ((long long)r.b * c + b.ch) * h * w;
    float v = 0.0f;
    kdet_samples(r, b.ph, b.pw, h, w, [&](const int* idx, const float* wt) {
      v += wt[0] * plane[idx[0]] + wt[1] * plane[idx[1]] + wt[2] * plane[idx[2]] +
           wt[3] * plane[idx[3]];
    });
    out[i] = v / r.count;
  }
}

// dx[n][c][h][w] += the gradient dy[k][c][o][o] spread back over each sample's taps; dx must
// be zeroed. RoIs naming an image outside the batch add nothing.
extern "C" __global__ void kdet_roi_align_bwd(const float* dy, const float* rois, float* dx,
                                              int n, int c, int h, int w, int k, int o,
                                              float scale, int sampling_ratio) {
  long long total = (long long)k * c * o * o;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    KdetBin b = kdet_bin(i, c, o);
    KdetRoi r = kdet_roi(rois + b.ri * 5, o, scale, sampling_ratio);
    if (r.b < 0 || r.b >= n) {
      continue;
    }
    float* plane = dx + ((long long)r.b * c + b.ch) * h * w;
    float g = dy[i] / r.count;
    kdet_samples(r, b.ph, b.pw, h, w, [&](const int* idx, const float* wt) {
      for (int t = 0; t < 4; t++) {
        atomicAdd(plane + idx[t], wt[t] * g);
      }
    });
  }
}

// NMS's suppression mask, as torchvision's nms_kernel but one thread per (box, block of 64
// later boxes): boxes[n][4] sorted by decreasing score; bit j of mask[i][cb] is set when box
// cb*64 + j comes after box i and their IoU is greater than thresh (kdet's CPU `nms`: inter /
// (area_i + area_j - inter)). The greedy pass over the mask runs on the host (src/ops/nms.rs).
extern "C" __global__ void kdet_nms_mask(const float* boxes, unsigned long long* mask, int n,
                                         float thresh) {
  int blocks = (n + 63) / 64;
  long long total = (long long)n * blocks;
  for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
       t += (long long)blockDim.x * gridDim.x) {
    int i = (int)(t / blocks);
    int cb = (int)(t % blocks);
    const float* a = boxes + 4 * i;
    float area_a = (a[2] - a[0]) * (a[3] - a[1]);
    unsigned long long bits = 0;
    int start = max(cb * 64, i + 1);
    int end = min(cb * 64 + 64, n);
    for (int j = start; j < end; j++) {
      const float* b = boxes + 4 * j;
      float w = fmaxf(fminf(a[2], b[2]) - fmaxf(a[0], b[0]), 0.0f);
      float h = fmaxf(fminf(a[3], b[3]) - fmaxf(a[1], b[1]), 0.0f);
      float inter = w * h;
      float area_b = (b[2] - b[0]) * (b[3] - b[1]);
      if (inter / (area_a + area_b - inter) > thresh) {
        bits |= 1ULL << (j - cb * 64);
      }
    }
    mask[t] = bits;
  }
}
