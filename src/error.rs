//! The library's error type. Every error about user input names the file and the JSON path (or
//! the field and index) it concerns, so a user can go straight to the offending value.

use std::path::{Path, PathBuf};

/// Errors raised by kdet's library. The CLI wraps them in `anyhow` at the edge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value in a user file is wrong: `file: path: message`.
    #[error("{}: {path}: {msg}", file.display())]
    Located {
        file: PathBuf,
        /// JSON path (`annotations[17].bbox`) or field name; `.` for the whole document.
        path: String,
        msg: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tensor operation failed (shape mismatch, device error …).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Anything else, with a sentence that says what and where.
    #[error("{0}")]
    Msg(String),
}

/// Result alias used across the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A located error about a value inside `file`.
    pub fn located(
        file: impl AsRef<Path>,
        path: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Located {
            file: file.as_ref().to_path_buf(),
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A free-form error.
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}

/// Parse JSON bytes into `T`. The fast path is plain serde_json; only when that fails is the
/// document parsed again through `serde_path_to_error`, so the error names the JSON path
/// (`annotations[17].bbox: invalid length 3, expected 4`) without slowing down good files.
pub fn parse_json<T: serde::de::DeserializeOwned>(file: &Path, bytes: &[u8]) -> Result<T> {
    match serde_json::from_slice::<T>(bytes) {
        Ok(v) => Ok(v),
        Err(_) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Ok(v) => Ok(v),
                Err(e) => {
                    // serde_path_to_error writes `?` for a position it cannot name (a syntax
                    // error before the next key); the enclosing path is what to show.
                    let raw = e.path().to_string();
                    let path = match raw.trim_end_matches(".?") {
                        "?" => ".".to_string(),
                        p => p.to_string(),
                    };
                    // serde_json's message keeps "at line L column C": for syntax errors the
                    // path alone is not enough.
                    let (path, msg) = split_nested(&path, &e.into_inner().to_string());
                    Err(Error::located(file, path, msg))
                }
            }
        }
    }
}

/// Read a whole file, with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// A value that failed validation: its JSON path inside the document (`solver.lr`,
/// `model.backbone.depth`) and why. Each subsystem validates its own section of a config and
/// returns this; the config loader turns it into a located [`Error`] naming the file that set
/// the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub path: String,
    pub msg: String,
}

/// The result of validating a section.
pub type Check = std::result::Result<(), Invalid>;

/// A validation failure at `path`.
pub fn invalid(path: impl Into<String>, msg: impl Into<String>) -> Invalid {
    Invalid {
        path: path.into(),
        msg: msg.into(),
    }
}

/// `v > 0` and finite.
pub fn positive(path: &str, v: f64) -> Check {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(invalid(path, "must be > 0"))
    }
}

/// `v >= 0` and finite.
pub fn nonneg(path: &str, v: f64) -> Check {
    if v >= 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(invalid(path, "must be >= 0"))
    }
}

/// `v` in `[0, 1]`.
pub fn unit(path: &str, v: f64) -> Check {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(path, "must be in [0, 1]"))
    }
}

/// Marks a deserialisation error raised inside a value that deserialises itself from a buffered
/// document (the `arch`-tagged model section): serde loses the path there, so the inner path
/// travels in the message and [`split_nested`] joins it back onto the outer one.
const NESTED: char = '\u{1}';

/// An error message carrying `inner_path` (relative to the value being deserialised).
pub fn nested(inner_path: &str, msg: impl std::fmt::Display) -> String {
    format!("{NESTED}{inner_path}{NESTED}{msg}")
}

/// The full JSON path and message of a deserialisation error at `outer_path` whose message may
/// come from [`nested`].
pub fn split_nested(outer_path: &str, msg: &str) -> (String, String) {
    let Some(rest) = msg.strip_prefix(NESTED) else {
        return (outer_path.to_string(), msg.to_string());
    };
    let Some((inner, msg)) = rest.split_once(NESTED) else {
        return (outer_path.to_string(), rest.to_string());
    };
    let path = match (outer_path, inner) {
        ("." | "", i) => i.to_string(),
        (o, "." | "") => o.to_string(),
        (o, i) => format!("{o}.{i}"),
    };
    // A nested value inside a nested value: resolve recursively.
    split_nested(&path, msg)
}
