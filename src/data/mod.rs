//! Datasets: the `data` config section ([`config`]), COCO parsing and validation ([`coco`]),
//! ImageFolder classification data ([`folder`]), transforms and the `model.input` section
//! ([`transforms`]), threaded batching and samplers ([`loader`]), the synthetic shapes datasets
//! ([`synth`]), the synthetic fixed-camera video ([`video`]), torchvision's COCO category list ([`torchvision_coco`]) and SimCLR's two-view
//! augmentation ([`contrastive`]). [`Split`] is either
//! kind of split, as training and evaluation see it.

pub mod coco;
pub mod config;
pub mod contrastive;
pub mod folder;
pub mod loader;
pub mod synth;
pub mod torchvision_coco;
pub mod transforms;
pub mod video;

use std::path::Path;

use coco::{CategoryMap, DetectionData, ImageRecord};
use folder::ClassificationData;

/// A split on disk: (annotations JSON, image folder).
pub type SplitPaths = (std::path::PathBuf, std::path::PathBuf);

/// Decode an image file whole, its format told by its contents (as `kdet data check` reads it),
/// not by its extension: a JPEG saved as `.png` decodes here exactly when it passed the check.
/// The EXIF orientation is applied, as PIL's `ImageOps.exif_transpose` does: a phone photo
/// stored sideways with Orientation = 6 comes out upright.
pub fn decode_image(path: &std::path::Path) -> crate::Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| crate::Error::io(path, e))?
        .into_decoder()
        .and_then(decode_oriented)
        .map_err(|e| crate::Error::msg(format!("{}: cannot decode: {e}", path.display())))
}

/// The whole image of `decoder`, its EXIF orientation applied.
pub fn decode_oriented(
    mut decoder: impl image::ImageDecoder,
) -> image::ImageResult<image::DynamicImage> {
    let orientation = decoder.orientation()?;
    // What `ImageReader::decode` checks: the pixels fit the default allocation limit, so a
    // small file claiming a huge image (a decompression bomb) is refused before allocating.
    image::Limits::default().reserve(decoder.total_bytes())?;
    let mut img = image::DynamicImage::from_decoder(decoder)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// The (width, height) an image has once decoded by [`decode_image`] (its EXIF orientation
/// applied), from its header.
pub fn oriented_dimensions(
    mut decoder: impl image::ImageDecoder,
) -> image::ImageResult<(u32, u32)> {
    use image::metadata::Orientation::*;
    let (w, h) = decoder.dimensions();
    Ok(match decoder.orientation()? {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
        _ => (w, h),
    })
}

/// A loaded split: COCO detection data, or classification data (one label per image).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per run: boxing would buy nothing
pub enum Split {
    Detection(DetectionData),
    Classification(ClassificationData),
}

impl Split {
    pub fn records(&self) -> &[ImageRecord] {
        match self {
            Split::Detection(d) => &d.records,
            Split::Classification(c) => &c.records,
        }
    }

    pub fn categories(&self) -> &CategoryMap {
        match self {
            Split::Detection(d) => &d.categories,
            Split::Classification(c) => &c.categories,
        }
    }

    /// SHA-256 identifying the split's training data, recorded in checkpoints so `--resume`
    /// refuses other data under the same name: of the COCO file; of an ImageFolder split's
    /// image paths (relative to its root) and labels, in order.
    pub fn fingerprint(&self) -> crate::Result<String> {
        match self {
            Split::Detection(d) => crate::util::sha256_file(&d.gt.file),
            Split::Classification(c) => {
                use sha2::{Digest, Sha256};
                let mut h = Sha256::new();
                for r in &c.records {
                    let p = r.path.strip_prefix(&c.root).unwrap_or(&r.path);
                    h.update(p.to_string_lossy().as_bytes());
                    for l in &r.labels {
                        h.update(b"\t");
                        h.update(l.to_string().as_bytes());
                    }
                    h.update(b"\n");
                }
                Ok(format!("{:x}", h.finalize()))
            }
        }
    }

    /// Where the split's ground truth is read from: the COCO file, or the ImageFolder root
    /// (`eval.json`'s `gt`, so that `kdet compare` checks runs were evaluated alike).
    pub fn truth(&self) -> &Path {
        match self {
            Split::Detection(d) => &d.gt.file,
            Split::Classification(c) => &c.root,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16×8 JPEG, left half red and right half blue, with an EXIF APP1 segment saying
    /// Orientation = 6 (shown rotated 90° clockwise), as phones write upright portraits.
    fn sideways_jpeg() -> Vec<u8> {
        let img = image::RgbImage::from_fn(16, 8, |x, _| {
            image::Rgb(if x < 8 { [255, 0, 0] } else { [0, 0, 255] })
        });
        let mut jpeg = vec![];
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        // TIFF header (big-endian, IFD at 8), one entry: 0x0112 Orientation, SHORT, 1, 6.
        let tiff: [u8; 26] = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0,
            0,
        ];
        let mut app1 = vec![0xFF, 0xE1, 0, (2 + 6 + tiff.len()) as u8];
        app1.extend(b"Exif\0\0");
        app1.extend(tiff);
        // Right after the start-of-image marker.
        jpeg.splice(2..2, app1);
        jpeg
    }

    #[test]
    fn exif_orientation_is_applied_when_decoding_and_in_header_sizes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("portrait.jpg");
        std::fs::write(&p, sideways_jpeg()).unwrap();
        let img = decode_image(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (8, 16));
        // Rotated clockwise: the stored left (red) half is now on top.
        let (top, bottom) = (img.get_pixel(4, 3), img.get_pixel(4, 12));
        assert!(top[0] > 200 && top[2] < 60, "{top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "{bottom:?}");
        let header = image::ImageReader::open(&p)
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .and_then(oriented_dimensions)
            .unwrap();
        assert_eq!(header, (8, 16));
    }

    #[test]
    fn a_classification_fingerprint_follows_files_and_labels_not_the_root() {
        let png = |p: &Path| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::RgbImage::new(4, 4).save(p).unwrap();
        };
        let fp = |root: &Path| {
            Split::Classification(folder::load_folder(root, None).unwrap())
                .fingerprint()
                .unwrap()
        };
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for r in [&a, &b] {
            png(&r.join("cat/1.png"));
            png(&r.join("dog/2.png"));
        }
        // The same files and labels under another root: the same data.
        assert_eq!(fp(&a), fp(&b));
        // An image moved to another class, or one more image: other data.
        std::fs::rename(b.join("dog/2.png"), b.join("cat/2.png")).unwrap();
        png(&b.join("dog/3.png"));
        assert_ne!(fp(&a), fp(&b));
        png(&a.join("dog/3.png"));
        assert_ne!(fp(&a), fp(&b));
    }
}
