//! Ops candle lacks or runs slowly on CPU, and detection's box machinery.
//!
//! Tensor ops with a CPU kernel and a candle fallback on other devices or dtypes: convolution with
//! a GEMM backward ([`conv`]), padded overlapping max-pooling ([`pool`]), fused BatchNorm and
//! channel affine ([`norm`]), ReLU ([`relu`]), RoIAlign ([`roi_align`], also on CUDA: `cuda`,
//! kernels.cu). Box logic on plain
//! vectors, as torchvision: box coder and IoU ([`boxes`]), NMS ([`nms`]), anchors ([`anchors`]),
//! matcher and balanced sampler ([`matcher`]).

pub mod anchors;
pub mod boxes;
pub mod conv;
#[cfg(feature = "cuda")]
mod cuda;
pub mod gmm;
#[cfg(test)]
pub(crate) mod gradcheck;
#[cfg(test)]
mod kernels_host;
pub mod matcher;
pub mod nms;
pub mod norm;
pub mod pool;
pub mod relu;
pub mod roi_align;

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Tensor};

/// The contiguous f32 data of a CPU storage, or an error naming the op.
pub(crate) fn cpu_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Copy a CPU f32 tensor's values out (small tensors: per-channel parameters).
pub(crate) fn to_f32_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Run `f` on a CPU f32 tensor's values without copying them (a copy is made only when the
/// tensor is not contiguous). Used by backward passes, which read large activations.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(c) => Ok(f(cpu_f32(c, layout, "backward")?)),
        _ => candle_core::bail!("kdet CPU op: expected a CPU tensor"),
    }
}

/// A raw pointer that parallel tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(*mut f32);
// SAFETY: only used by tasks that write disjoint index ranges.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    pub(crate) fn new(p: *mut f32) -> Self {
        Self(p)
    }
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
    /// # Safety
    /// `off..off + len` lies in the buffer and no other task touches it.
    pub(crate) unsafe fn uninit<'a>(self, off: usize, len: usize) -> &'a mut [MaybeUninit<f32>] {
        std::slice::from_raw_parts_mut(self.0.add(off) as *mut MaybeUninit<f32>, len)
    }
    /// # Safety
    /// As [`uninit`](Self::uninit), and the region is initialised.
    pub(crate) unsafe fn init<'a>(self, off: usize, len: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// An output buffer that kernels fill completely before it is read: no zeroing pass.
pub(crate) struct OutBuf(Vec<MaybeUninit<f32>>);

impl OutBuf {
    pub(crate) fn new(n: usize) -> Self {
        let mut v = Vec::with_capacity(n);
        // SAFETY: MaybeUninit needs no initialisation.
        unsafe { v.set_len(n) };
        Self(v)
    }
    pub(crate) fn sync_ptr(&mut self) -> SyncPtr {
        SyncPtr(self.0.as_mut_ptr() as *mut f32)
    }
    pub(crate) fn slots(&mut self) -> &mut [MaybeUninit<f32>] {
        &mut self.0
    }
    /// # Safety
    /// Every element has been written.
    pub(crate) unsafe fn assume_init(self) -> Vec<f32> {
        let mut v = std::mem::ManuallyDrop::new(self.0);
        Vec::from_raw_parts(v.as_mut_ptr() as *mut f32, v.len(), v.capacity())
    }
}
