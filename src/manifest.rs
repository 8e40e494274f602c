//! A folder's manifest: the files a kdet command writes there (a training run's
//! `kdet-run.json`, an inference's `kdet-infer.json`), written atomically *before* any of them.
//! It is kdet's proof of ownership: a later command removes or overwrites only files that a
//! manifest lists, never a file of the same name that the user put there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a manifest file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Which command wrote the folder (`run`, `infer`): a folder of one is not the other's.
    pub kind: String,
    /// The kdet version that last wrote the manifest.
    pub written_by: String,
    /// The files (plain names inside the folder) the command writes there.
    pub files: BTreeSet<String>,
}

impl Manifest {
    /// A manifest of `kind` listing `files`.
    pub fn new(kind: &str, files: impl IntoIterator<Item = String>) -> Self {
        Self {
            kind: kind.to_string(),
            written_by: format!("kdet {}", env!("CARGO_PKG_VERSION")),
            files: files.into_iter().collect(),
        }
    }

    /// The manifest `dir/name`, `None` when there is none. A damaged one is an error naming
    /// it (it cannot prove anything, and guessing could remove the user's files).
    pub fn read(dir: &Path, name: &str) -> Result<Option<Manifest>> {
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let m: Manifest = crate::error::parse_json(&path, &bytes)?;
        if let Some(bad) = m.files.iter().find(|f| !is_plain_name(f)) {
            return Err(Error::located(
                &path,
                "files",
                format!("`{bad}` is not a file name inside the folder"),
            ));
        }
        Ok(Some(m))
    }

    /// Write it as `dir/name`, atomically.
    pub fn write(&self, dir: &Path, name: &str) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        crate::util::write_atomic(&dir.join(name), text.as_bytes())
    }

    /// The listed files present in `dir`, as paths.
    pub fn present(&self, dir: &Path) -> Vec<PathBuf> {
        self.files
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.symlink_metadata().is_ok())
            .collect()
    }
}

/// A name that stays inside its folder: no separator, not `.`/`..`, not empty. A tampered
/// manifest must not make kdet remove files elsewhere.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// The same file: both paths exist and resolve (symbolic links followed) to one path.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_is_named() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::read(d.path(), "m.json").unwrap(), None);
        let m = Manifest::new("run", ["a.json".to_string(), "b.png".to_string()]);
        m.write(d.path(), "m.json").unwrap();
        assert_eq!(Manifest::read(d.path(), "m.json").unwrap(), Some(m.clone()));
        std::fs::write(d.path().join("a.json"), b"x").unwrap();
        assert_eq!(m.present(d.path()), vec![d.path().join("a.json")]);
        // A name leading out of the folder is refused, never followed.
        std::fs::write(
            d.path().join("m.json"),
            r#"{"kind": "run", "written_by": "x", "files": ["../etc"]}"#,
        )
        .unwrap();
        let e = Manifest::read(d.path(), "m.json").unwrap_err().to_string();
        assert!(
            e.contains("m.json: files: `../etc` is not a file name"),
            "{e}"
        );
        std::fs::write(d.path().join("m.json"), b"{").unwrap();
        let e = Manifest::read(d.path(), "m.json").unwrap_err().to_string();
        assert!(e.contains("m.json"), "{e}");
    }
}
