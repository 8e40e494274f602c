//! Batches for training and evaluation: worker threads decode and transform images ahead of the
//! training step (bounded prefetch), in an order fixed by the seed. Each sample draws its
//! augmentation from its own RNG seeded by (seed, epoch, position), so the result does not depend
//! on thread timing.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::coco::ImageRecord;
use super::contrastive::ContrastiveAugConfig;
use super::transforms::{
    color_jitter, hflip, hflip_boxes, normalize, pad_batch, resize_bilinear, resize_boxes,
    ImageF32, InputConfig,
};
use crate::error::{Error, Result};

/// How training images are drawn (`data.sampler`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// Each image once per epoch in a seeded random order.
    #[default]
    Instance,
    /// A class uniformly, then an image holding it (class-balanced sampling, as CBD uses).
    ClassBalanced,
}

/// Ground truth of one image in network coordinates (after resize and flip).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `x1,y1,x2,y2` boxes.
    pub boxes: Vec<[f32; 4]>,
    /// 1-based labels.
    pub labels: Vec<u32>,
    /// Crowd boxes (ignored by losses).
    pub crowd: Vec<[f32; 4]>,
}

/// One transformed image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub image_id: u64,
    pub image: ImageF32,
    pub target: Target,
    /// Size before resize `(h, w)`.
    pub original_size: (usize, usize),
    /// Whether the image was mirrored.
    pub flipped: bool,
}

/// A padded batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `B × 3 × H × W`, zero-padded to a multiple of `size_divisible`.
    pub images: Tensor,
    /// Sizes after resize, before padding, `(h, w)`.
    pub image_sizes: Vec<(usize, usize)>,
    pub original_sizes: Vec<(usize, usize)>,
    pub image_ids: Vec<u64>,
    pub targets: Vec<Target>,
}

/// Turns records into transformed samples.
#[derive(Debug, Clone)]
pub struct DetectionDataset {
    pub records: Vec<ImageRecord>,
    pub input: InputConfig,
    /// Flip probability; 0 for evaluation.
    pub flip_prob: f32,
    /// Colour-jitter strength (`data.color_jitter`); 0 for evaluation.
    pub color_jitter: f32,
    /// Two augmented views per image (a contrastive method's `augment`): a batch of N images
    /// holds 2N, every image's first view, then every image's second view, in the same order
    /// (SimCLR's `[view 1; view 2]` layout). `None`: one view (`sample`).
    pub views: Option<ContrastiveAugConfig>,
}

impl DetectionDataset {
    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Decode, normalise, resize and maybe flip record `idx`.
    pub fn sample(&self, idx: usize, rng: &mut impl Rng) -> Result<Sample> {
        let rec = &self.records[idx];
        let img = super::decode_image(&rec.path)
            .map_err(|e| {
                Error::msg(format!(
                    "{e} (training checks image headers only; \
                     `kdet data check ANNOTATIONS --images FOLDER` decodes every image)"
                ))
            })?
            .to_rgb8();
        let mut img = ImageF32::from_rgb(&img);
        let original_size = (img.h, img.w);
        color_jitter(&mut img, self.color_jitter, rng);
        normalize(&mut img, &self.input.mean, &self.input.std);
        let (nh, nw) = self.input.output_size(img.h, img.w);
        let mut img = resize_bilinear(&img, nh, nw);
        let mut target = Target {
            boxes: rec.boxes.clone(),
            labels: rec.labels.clone(),
            crowd: rec.crowd.clone(),
        };
        resize_boxes(&mut target.boxes, original_size, (nh, nw));
        resize_boxes(&mut target.crowd, original_size, (nh, nw));
        let flipped = self.flip_prob > 0.0 && rng.random::<f32>() < self.flip_prob;
        if flipped {
            hflip(&mut img);
            hflip_boxes(&mut target.boxes, nw);
            hflip_boxes(&mut target.crowd, nw);
        }
        Ok(Sample {
            image_id: rec.id,
            image: img,
            target,
            original_size,
            flipped,
        })
    }

    /// Two views of record `idx` under `aug` (`data::contrastive`), each `min_size` square and
    /// normalised; the RNG draws view 1's parameters, then view 2's.
    pub fn sample_views(
        &self,
        idx: usize,
        aug: &ContrastiveAugConfig,
        rng: &mut impl Rng,
    ) -> Result<[Sample; 2]> {
        let rec = &self.records[idx];
        let img = super::decode_image(&rec.path)
            .map_err(|e| Error::msg(format!("image {} ({}): {e}", rec.id, rec.path.display())))?
            .to_rgb8();
        let img = ImageF32::from_rgb(&img);
        let original_size = (img.h, img.w);
        let side = self.input.min_size as usize;
        let mut views = Vec::with_capacity(2);
        for _ in 0..2 {
            let (mut v, p) = aug.view(&img, side, rng);
            normalize(&mut v, &self.input.mean, &self.input.std);
            views.push(Sample {
                image_id: rec.id,
                image: v,
                target: Target {
                    boxes: vec![],
                    labels: rec.labels.clone(),
                    crowd: vec![],
                },
                original_size,
                flipped: p.flipped,
            });
        }
        let b = views.pop().expect("two views");
        let a = views.pop().expect("two views");
        Ok([a, b])
    }
}

/// Which images an epoch visits, in what order.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// Every image once, shuffled (or in order when `shuffle` is false).
    Instance { n: usize, shuffle: bool },
    /// `n` draws: a class uniformly among classes present, then an image holding it uniformly
    /// (class-balanced sampling as in CBD, Iscen et al. 2021 §3, after Kang et al. 2020).
    ClassBalanced {
        n: usize,
        per_class: Vec<Vec<usize>>,
    },
}

impl Sampler {
    pub fn new(kind: SamplerKind, records: &[ImageRecord], shuffle: bool) -> Self {
        match kind {
            SamplerKind::Instance => Sampler::Instance {
                n: records.len(),
                shuffle,
            },
            SamplerKind::ClassBalanced => {
                let k = records
                    .iter()
                    .flat_map(|r| r.labels.iter())
                    .copied()
                    .max()
                    .unwrap_or(0) as usize;
                let mut per_class = vec![Vec::new(); k];
                for (i, r) in records.iter().enumerate() {
                    let mut ls = r.labels.clone();
                    ls.sort_unstable();
                    ls.dedup();
                    for l in ls {
                        per_class[l as usize - 1].push(i);
                    }
                }
                per_class.retain(|v| !v.is_empty());
                Sampler::ClassBalanced {
                    n: records.len(),
                    per_class,
                }
            }
        }
    }

    /// The indices visited in `epoch`.
    pub fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, epoch, u64::MAX));
        match self {
            Sampler::Instance { n, shuffle } => {
                let mut v: Vec<usize> = (0..*n).collect();
                if *shuffle {
                    v.shuffle(&mut rng);
                }
                v
            }
            Sampler::ClassBalanced { n, per_class } => (0..*n)
                .filter_map(|_| {
                    let c = per_class.get(rng.random_range(0..per_class.len().max(1)))?;
                    Some(c[rng.random_range(0..c.len())])
                })
                .collect(),
        }
    }
}

/// SplitMix64-style mixing of (seed, epoch, position) into one RNG seed.
fn mix(seed: u64, epoch: u64, pos: u64) -> u64 {
    let mut z =
        seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pos.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Batches from a dataset, prepared by worker threads.
#[derive(Debug, Clone)]
pub struct Loader {
    pub dataset: Arc<DetectionDataset>,
    pub sampler: Sampler,
    pub batch_size: usize,
    pub workers: usize,
    pub prefetch: usize,
    pub seed: u64,
    pub device: Device,
}

impl Loader {
    /// Number of batches in one epoch (the last may be partial).
    pub fn batches_per_epoch(&self) -> usize {
        self.sampler
            .order(self.seed, 0)
            .len()
            .div_ceil(self.batch_size)
    }

    /// Iterate the batches of `epoch`. Workers start at once and stay `prefetch` batches ahead.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on (a resumed run), identical to those of a
    /// full epoch.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> EpochIter {
        let order = self.sampler.order(self.seed, epoch);
        let all: Vec<Vec<usize>> = order.chunks(self.batch_size).map(|c| c.to_vec()).collect();
        let skip = first.min(all.len());
        let chunks: Arc<Vec<(usize, Vec<usize>)>> =
            Arc::new(all.into_iter().enumerate().skip(skip).collect());
        let n_workers = self.workers.max(1).min(chunks.len().max(1));
        let mut receivers = Vec::with_capacity(n_workers);
        let mut handles = Vec::with_capacity(n_workers);
        for w in 0..n_workers {
            let (tx, rx) = sync_channel::<Result<Batch>>(self.prefetch.max(1));
            let chunks = chunks.clone();
            let ds = self.dataset.clone();
            let (seed, device) = (self.seed, self.device.clone());
            let bs = self.batch_size;
            handles.push(std::thread::spawn(move || {
                for b in (w..chunks.len()).step_by(n_workers) {
                    // Position in the epoch of the batch's first sample: seeds its augmentation.
                    let (index, members) = &chunks[b];
                    let batch = make_batch(&ds, members, seed, epoch, index * bs, &device);
                    if tx.send(batch).is_err() {
                        return; // consumer dropped the iterator
                    }
                }
            }));
            receivers.push(rx);
        }
        EpochIter {
            receivers,
            handles,
            next: 0,
            total: chunks.len(),
        }
    }
}

fn make_batch(
    ds: &DetectionDataset,
    indices: &[usize],
    seed: u64,
    epoch: u64,
    first_pos: usize,
    device: &Device,
) -> Result<Batch> {
    let rng = |k: usize| ChaCha8Rng::seed_from_u64(mix(seed, epoch, (first_pos + k) as u64));
    if let Some(aug) = &ds.views {
        let pairs = indices
            .iter()
            .enumerate()
            .map(|(k, &i)| ds.sample_views(i, aug, &mut rng(k)))
            .collect::<Result<Vec<_>>>()?;
        let (mut first, mut second) = (vec![], vec![]);
        for [a, b] in pairs {
            first.push(a);
            second.push(b);
        }
        first.extend(second);
        return collate(first, ds.input.size_divisible as usize, device);
    }
    let samples = indices
        .iter()
        .enumerate()
        .map(|(k, &i)| ds.sample(i, &mut rng(k)))
        .collect::<Result<Vec<_>>>()?;
    collate(samples, ds.input.size_divisible as usize, device)
}

/// Pad and stack samples into a batch on `device`.
pub fn collate(samples: Vec<Sample>, size_divisible: usize, device: &Device) -> Result<Batch> {
    let images: Vec<ImageF32> = samples.iter().map(|s| s.image.clone()).collect();
    let (buf, h, w) = pad_batch(&images, size_divisible);
    let images = Tensor::from_vec(buf, (samples.len(), 3, h, w), device)?;
    Ok(Batch {
        images,
        image_sizes: samples.iter().map(|s| (s.image.h, s.image.w)).collect(),
        original_sizes: samples.iter().map(|s| s.original_size).collect(),
        image_ids: samples.iter().map(|s| s.image_id).collect(),
        targets: samples.into_iter().map(|s| s.target).collect(),
    })
}

/// The batches of one epoch, in order.
pub struct EpochIter {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
}

impl EpochIter {
    pub fn len(&self) -> usize {
        self.total
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        Some(
            rx.recv()
                .unwrap_or_else(|_| Err(Error::msg("a data-loading worker stopped unexpectedly"))),
        )
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Dropping the receivers makes blocked workers' sends fail, so they exit.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize, dir: &std::path::Path) -> Vec<ImageRecord> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("{i}.png"));
                let img = image::RgbImage::from_fn(20 + i as u32, 16, |x, y| {
                    image::Rgb([(x * 9) as u8, (y * 13) as u8, i as u8])
                });
                img.save(&path).unwrap();
                ImageRecord {
                    id: i as u64 + 1,
                    path,
                    width: 20 + i as u32,
                    height: 16,
                    boxes: vec![[1.0, 2.0, 9.0, 10.0]],
                    labels: vec![(i % 3) as u32 + 1],
                    crowd: vec![],
                }
            })
            .collect()
    }

    fn loader(dir: &std::path::Path, workers: usize, seed: u64) -> Loader {
        let input = InputConfig {
            min_size: 32,
            max_size: 64,
            ..Default::default()
        };
        let recs = records(7, dir);
        Loader {
            sampler: Sampler::new(SamplerKind::Instance, &recs, true),
            dataset: Arc::new(DetectionDataset {
                records: recs,
                input,
                flip_prob: 0.5,
                color_jitter: 0.0,
                views: None,
            }),
            batch_size: 2,
            workers,
            prefetch: 1,
            seed,
            device: Device::Cpu,
        }
    }

    fn summary(l: &Loader, epoch: u64) -> Vec<(Vec<u64>, Vec<Target>, Vec<f32>)> {
        l.epoch(epoch)
            .map(|b| {
                let b = b.unwrap();
                let px = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (b.image_ids, b.targets, px)
            })
            .collect()
    }

    #[test]
    fn loader_is_deterministic_across_worker_counts() {
        let dir = tempfile::tempdir().unwrap();
        let a = summary(&loader(dir.path(), 1, 7), 0);
        let b = summary(&loader(dir.path(), 3, 7), 0);
        assert_eq!(a.len(), 4); // 7 images, batch 2 → last batch partial
        assert_eq!(a, b);
        let ids: Vec<u64> = a.iter().flat_map(|x| x.0.clone()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, (1..=7).collect::<Vec<_>>());
        // Another epoch or seed gives another order.
        let c = summary(&loader(dir.path(), 2, 7), 1);
        let d = summary(&loader(dir.path(), 2, 8), 0);
        assert_ne!(
            a.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
            c.iter().map(|x| x.0.clone()).collect::<Vec<_>>()
        );
        assert_ne!(a, d);
        // Flip happened for some samples and boxes were mirrored accordingly.
        let flipped = a
            .iter()
            .flat_map(|x| x.1.iter())
            .filter(|t| t.boxes[0][0] != 2.0)
            .count();
        assert!(flipped > 0 && flipped < 7, "{flipped}");
    }

    #[test]
    fn batch_is_padded_to_32() {
        let dir = tempfile::tempdir().unwrap();
        let l = loader(dir.path(), 2, 1);
        let b = l.epoch(0).next().unwrap().unwrap();
        let (_, c, h, w) = b.images.dims4().unwrap();
        assert_eq!(c, 3);
        assert_eq!((h % 32, w % 32), (0, 0));
        for &(ih, iw) in &b.image_sizes {
            assert_eq!(ih, 32); // shorter side 16 → 32
            assert!(iw <= w && iw >= 40);
        }
        // Dropping an iterator early does not hang.
        let mut it = l.epoch(1);
        it.next();
        drop(it);
    }

    #[test]
    fn class_balanced_sampler_balances() {
        // 1 image of class 1, 9 of class 2.
        let mk = |l: u32| ImageRecord {
            id: 0,
            path: "x".into(),
            width: 1,
            height: 1,
            boxes: vec![[0., 0., 1., 1.]],
            labels: vec![l],
            crowd: vec![],
        };
        let mut recs = vec![mk(1)];
        recs.extend((0..9).map(|_| mk(2)));
        let s = Sampler::new(SamplerKind::ClassBalanced, &recs, true);
        let mut hits = 0;
        for e in 0..200 {
            hits += s.order(3, e).iter().filter(|&&i| i == 0).count();
        }
        // Expected 0.5 × 10 × 200 = 1000 draws of the rare image (instance sampling: 200).
        assert!((850..1150).contains(&hits), "{hits}");
        assert_eq!(s.order(3, 5), s.order(3, 5));
    }

    #[test]
    fn class_frequencies_of_a_long_tailed_classification_set() {
        // One label per image (classification), classes of 100, 10 and 1 images, and 5 images
        // without a label (unlabeled data).
        let mk = |labels: Vec<u32>| ImageRecord {
            id: 0,
            path: "x".into(),
            width: 1,
            height: 1,
            boxes: vec![],
            labels,
            crowd: vec![],
        };
        let mut recs: Vec<ImageRecord> = [(1u32, 100), (2, 10), (3, 1)]
            .iter()
            .flat_map(|&(l, n)| (0..n).map(move |_| mk(vec![l])))
            .collect();
        recs.extend((0..5).map(|_| mk(vec![])));
        let freq = |kind| {
            let s = Sampler::new(kind, &recs, true);
            let mut per = [0usize; 4]; // classes 1..3, unlabeled
            for e in 0..50 {
                for i in s.order(9, e) {
                    per[recs[i].labels.first().map_or(3, |&l| l as usize - 1)] += 1;
                }
            }
            let n = per.iter().sum::<usize>() as f64;
            per.map(|c| c as f64 / n)
        };
        // Class-balanced: each class a third of the draws, never an unlabeled image.
        let cb = freq(SamplerKind::ClassBalanced);
        for f in &cb[..3] {
            assert!((f - 1.0 / 3.0).abs() < 0.02, "{cb:?}");
        }
        assert_eq!(cb[3], 0.0);
        // Instance sampling: the data's own frequencies, every image once per epoch.
        let inst = freq(SamplerKind::Instance);
        assert_eq!(inst.map(|f| (f * 116.0).round()), [100.0, 10.0, 1.0, 5.0]);
    }
}
