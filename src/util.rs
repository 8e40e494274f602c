//! Small file helpers shared by the data, checkpoint and export code.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Create `path` atomically: `write` fills a temporary file in the same folder (created if
/// missing), which is fsynced and renamed into place. A crash leaves either the old file or the
/// new one, never a torn one.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    write(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Keep freed memory in the process instead of returning every large block to the kernel.
///
/// Training allocates and frees tensors of the same sizes every step. glibc serves blocks above
/// 128 KiB with fresh `mmap`s and unmaps them on free, so each step pays page faults and page
/// zeroing for every activation (measured: a third of a ResNet-18 backward on CPU). Raising the
/// mmap and trim thresholds lets freed blocks be reused. No effect on other C libraries.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before heavy allocation.
    unsafe {
        const GIB: i32 = 1 << 30;
        libc::mallopt(libc::M_MMAP_THRESHOLD, GIB);
        libc::mallopt(libc::M_TRIM_THRESHOLD, GIB);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/x.json");
        super::write_atomic(&p, b"1").unwrap();
        super::write_atomic(&p, b"22").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"22");
        assert_eq!(std::fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
    }
}
