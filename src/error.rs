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
    /// A file could not be read or written. The OS error is part of the message and is not
    /// also reported as the error's source: `{:#}` (anyhow's chain) would print it twice.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A tensor operation failed (shape mismatch, device error …).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Anything else, with a sentence that says what and where.
    #[error("{0}")]
    Msg(String),
    /// A run stopped on a signal (Ctrl-C, SIGTERM) after writing a checkpoint; the CLI exits
    /// with 128 + the signal, as a process the signal had ended would.
    #[error("{msg}")]
    Interrupted { signal: i32, msg: String },
    /// A frame of `kdet online`'s stream could not be decoded (its index and file in the
    /// message): fatal unless the stream skips such frames.
    #[error("{0} (`kdet online --skip-unreadable` skips such frames)")]
    UnreadableFrame(String),
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
            err: source,
        }
    }

    /// A free-form error.
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}

/// The UTF-8 byte-order mark some Windows editors put at the start of a file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parse one JSON document from `bytes` into `T`. The fast path is plain serde_json; only when
/// that fails is the document parsed again through `serde_path_to_error`, so the error names the
/// JSON path (`annotations[17].bbox: invalid length 3, expected 4`) without slowing down good
/// files.
///
/// Anything but whitespace after the document is an error with its line and column (a second
/// document appended to the first would otherwise be ignored). A UTF-8 byte-order mark is refused
/// with a message saying so: Python's `json` module (pycocotools, torchvision's scripts) refuses
/// it too, so a file kdet accepts is one the rest of the toolchain reads.
pub fn parse_json<T: serde::de::DeserializeOwned>(file: &Path, bytes: &[u8]) -> Result<T> {
    if bytes.starts_with(UTF8_BOM) {
        return Err(Error::located(
            file,
            ".",
            "UTF-8 byte-order mark at the start: save the file without BOM (plain UTF-8)",
        ));
    }
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => v,
        Err(e) => {
            // serde_path_to_error writes `?` for a position it cannot name (a syntax error
            // before the next key); the enclosing path is what to show.
            let raw = e.path().to_string();
            let path = match raw.trim_end_matches(".?") {
                "?" => ".".to_string(),
                p => p.to_string(),
            };
            // serde_json's message keeps "at line L column C": for syntax errors the path
            // alone is not enough.
            let (path, msg) = split_nested(&path, &e.into_inner().to_string());
            return Err(Error::located(file, path, msg));
        }
    };
    // The document parsed, so what failed the fast path is what follows it.
    de.end().map_err(|e| {
        Error::located(
            file,
            ".",
            format!("{e}: only one JSON document is allowed, with nothing after it"),
        )
    })?;
    Ok(v)
}

/// The most a JSON input read whole may hold (COCO's largest annotation files, LVIS included,
/// are about 1 GB): a bound, so that a wrong path cannot make kdet read without end.
pub const MAX_JSON_BYTES: u64 = 4 << 30;

/// The most a config file (each file of a `base` chain) or a sidecar may hold: real ones are a
/// few KB.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Read a whole JSON input (at most [`MAX_JSON_BYTES`]), with the path in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    read_file_capped(path, MAX_JSON_BYTES)
}

/// Read a whole regular file of at most `max` bytes. Devices, pipes and folders are refused
/// before reading: `/dev/zero` or a FIFO would be read forever (or until memory runs out).
pub fn read_file_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let too_big = || {
        Error::msg(format!(
            "{}: is larger than {} MB, the most kdet reads from such a file: is it the right file?",
            path.display(),
            max >> 20
        ))
    };
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file (a device, pipe or socket)"
        };
        return Err(Error::msg(format!(
            "{}: is {what}; kdet reads this input from a regular file",
            path.display()
        )));
    }
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // The file may grow after the size check: read one byte past the cap to notice.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8]) -> Result<serde_json::Value> {
        parse_json(Path::new("x.json"), text)
    }

    #[test]
    fn one_document_and_nothing_after_it() {
        assert_eq!(parse(b" {\"a\": 1}\n\n ").unwrap()["a"], 1);
        // Two documents (`cat a.json b.json`): refused at the start of the second.
        let e = parse(b"{\"a\": 1}\n{\"a\": 2}\n").unwrap_err().to_string();
        assert!(
            e.starts_with("x.json: .: trailing characters at line 2 column 1"),
            "{e}"
        );
        let e = parse(b"{\"solver\": {}}} garbage").unwrap_err().to_string();
        assert!(e.contains("trailing characters at line 1 column 15"), "{e}");
        // The same through a typed target (the slow path re-parses with paths).
        let e = parse_json::<Vec<u32>>(Path::new("d.json"), b"[1, 2] [3]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("d.json: .: trailing characters"), "{e}");
    }

    #[test]
    fn byte_order_mark_is_named() {
        let e = parse(b"\xEF\xBB\xBF{}").unwrap_err().to_string();
        assert_eq!(
            e,
            "x.json: .: UTF-8 byte-order mark at the start: save the file without BOM (plain UTF-8)"
        );
    }

    #[test]
    fn devices_and_oversized_files_are_refused_before_reading() {
        let e = read_file(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("/dev/zero: is not a regular file"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = read_file(d.path()).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let big = d.path().join("big.json");
        std::fs::write(&big, vec![b' '; (2 << 20) + 1]).unwrap();
        let e = read_file_capped(&big, 2 << 20).unwrap_err().to_string();
        assert!(e.contains("big.json: is larger than 2 MB"), "{e}");
        assert_eq!(read_file(&big).unwrap().len(), (2 << 20) + 1);
    }

    #[test]
    fn os_error_is_printed_once_in_a_chain() {
        let e = Error::io("d", std::io::Error::from_raw_os_error(libc::EISDIR));
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(chain.matches("os error 21").count(), 1, "{chain}");
        assert!(chain.starts_with("d: Is a directory"), "{chain}");
    }
}
