//! kdet: knowledge distillation of object detectors on candle.
//!
//! # Where things live
//!
//! | Module | What lives there |
//! |---|---|
//! | [`bench`] | `kdet bench ops`: kdet's ops against candle's built-ins, medians and ratios. |
//! | [`config`] | JSON run configs: serde types, `base` inheritance, located validation errors. |
//! | [`data`] | COCO parsing and checks ([`data::coco`]), transforms, threaded loader and samplers, the synthetic shapes dataset. |
//! | [`eval`] | COCO evaluation on hotcoco: `kdet eval`, streaming evaluation, `kdet compare` with bootstrap CIs, `kdet data check`. |
//! | [`hub`] | `hf://owner/repo/file@rev` weight specs: found in the Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME`), downloaded unless `HF_HUB_OFFLINE`. |
//! | [`ops`] | CPU custom ops (conv with GEMM backward, max-pool, BatchNorm, ReLU, RoIAlign) and box machinery (coder, IoU, NMS, anchors, matcher). |
//! | [`models`] | Layers with torchvision names, seeded init, ResNet 18–101 with width multiplier, FPN, Faster R-CNN (RPN, RoI heads), weight loading (safetensors, PyTorch `.pth`, key renames) with key reports. |
//! | [`infer`] | `kdet infer`: detections drawn on images + COCO results JSON. |
//! | [`engine`] | Training: the loop, SGD/AdamW with checkpointable state, lr schedule, atomic checkpoints and `--resume`, metrics JSONL and plots, evaluation over a val split. |
//! | [`distill`] | Teachers and the Distiller; loss terms: weighted soft CE, teacher-bounded regression, hints with adaptation, temperature KD. |
//! | [`export`] | `kdet export`: torchvision- or kdet-format safetensors + sidecar JSON. |
//! | [`device`] | `cpu` / `cuda:N` / `metal` selection, with the cargo feature to enable when missing. |
//! | [`plot`] | PNG charts (plotters, bundled font). |
//! | [`error`] | The library error type; every user-input error names file, JSON path and index. |
//! | [`util`] | Atomic file writes. |
//!
//! Conventions: boxes are `x1,y1,x2,y2` in absolute pixels inside the library (COCO `x,y,w,h`
//! only at I/O); label 0 is background (torchvision); every config default cites its source.

pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod distill;
pub mod engine;
pub mod error;
pub mod eval;
pub mod export;
pub mod hub;
pub mod infer;
pub mod models;
pub mod ops;
pub mod plot;
pub mod util;

pub use error::{Error, Result};
