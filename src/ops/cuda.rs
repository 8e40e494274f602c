//! Launches of kdet's CUDA kernels (src/ops/kernels.cu, compiled to PTX by build.rs): the
//! `cuda_fwd` of the custom ops that have one. The PTX module is loaded once per device by
//! candle (`get_or_load_custom_func`).

use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Shape};

use super::roi_align::RoiAlignParams;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kdet_kernels.ptx"));
const MODULE: &str = "kdet_kernels";

/// One thread per element, 256 per block, at most 65,535 blocks (the kernels loop).
fn launch_config(elements: usize) -> LaunchConfig {
    let blocks = elements.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn contiguous(l: &Layout, op: &str) -> candle_core::Result<usize> {
    if !l.is_contiguous() {
        candle_core::bail!("{op}: input must be contiguous")
    }
    Ok(l.start_offset())
}

/// The kernel `name` of RoIAlign (forward: `src` is the features, the output `k·c·o·o`;
/// backward: `src` is the output gradient, the output the zeroed `n·c·h·w` feature gradient).
#[allow(clippy::too_many_arguments)]
fn roi_align_launch(
    name: &str,
    src: (&CudaStorage, &Layout),
    rois: (&CudaStorage, &Layout),
    (n, c, h, w): (usize, usize, usize, usize),
    k: usize,
    p: &RoiAlignParams,
    out_len: usize,
    zeroed: bool,
) -> candle_core::Result<CudaStorage> {
    let dev = &src.0.device;
    let so = contiguous(src.1, name)?;
    let ro = contiguous(rois.1, name)?;
    let s = src.0.as_cuda_slice::<f32>()?.slice(so..);
    let r = rois.0.as_cuda_slice::<f32>()?.slice(ro..);
    let mut out = if zeroed {
        dev.alloc_zeros::<f32>(out_len)?
    } else {
        // SAFETY: the forward kernel writes every element.
        unsafe { dev.alloc::<f32>(out_len)? }
    };
    let o = p.output_size;
    let dims = [n, c, h, w, k, o].map(|d| d as i32);
    let (scale, ratio) = (p.spatial_scale, p.sampling_ratio as i32);
    if k * c * o * o > 0 {
        let func = dev.get_or_load_custom_func(name, MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&s);
        b.arg(&r);
        b.arg(&mut out);
        for d in &dims {
            b.arg(d);
        }
        b.arg(&scale);
        b.arg(&ratio);
        // SAFETY: the arguments match the kernel's signature in kernels.cu; every index the
        // kernel computes lies in the buffers sized above.
        unsafe { b.launch(launch_config(k * c * o * o)) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// RoIAlign forward on the GPU: `K × C × o × o` from `N × C × H × W` features and `K × 5` RoIs.
pub(crate) fn roi_align_fwd(
    x: (&CudaStorage, &Layout),
    rois: (&CudaStorage, &Layout),
    p: &RoiAlignParams,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = x.1.shape().dims4()?;
    let k = rois.1.shape().dims2()?.0;
    let o = p.output_size;
    let s = roi_align_launch(
        "kdet_roi_align_fwd",
        x,
        rois,
        (n, c, h, w),
        k,
        p,
        k * c * o * o,
        false,
    )?;
    Ok((s, Shape::from((k, c, o, o))))
}

/// RoIAlign backward on the GPU: the features' gradient `N × C × H × W` from the output's.
pub(crate) fn roi_align_bwd(
    dy: (&CudaStorage, &Layout),
    rois: (&CudaStorage, &Layout),
    dims: (usize, usize, usize, usize),
    p: &RoiAlignParams,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let k = rois.1.shape().dims2()?.0;
    let (n, c, h, w) = dims;
    let s = roi_align_launch(
        "kdet_roi_align_bwd",
        dy,
        rois,
        dims,
        k,
        p,
        n * c * h * w,
        true,
    )?;
    Ok((s, Shape::from((n, c, h, w))))
}

/// NMS's suppression mask on the GPU (see `nms::NmsMask`): `N × 2⌈N/64⌉` u32 from `N × 4`
/// boxes sorted by decreasing score.
pub(crate) fn nms_mask(
    boxes: &CudaStorage,
    l: &Layout,
    thresh: f32,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = &boxes.device;
    let n = l.shape().dims2()?.0;
    let b = boxes.as_cuda_slice::<f32>()?.slice(contiguous(l, "nms")?..);
    let words = n.div_ceil(64);
    // SAFETY: the kernel writes every word of every row.
    let mut mask = unsafe { dev.alloc::<u32>(n * words * 2)? };
    let n32 = n as i32;
    if n > 0 {
        let func = dev.get_or_load_custom_func("kdet_nms_mask", MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&b);
        a.arg(&mut mask);
        a.arg(&n32);
        a.arg(&thresh);
        // SAFETY: the arguments match kdet_nms_mask's signature; the u32 buffer holds the
        // n·words 64-bit words the kernel writes (device allocations are 256-byte aligned).
        unsafe { a.launch(launch_config(n * words)) }.w()?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(mask, dev.clone()),
        Shape::from((n, words * 2)),
    ))
}
