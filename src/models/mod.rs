//! Networks behind one contract ([`contract::Model`]): each family in its own folder with its
//! settings beside it, chosen by the config's `arch` ([`config::ModelConfig`]) and built by
//! [`build`]. Shared parts: layers with torchvision names ([`layers`]), seeded initialisation
//! ([`init`]), the ResNet trunk ([`resnet`]), ResNet + FPN backbone ([`backbone`], [`fpn`]),
//! weight loading with key rules and reports ([`weights`]), and the JSON beside weights files
//! ([`sidecar`]).

pub mod backbone;
pub mod build;
pub mod classifier;
pub mod config;
pub mod contract;
pub mod faster_rcnn;
pub mod fpn;
pub mod init;
pub mod layers;
pub mod paa;
pub mod resnet;
pub mod sidecar;
pub mod weights;
