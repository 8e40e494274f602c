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
                    Err(Error::located(file, path, e.into_inner().to_string()))
                }
            }
        }
    }
}

/// Read a whole file, with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
