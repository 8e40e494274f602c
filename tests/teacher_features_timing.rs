//! A measurement, not a test (ignored by default): how much of a frozen teacher's forward pass
//! `Model::features` saves — the shipped synthetic teachers (Faster R-CNN R18 ×0.5 and PAA
//! R18 ×0.5) on the bench rows' batch (4 images of 128²), each pass timed 80 times in one
//! process, the two alternating, the first 10 of each left out as warm-up. docs/benchmarks.md
//! ("A feature term's teacher") has the numbers. Run:
//!
//!     cargo test --release --test teacher_features_timing -- --ignored --nocapture

use std::time::Instant;

use candle_core::{Device, Tensor};
use kdet::distill::teacher::Teacher;

const REPEATS: usize = 80;
const WARMUP: usize = 10;

fn median(v: &[f64]) -> f64 {
    let mut v = v[WARMUP..].to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(f: impl FnOnce()) -> f64 {
    let s = Instant::now();
    f();
    s.elapsed().as_secs_f64() * 1e3
}

#[test]
#[ignore = "a timing, run by hand (see the module's comment)"]
fn features_against_the_whole_forward_of_the_synthetic_teachers() {
    // As the kdet binary runs (src/main.rs).
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    kdet::util::tune_allocator();
    let dev = Device::Cpu;
    let images = Tensor::randn(0f32, 1.0, (4, 3, 128, 128), &dev).unwrap();
    for path in ["configs/synth/frcnn_pkd.json", "configs/synth/paa_pkd.json"] {
        let cfg = kdet::config::load(std::path::Path::new(path)).unwrap();
        let t = Teacher::load(&cfg, 0, 5, &dev).unwrap();
        let m = &t.model;
        let (mut full, mut feat) = (vec![], vec![]);
        for i in 0..REPEATS {
            let mut forward = || full.push(ms(|| drop(m.forward(&images, false).unwrap())));
            if i % 2 == 0 {
                forward();
            }
            feat.push(ms(|| drop(m.features(&images, false).unwrap())));
            if i % 2 == 1 {
                forward();
            }
        }
        let (a, b) = (median(&full), median(&feat));
        let mut r: Vec<f64> = full
            .iter()
            .zip(&feat)
            .skip(WARMUP)
            .map(|(x, y)| y / x)
            .collect();
        r.sort_by(f64::total_cmp);
        let q = |k: usize| r[k * (r.len() - 1) / 4];
        println!(
            "{path}: teacher forward {a:.1} ms, features {b:.1} ms (saves {:.1} ms); features / forward per pair: median {:.3}, quartiles {:.3}–{:.3}",
            a - b,
            q(2),
            q(1),
            q(3)
        );
        // What the terms read is the same either way.
        let (x, y) = (
            m.forward(&images, false).unwrap().taps,
            m.features(&images, false).unwrap(),
        );
        for (name, t) in &x {
            let d = (t - &y[name]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{path}: {name}");
        }
    }
}
