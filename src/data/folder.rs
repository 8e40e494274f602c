//! Image classification data in torchvision's `ImageFolder` layout: one sub-folder per class
//! (its name is the class name; classes in sorted order, labels 1..=K), images (PNG or JPEG)
//! inside; and an unlabeled folder (images anywhere below it) for distillation on unlabeled
//! data. Every problem is an error naming the folder or file: no class folders, a class
//! without images, an image that does not decode, a val split whose classes differ from the
//! training split's.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::coco::{CategoryMap, ImageRecord};
use crate::error::{Error, Result};

/// A labeled split: its root, classes and one record per image (label, no boxes).
#[derive(Debug, Clone)]
pub struct ClassificationData {
    pub root: PathBuf,
    pub categories: CategoryMap,
    pub records: Vec<ImageRecord>,
}

impl ClassificationData {
    /// A seeded, class-stratified share of the images (SimCLRv2 §2 fine-tunes on 1 % and 10 %
    /// of ImageNet's labels, subsets drawn per class): from every class, in its images' path
    /// order shuffled by a ChaCha RNG of `seed` (classes in label order, one stream), the first
    /// `max(1, round(fraction · n_c))` — so each class keeps at least one image. The records
    /// stay in their original order.
    pub fn stratified_subset(&self, fraction: f64, seed: u64) -> Self {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut keep = vec![false; self.records.len()];
        for c in 1..=self.categories.len() as u32 {
            let mut idx: Vec<usize> = (0..self.records.len())
                .filter(|&i| self.records[i].labels.first() == Some(&c))
                .collect();
            idx.sort_by(|&a, &b| self.records[a].path.cmp(&self.records[b].path));
            idx.shuffle(&mut rng);
            let k = ((fraction * idx.len() as f64).round() as usize)
                .max(1)
                .min(idx.len());
            for &i in &idx[..k] {
                keep[i] = true;
            }
        }
        Self {
            root: self.root.clone(),
            categories: self.categories.clone(),
            records: self
                .records
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(r, _)| r.clone())
                .collect(),
        }
    }

    /// The records' paths relative to the split's root.
    pub fn file_names(&self) -> Vec<String> {
        self.records
            .iter()
            .map(|r| {
                r.path
                    .strip_prefix(&self.root)
                    .unwrap_or(&r.path)
                    .display()
                    .to_string()
            })
            .collect()
    }

    /// Images per class, in label order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.categories.len()];
        for r in &self.records {
            if let Some(&l) = r.labels.first() {
                c[l as usize - 1] += 1;
            }
        }
        c
    }
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|x| x.to_str())
        .is_some_and(|x| matches!(x.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

/// Hidden entries (`.ipynb_checkpoints`, `.DS_Store`, `.git`) are tool state, not data.
fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// A walk over image folders that reads each file and folder once, by its canonical path:
/// a symlink loop (`a/loop -> ..`) or a second link to a file would otherwise repeat images
/// (8 images became 328). What it sets aside is counted and said once ([`Walk::warn`]).
#[derive(Debug, Default)]
pub struct Walk {
    seen: std::collections::HashSet<PathBuf>,
    /// Folders already walked, reached again through a link (loops included).
    pub loops: usize,
    /// Image files already taken, reached again through a link.
    pub duplicates: usize,
    /// Hidden files and folders.
    pub hidden: usize,
}

impl Walk {
    /// Whether `p` is new (and now seen); a path that does not resolve counts as new, so the
    /// reader reports it.
    fn first_visit(&mut self, p: &Path) -> bool {
        let canon = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        self.seen.insert(canon)
    }

    /// The sub-folders and image files of `dir` (sorted), each once: hidden entries and
    /// repeats are skipped and counted.
    pub fn entries(&mut self, dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let (mut dirs, mut images) = (vec![], vec![]);
        for p in sorted_entries(dir)? {
            if is_hidden(&p) {
                self.hidden += 1;
            } else if p.is_dir() {
                match self.first_visit(&p) {
                    true => dirs.push(p),
                    false => self.loops += 1,
                }
            } else if p.is_file() && is_image(&p) {
                match self.first_visit(&p) {
                    true => images.push(p),
                    false => self.duplicates += 1,
                }
            }
        }
        Ok((dirs, images))
    }

    /// Every image at any depth below `dir`, sorted by folder then name.
    pub fn images_below(&mut self, dir: &Path) -> Result<Vec<PathBuf>> {
        self.first_visit(dir);
        let mut out = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let (dirs, images) = self.entries(&d)?;
            out.extend(images);
            stack.extend(dirs.into_iter().rev());
        }
        Ok(out)
    }

    /// Say on stderr what the walk of `root` skipped, if anything.
    pub fn warn(&self, root: &Path) {
        let mut said = vec![];
        if self.loops > 0 {
            said.push(format!(
                "{} folder link(s) to a folder already read (symlink loops included)",
                self.loops
            ));
        }
        if self.duplicates > 0 {
            said.push(format!(
                "{} link(s) to an image already read",
                self.duplicates
            ));
        }
        if self.hidden > 0 {
            said.push(format!(
                "{} hidden file(s) or folder(s) (names starting with `.`, such as .ipynb_checkpoints)",
                self.hidden
            ));
        }
        if !said.is_empty() {
            eprintln!("warning: {}: skipped {}", root.display(), said.join("; "));
        }
    }
}

/// The size of an image file from its header, or an error naming it.
fn image_size(path: &Path) -> Result<(u32, u32)> {
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?
        .into_decoder()
        .and_then(super::oriented_dimensions)
        .map_err(|e| Error::msg(format!("{}: cannot decode: {e}", path.display())))
}

/// Records of `files` (ids from `first_id`), each header checked, in parallel; the first bad
/// file in order is reported.
fn records(files: Vec<(PathBuf, Option<u32>)>, first_id: u64) -> Result<Vec<ImageRecord>> {
    let sizes: Vec<Result<(u32, u32)>> = files.par_iter().map(|(p, _)| image_size(p)).collect();
    files
        .into_iter()
        .zip(sizes)
        .enumerate()
        .map(|(i, ((path, label), size))| {
            let (width, height) = size?;
            Ok(ImageRecord {
                id: first_id + i as u64,
                path,
                width,
                height,
                boxes: vec![],
                labels: label.into_iter().collect(),
                crowd: vec![],
            })
        })
        .collect()
}

/// Load an `ImageFolder` split. With `classes`, the split must have exactly those class
/// folders (a val split against its training split).
pub fn load_folder(root: &Path, classes: Option<&[String]>) -> Result<ClassificationData> {
    if !root.is_dir() {
        return Err(Error::msg(format!(
            "{}: no such folder (an ImageFolder split: one sub-folder of images per class)",
            root.display()
        )));
    }
    let mut walk = Walk::default();
    walk.first_visit(root);
    let (dirs, _) = walk.entries(root)?;
    if dirs.is_empty() {
        return Err(Error::msg(format!(
            "{}: no class folders (an ImageFolder split has one sub-folder of images per class)",
            root.display()
        )));
    }
    let names: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    if let Some(want) = classes {
        if names != want {
            let missing: Vec<&String> = want.iter().filter(|c| !names.contains(c)).collect();
            let extra: Vec<&String> = names.iter().filter(|c| !want.contains(c)).collect();
            return Err(Error::msg(format!(
                "{}: its classes differ from the training split's (missing: {missing:?}; not in training: {extra:?})",
                root.display()
            )));
        }
    }
    let mut files = vec![];
    let mut nested = 0;
    for (k, d) in dirs.iter().enumerate() {
        let (subdirs, imgs) = walk.entries(d)?;
        if imgs.is_empty() {
            return Err(Error::msg(format!(
                "{}: class `{}` (class {} of {}) has no PNG or JPEG images",
                d.display(),
                names[k],
                k + 1,
                dirs.len()
            )));
        }
        for s in subdirs {
            nested += walk.images_below(&s)?.len();
        }
        files.extend(imgs.into_iter().map(|p| (p, Some(k as u32 + 1))));
    }
    walk.warn(root);
    if nested > 0 {
        // ImageFolder reads each class folder's own files; deeper ones are not its images.
        eprintln!(
            "warning: {}: {nested} image(s) in sub-folders of class folders are not read (an ImageFolder class is the images directly in its folder)",
            root.display()
        );
    }
    let cats: Vec<hotcoco::types::Category> = names
        .iter()
        .enumerate()
        .map(|(i, n)| hotcoco::types::Category {
            id: i as u64 + 1,
            name: n.clone(),
            ..Default::default()
        })
        .collect();
    Ok(ClassificationData {
        root: root.to_path_buf(),
        categories: CategoryMap::new(&cats),
        records: records(files, 1)?,
    })
}

/// Every image below `root` (sorted, any depth, each file once), unlabeled, ids from
/// `first_id`.
pub fn load_unlabeled(root: &Path, first_id: u64) -> Result<Vec<ImageRecord>> {
    if !root.is_dir() {
        return Err(Error::msg(format!(
            "{}: no such folder of unlabeled images",
            root.display()
        )));
    }
    let mut walk = Walk::default();
    let files = walk.images_below(root)?;
    walk.warn(root);
    if files.is_empty() {
        return Err(Error::msg(format!(
            "{}: no PNG or JPEG images",
            root.display()
        )));
    }
    records(files.into_iter().map(|p| (p, None)).collect(), first_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]))
            .save(p)
            .unwrap();
    }

    /// Per class `max(1, round(f · n_c))` images, the same for a seed, other for another seed.
    #[test]
    fn label_fraction_is_a_seeded_per_class_subset() {
        let d = tempfile::tempdir().unwrap();
        for (class, n) in [("a", 20), ("b", 5), ("c", 1)] {
            for i in 0..n {
                img(&d.path().join(format!("{class}/{i:02}.png")));
            }
        }
        let all = load_folder(d.path(), None).unwrap();
        let s = all.stratified_subset(0.1, 0);
        assert_eq!(s.class_counts(), [2, 1, 1]);
        assert_eq!(all.stratified_subset(0.5, 0).class_counts(), [10, 3, 1]);
        assert_eq!(all.stratified_subset(1.0, 0).file_names(), all.file_names());
        assert_eq!(s.file_names(), all.stratified_subset(0.1, 0).file_names());
        let other: Vec<Vec<String>> = (1..6)
            .map(|seed| all.stratified_subset(0.1, seed).file_names())
            .collect();
        assert!(
            other.iter().any(|o| *o != s.file_names()),
            "the seed picks the images"
        );
        // Kept in the split's order, every one a training image.
        let names = s.file_names();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.iter().all(|n| all.file_names().contains(n)));
    }

    #[test]
    fn classes_labels_and_located_errors() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        img(&r.join("train/b_square/1.png"));
        img(&r.join("train/a_circle/2.png"));
        img(&r.join("train/a_circle/1.png"));
        std::fs::write(r.join("train/a_circle/notes.txt"), "x").unwrap();
        let t = load_folder(&r.join("train"), None).unwrap();
        assert_eq!(t.categories.names, ["a_circle", "b_square"]);
        let labels: Vec<_> = t.records.iter().map(|x| x.labels.clone()).collect();
        assert_eq!(labels, [vec![1], vec![1], vec![2]]);
        assert!(t.records[0].path.ends_with("a_circle/1.png"));
        assert_eq!((t.records[0].width, t.records[0].height), (4, 3));
        assert_eq!(t.class_counts(), [2, 1]);
        // Empty class.
        std::fs::create_dir_all(r.join("train/c_empty")).unwrap();
        let e = load_folder(&r.join("train"), None).unwrap_err().to_string();
        assert!(
            e.contains("c_empty") && e.contains("class 3 of 3") && e.contains("no PNG"),
            "{e}"
        );
        std::fs::remove_dir(r.join("train/c_empty")).unwrap();
        // Unreadable image.
        std::fs::write(r.join("train/b_square/2.png"), b"not a png").unwrap();
        let e = load_folder(&r.join("train"), None).unwrap_err().to_string();
        assert!(e.contains("b_square/2.png") && e.contains("decode"), "{e}");
        std::fs::remove_file(r.join("train/b_square/2.png")).unwrap();
        // No classes; val classes must match.
        std::fs::create_dir_all(r.join("none")).unwrap();
        let e = load_folder(&r.join("none"), None).unwrap_err().to_string();
        assert!(e.contains("no class folders"), "{e}");
        img(&r.join("val/a_circle/1.png"));
        let e = load_folder(&r.join("val"), Some(&t.categories.names))
            .unwrap_err()
            .to_string();
        assert!(e.contains("b_square"), "{e}");
        // Unlabeled: every image at any depth, no labels.
        img(&r.join("u/x/1.png"));
        img(&r.join("u/2.jpg"));
        let u = load_unlabeled(&r.join("u"), 10).unwrap();
        assert_eq!(u.len(), 2);
        assert!(u.iter().all(|x| x.labels.is_empty()) && u[0].id == 10);
    }

    #[test]
    fn loops_links_hidden_and_nested_entries_are_skipped_once() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for i in 0..4 {
            img(&r.join(format!("u/a/{i}.png")));
        }
        // A loop back to the root and a second name for an image.
        symlink(r.join("u"), r.join("u/a/loop")).unwrap();
        symlink(r.join("u/a/0.png"), r.join("u/a/zz.png")).unwrap();
        img(&r.join("u/.ipynb_checkpoints/x.png"));
        let u = load_unlabeled(&r.join("u"), 1).unwrap();
        assert_eq!(u.len(), 4);
        let mut w = Walk::default();
        w.images_below(&r.join("u")).unwrap();
        assert_eq!((w.loops, w.duplicates, w.hidden), (1, 1, 1));

        // ImageFolder: a hidden folder is no class; a linked class is read once; nested
        // images are counted, not read.
        img(&r.join("t/cat/1.png"));
        img(&r.join("t/cat/deeper/2.png"));
        img(&r.join("t/dog/1.png"));
        img(&r.join("t/.ipynb_checkpoints/1.png"));
        symlink(r.join("t/dog"), r.join("t/hound")).unwrap();
        let t = load_folder(&r.join("t"), None).unwrap();
        assert_eq!(t.categories.names, ["cat", "dog"]);
        assert_eq!(t.records.len(), 2);
    }
}
