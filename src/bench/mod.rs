//! Benchmarks. [`rows`]: `kdet bench row NAME`, each row of docs/benchmarks.md (training,
//! distillation and inference steps, kernels) against PyTorch through tools/bench.sh, on any
//! device. [`check`]: `kdet bench check`, a device's results against the CPU's.
//!
//! `kdet bench ops`: kdet's CPU ops against candle's built-ins in the same process — a 3×3
//! 64→64 conv on 2×64×80×80 (forward, forward + backward) and a ResNet-18 training step (SGD
//! with momentum, BatchNorm in train mode) at 2×3×224×224. Medians after warm-up. With a JSON
//! file from tools/bench_ops_torch.py the table also shows the ratio to PyTorch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};

use crate::config::solver::SolverConfig;
use crate::engine::optim::{params_with_decay, Optimizer};
use crate::error::Result;
use crate::models::init::SeededVarMap;
use crate::models::layers::NormKind;
use crate::models::resnet::{ResNet, ResNetConfig};
use crate::ops::conv::{conv2d, ConvImpl, ConvParams};

pub mod check;
pub mod inputs;
pub mod rows;

/// One benchmark row: median milliseconds of kdet and of candle's built-in.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub name: String,
    pub kdet_ms: f64,
    pub candle_ms: f64,
    pub gflop: Option<f64>,
}

/// A repository file the benchmarks read (`configs/…`): under the current folder when it is
/// there — a binary carried to another machine runs from that machine's checkout
/// (tools/gpu_check.sh) — else under the source tree kdet was built from.
pub(crate) fn repo_file(rel: &str) -> std::path::PathBuf {
    let here = std::path::PathBuf::from(rel);
    if here.exists() {
        here
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }
}

/// The median as Python's `statistics.median` (tools/bench_torch.py) defines it: the middle
/// element, or the mean of the two middle ones of an even count.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

fn time<F: FnMut() -> Result<()>>(warmup: usize, runs: usize, mut f: F) -> Result<f64> {
    time_on(&Device::Cpu, warmup, runs, &mut f)
}

/// Median ms of `f` over `runs` after `warmup`, each run closed by a synchronisation of `dev`
/// (a GPU queues work and returns: without it the time would be the launches').
pub(crate) fn time_on(
    dev: &Device,
    warmup: usize,
    runs: usize,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    dev.synchronize()?;
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        dev.synchronize()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(t))
}

pub(crate) fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
    let m = Arc::new(SeededVarMap::new(seed));
    Ok(m.builder(DType::F32, &Device::Cpu).get_with_hints(
        shape,
        "x",
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
    )?)
}

/// Run the op benchmarks with `runs` timed repetitions per row. The ResNet row's reference swaps
/// only the convolutions for candle's `conv2d`: candle cannot train the 3×3/s2/p1 stem pool and
/// its SGD has no momentum, so the rest of that network is kdet's in both columns.
pub fn ops(runs: usize) -> Result<Vec<Row>> {
    let x = Var::from_tensor(&randn(&[2, 64, 80, 80], 1)?)?;
    let w = Var::from_tensor(&(randn(&[64, 64, 3, 3], 2)? * 0.05)?)?;
    let b = Var::from_tensor(&randn(&[64], 3)?)?;
    let p = ConvParams {
        stride: 1,
        padding: 1,
        dilation: 1,
        groups: 1,
    };
    let flop = 2.0 * 2.0 * 64.0 * 80.0 * 80.0 * 64.0 * 9.0 / 1e9;
    let mut rows = vec![];
    let fwd = |imp| {
        time(3, runs, || {
            conv2d(&x, &w, Some(&b), p, imp)?;
            Ok(())
        })
    };
    rows.push(Row {
        name: "conv3x3 64→64 2×64×80×80 forward".into(),
        kdet_ms: fwd(ConvImpl::Kdet)?,
        candle_ms: fwd(ConvImpl::Candle)?,
        gflop: Some(flop),
    });
    let fb = |imp| {
        time(3, runs, || {
            let y = conv2d(&x, &w, Some(&b), p, imp)?;
            y.sum_all()?.backward()?;
            Ok(())
        })
    };
    rows.push(Row {
        name: "conv3x3 forward + backward".into(),
        kdet_ms: fb(ConvImpl::Kdet)?,
        candle_ms: fb(ConvImpl::Candle)?,
        gflop: Some(3.0 * flop),
    });
    rows.push(Row {
        name: "ResNet-18 SGD step 2×3×224×224".into(),
        kdet_ms: resnet_step_with(18, ConvImpl::Kdet, 3, runs, &Device::Cpu)?,
        candle_ms: resnet_step_with(18, ConvImpl::Candle, 3, runs, &Device::Cpu)?,
        gflop: None,
    });
    Ok(rows)
}

/// A ResNet SGD step (momentum 0.9, weight decay 1e-4, BatchNorm in train mode) on 2 × 3 × 224 ×
/// 224 with kdet's convolution on `dev`, median ms.
pub fn resnet_step(depth: u32, warmup: usize, runs: usize, dev: &Device) -> Result<f64> {
    resnet_step_with(depth, ConvImpl::Kdet, warmup, runs, dev)
}

fn resnet_step_with(
    depth: u32,
    imp: ConvImpl,
    warmup: usize,
    runs: usize,
    dev: &Device,
) -> Result<f64> {
    {
        let m = Arc::new(SeededVarMap::new(0));
        let cfg = ResNetConfig {
            depth,
            width: 1.0,
            norm: NormKind::Bn,
            conv: imp,
            bn_eps: 1e-5,
        };
        let net = ResNet::new(m.builder(DType::F32, dev), cfg, Some(1000))?;
        let vars: Vec<(String, Var)> = m
            .varmap
            .data()
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let solver = SolverConfig {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            ..Default::default()
        };
        let mut opt = Optimizer::new(params_with_decay(vars, &solver), &solver);
        // The images of tools/bench_torch.py's ResNet rows (`inputs`).
        let input = inputs::images(
            2,
            (224, 224),
            (224, 224),
            &crate::data::transforms::InputConfig::default(),
            5,
        )?
        .to_device(dev)?;
        let labels = Tensor::new(&[3u32, 917], dev)?;
        time_on(dev, warmup, runs, &mut || {
            let logits = net.classify_t(&input, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
            let grads = loss.backward()?;
            opt.step(&grads, 0.01)
        })
    }
}

/// Markdown table; `torch` maps row index → PyTorch median ms (from tools/bench_ops_torch.py).
pub fn table(rows: &[Row], torch: &BTreeMap<usize, f64>) -> String {
    let mut s = String::from("| benchmark | kdet ms | candle built-in ms | candle / kdet | kdet GFLOP/s | PyTorch ms | kdet / PyTorch |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (i, r) in rows.iter().enumerate() {
        let gf = r
            .gflop
            .map_or("–".into(), |g| format!("{:.0}", g / (r.kdet_ms / 1e3)));
        let (t, ratio) = torch.get(&i).map_or(("–".into(), "–".into()), |t| {
            (format!("{t:.1}"), format!("{:.2}", r.kdet_ms / t))
        });
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2}× | {gf} | {t} | {ratio} |\n",
            r.name,
            r.kdet_ms,
            r.candle_ms,
            r.candle_ms / r.kdet_ms
        ));
    }
    s
}
