//! kdet: knowledge distillation of object detectors (and of the classification backbones they
//! start from) on candle.
//!
//! # Where things live
//!
//! | Module | What lives there |
//! |---|---|
//! | [`config`] | JSON run configs: top-level sections, `base` inheritance, located validation errors; the `solver`, `teachers` and `distill` schemas. |
//! | [`models`] | The model contract ([`models::contract`]: forward → assignment → losses/head outputs, taps, predictions), the `arch`-tagged model section and family table ([`models::config`]), the builder, Faster R-CNN (RPN, RoI heads), PAA, the image classifier (`classifier`: linear or cosine head, SimCLRv2 MLP layers, CBD projection), ResNet + FPN, seeded init, weight loading with key rules and reports, sidecars. |
//! | [`engine`] | Training: the training-method seam and plain training ([`engine::method`]), the loop, SGD/AdamW with checkpointable state, lr schedule, atomic checksummed checkpoints and `--resume` (what it may change: [`engine::resume`]), the run folder's files ([`engine::rundir`]), several training seeds in one command ([`engine::seeds`]), metrics JSONL and plots, evaluation over a val split ([`engine::evaluator`]: detections or class probabilities, whichever the model predicts). |
//! | [`distill`] | Distillation methods, one file each (Chen et al. 2017, LAD, Co-LAD, SimCLRv2, CBD), their loss terms (hints with adaptation, weighted soft CE, teacher-bounded regression, temperature KD), frozen teachers (kdet models; candle-transformers' ResNet and DINOv2 from the hub, [`distill::pretrained`]), and `build_method`. |
//! | [`federated`] | Federated training simulated in one process: partitions (Dirichlet over labels, shards, IID), rounds of client training through the loop's step, FedAvg; its client methods FedNTD and FedX live in `distill`. |
//! | [`data`] | The `data` section, COCO parsing and checks ([`data::coco`]), ImageFolder classification splits ([`data::folder`]), transforms and the `model.input` section, threaded loader and samplers (instance, class-balanced), the synthetic shapes datasets (detection; classification crops with a long tail), torchvision's COCO category list. |
//! | [`eval`] | COCO evaluation on hotcoco: `kdet eval`, streaming evaluation, `kdet compare` with bootstrap CIs (over seeds and val images for multi-seed runs: [`eval::multiseed`]), `kdet data check`; classification accuracy (top-1/5, per class, many/medium/few) and its bootstrap comparison ([`eval::classify`]). |
//! | [`ops`] | CPU custom ops (conv with GEMM backward, max-pool, BatchNorm, ReLU, RoIAlign), box machinery (coder, IoU, NMS, anchors, matcher) and the 1-D GMM of PAA. |
//! | [`infer`] | `kdet infer`: detections drawn on images + COCO results JSON; a classifier's top-k classes per image. |
//! | [`manifest`] | A folder's manifest (`kdet-run.json`, `kdet-infer.json`): the files a command writes there, its proof of ownership before anything is removed or overwritten. |
//! | [`export`] | `kdet export`: torchvision- or kdet-format safetensors + sidecar JSON. |
//! | [`hub`] | `hf://owner/repo/file@rev` weight specs: found in the Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME`), downloaded unless `HF_HUB_OFFLINE`. |
//! | [`device`] | `cpu` / `cuda:N` / `metal` selection, with the cargo feature to enable when missing; the precision of frozen models. |
//! | [`bench`] | `kdet bench ops`: kdet's ops against candle's built-ins, medians and ratios. |
//! | [`plot`] | PNG charts (plotters, bundled font). |
//! | [`error`] | The library error type (every user-input error names file, JSON path and index) and validation helpers. |
//! | [`util`] | Atomic file writes, SHA-256 of files, the `KDET_FAULT` fault-injection hook of the reliability tests. |
//!
//! How one training step flows through these, and how to add a model family or a training
//! method: docs/architecture.md.
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
pub mod federated;
pub mod hub;
pub mod infer;
pub mod manifest;
pub mod models;
pub mod ops;
pub mod plot;
pub mod util;

pub use error::{Error, Result};
