//! Datasets: the `data` config section ([`config`]), COCO parsing and validation ([`coco`]),
//! transforms and the `model.input` section ([`transforms`]), threaded batching and samplers
//! ([`loader`]), the synthetic shapes dataset ([`synth`]) and torchvision's COCO category list
//! ([`torchvision_coco`]).

pub mod coco;
pub mod config;
pub mod loader;
pub mod synth;
pub mod torchvision_coco;
pub mod transforms;

/// A split on disk: (annotations JSON, image folder).
pub type SplitPaths = (std::path::PathBuf, std::path::PathBuf);

/// Decode an image file whole, its format told by its contents (as `kdet data check` reads it),
/// not by its extension: a JPEG saved as `.png` decodes here exactly when it passed the check.
pub fn decode_image(path: &std::path::Path) -> crate::Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| crate::Error::io(path, e))?
        .decode()
        .map_err(|e| crate::Error::msg(format!("{}: cannot decode: {e}", path.display())))
}
