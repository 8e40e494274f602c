//! Networks: layers with torchvision names ([`layers`]), seeded initialisation ([`init`]), and
//! the ResNet backbone ([`resnet`]).

pub mod init;
pub mod layers;
pub mod resnet;
