//! Networks: layers with torchvision names ([`layers`]), seeded initialisation ([`init`]), and
//! the ResNet backbone ([`resnet`]).

pub mod backbone;
pub mod faster_rcnn;
pub mod fpn;
pub mod init;
pub mod layers;
pub mod resnet;
pub mod weights;
