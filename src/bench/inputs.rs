//! The inputs of the benchmark rows, made the same way on both sides: tools/bench_torch.py's
//! `bench_pixels` computes the same pixels with the same integer hash, so kdet and PyTorch time
//! their steps on identical images (issue 27 point 3: the inference rows fed `randn` to one side
//! and `rand` to the other). Pixels are in [0, 1); each side then normalises them with the
//! model's mean and std and pads with zeros, as its data pipeline does — outside the timed step
//! on both sides.

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use crate::data::coco::CategoryMap;
use crate::data::folder::ClassificationData;
use crate::data::loader::{Batch, Target};
use crate::data::transforms::InputConfig;
use crate::data::Split;
use crate::engine::method::RunData;
use crate::error::Result;

/// Pixel `idx` of stream `seed`: splitmix64's finaliser of `idx · φ64 + seed` (wrapping), top
/// 24 bits over 2²⁴ — exact in f32, and in numpy's wrapping uint64 arithmetic.
pub fn pixel(idx: u64, seed: u64) -> f32 {
    let mut z = idx.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u32 << 24) as f32
}

/// `n` images `3 × h × w` from stream `seed` (row-major `n, c, y, x` indices), normalised with
/// `input`'s mean and std, zero-padded to `ph × pw`.
pub fn images(
    n: usize,
    (h, w): (usize, usize),
    (ph, pw): (usize, usize),
    input: &InputConfig,
    seed: u64,
) -> Result<Tensor> {
    let mut v = vec![0f32; n * 3 * ph * pw];
    for i in 0..n {
        for c in 0..3 {
            let (m, s) = (input.mean[c], input.std[c]);
            for y in 0..h {
                let src = ((i * 3 + c) * h + y) * w;
                let dst = ((i * 3 + c) * ph + y) * pw;
                for x in 0..w {
                    v[dst + x] = (pixel((src + x) as u64, seed) - m) / s;
                }
            }
        }
    }
    Ok(Tensor::from_vec(v, (n, 3, ph, pw), &Device::Cpu)?)
}

/// A detection batch of `n` images `h × w` padded to `(ph, pw)`, two boxes each (in the
/// coordinates of a 128-pixel image, scaled to `h × w`).
pub fn detection_batch(
    n: usize,
    (h, w): (usize, usize),
    pad: (usize, usize),
    input: &InputConfig,
    seed: u64,
) -> Result<Batch> {
    let (sx, sy) = (w as f32 / 128.0, h as f32 / 128.0);
    let targets = (0..n)
        .map(|i| Target {
            boxes: vec![
                [10.0 * sx, 12.0 * sy, 50.0 * sx, 60.0 * sy],
                [70.0 * sx, (20 + i) as f32 * sy, 110.0 * sx, 90.0 * sy],
            ],
            labels: vec![1, 2],
            crowd: vec![],
        })
        .collect();
    Ok(Batch {
        images: images(n, (h, w), pad, input, seed)?,
        image_sizes: vec![(h, w); n],
        original_sizes: vec![(h, w); n],
        image_ids: (1..=n as u64).collect(),
        targets,
    })
}

/// A classification batch of `n` square images; image `i` has label `1 + i % classes`, or none
/// when `classes` is 0 (unlabeled views, as contrastive pretraining sees them).
pub fn class_batch(
    n: usize,
    side: usize,
    classes: u32,
    input: &InputConfig,
    seed: u64,
) -> Result<Batch> {
    let targets = (0..n as u32)
        .map(|i| Target {
            boxes: vec![],
            labels: if classes == 0 {
                vec![]
            } else {
                vec![1 + i % classes]
            },
            crowd: vec![],
        })
        .collect();
    Ok(Batch {
        images: images(n, (side, side), (side, side), input, seed)?,
        image_sizes: vec![(side, side); n],
        original_sizes: vec![(side, side); n],
        image_ids: (1..=n as u64).collect(),
        targets,
    })
}

/// A batch with its images on `dev`.
pub fn on_device(b: &Batch, dev: &Device) -> Result<Batch> {
    Ok(Batch {
        images: b.images.to_device(dev)?,
        ..b.clone()
    })
}

/// What a method's constructor reads of the run's data, for `classes` classes on `dev`: no
/// records, no val split (so teachers are not checked on one).
pub fn run_data(classes: usize, dev: &Device) -> RunData {
    let cats: Vec<hotcoco::types::Category> = (1..=classes as u64)
        .map(|id| hotcoco::types::Category {
            id,
            name: format!("class{id}"),
            ..Default::default()
        })
        .collect();
    RunData {
        device: dev.clone(),
        train: Split::Classification(ClassificationData {
            root: PathBuf::new(),
            categories: CategoryMap::new(&cats),
            records: vec![],
        }),
        val: None,
        unlabeled: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bench_pixels(4, 1)` of tools/bench_torch.py.
    const PYTHON_FIRST_FOUR: [f32; 4] = [0.338_166_6, 0.566_561_5, 0.745_781_7, 0.971_002_7];

    /// Values tools/bench_torch.py's `bench_pixels` gives for the same indices and seed (its
    /// numpy form was run once to write them here), so both sides see the same images.
    #[test]
    fn pixels_match_the_python_side_and_are_uniform() {
        let got: Vec<f32> = (0..4).map(|i| pixel(i, 1)).collect();
        assert_eq!(got, PYTHON_FIRST_FOUR);
        let n = 100_000;
        let mean: f64 = (0..n).map(|i| pixel(i, 7) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&pixel(i, 7))));
    }

    #[test]
    fn images_are_normalised_and_zero_padded() {
        let input = InputConfig::default();
        let t = images(1, (2, 3), (4, 5), &input, 1).unwrap();
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Image 0, channel 1, row 1, column 2: flat index (1·2 + 1)·3 + 2 = 11.
        let want = (pixel(11, 1) - input.mean[1]) / input.std[1];
        assert_eq!(v[(4 + 1) * 5 + 2], want);
        // Padding (row 2, and column 3 of row 0) is zero.
        assert_eq!(v[2 * 5], 0.0);
        assert_eq!(v[3], 0.0);
    }
}
