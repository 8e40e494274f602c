//! Small file helpers shared by the data, checkpoint and export code, and the fault-injection
//! hook of the reliability tests.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// The temporary file [`write_atomic_with`] fills for `name`, in the same folder:
/// `.<name>.<pid>.tmp`.
pub fn temporary_name(name: &str, pid: u32) -> String {
    format!(".{name}.{pid}.tmp")
}

/// Whether `file` is a temporary file of [`write_atomic_with`] for one of `names`, and of
/// which process: `.<name>.<pid>.tmp`.
pub fn temporary_of(file: &str, names: impl Fn(&str) -> bool) -> Option<u32> {
    let rest = file.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (name, pid) = rest.rsplit_once('.')?;
    let pid: u32 = pid.parse().ok()?;
    names(name).then_some(pid)
}

/// Create `path` atomically: `write` fills a temporary file in the same folder (created if
/// missing), which is fsynced and renamed into place. A crash leaves either the old file or the
/// new one, never a torn one; a failed write (disk full) removes its temporary file.
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
    let tmp = dir.join(temporary_name(&name, std::process::id()));
    let done = write(&tmp).and_then(|_| {
        if fault_point(&format!("torn:{name}")) {
            // Test hook: die with half the temporary file written, as a kill inside the
            // write would.
            let len = std::fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&tmp)
                .and_then(|f| f.set_len(len / 2));
            kill_self();
        }
        // Writers that go through their own temporary file (safetensors) leave it 0600; the
        // result should be readable as any file the user creates.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(created_file_mode()))
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    });
    done.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        // Said from the file's point of view: the temporary name means nothing to a user.
        Error::msg(format!(
            "{}: not written ({e}); the file there before, if any, is unchanged",
            path.display()
        ))
    })
}

/// `bytes` in GB for a message: `4 GB`, or `1.0e12 GB` for figures too long to read.
pub fn gigabytes(bytes: f64) -> String {
    let gb = bytes / 1e9;
    if gb < 1e4 {
        format!("{gb:.0} GB")
    } else {
        format!("{gb:.1e} GB")
    }
}

/// The mode `File::create` gives a new file: 0666 without the process umask. Read from
/// `/proc/self/status`, since umask(2) can only be read by changing it (racing other threads);
/// 0644 (the usual umask 022) where that is not available.
pub fn created_file_mode() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .map_or(0o644, |umask| 0o666 & !umask)
}

/// Whether process `pid` exists (signal 0 checks without sending anything): a temporary file
/// named after a live process may still be being written.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The environment variable naming the fault the reliability tests inject:
/// `KDET_FAULT=<point>[:<n>]` fires at the `n`-th time (default 1) this process reaches
/// `<point>`. The points (docs/reliability.md): `torn:<file>` (die with half of an atomic write
/// of `<file>` done), `metrics.torn` (die half-way through a metrics record), `eval` (die before
/// an evaluation), `nan-loss` (the step's loss becomes NaN).
pub const FAULT_VAR: &str = "KDET_FAULT";

/// Whether the fault named by [`FAULT_VAR`] fires here, now. Never true unless the variable is
/// set.
pub fn fault_point(point: &str) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static FAULT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let fault = FAULT.get_or_init(|| {
        let v = std::env::var(FAULT_VAR).ok()?;
        Some(match v.rsplit_once(':') {
            Some((p, n)) if n.parse::<u64>().is_ok() => (p.to_string(), n.parse().ok()?),
            _ => (v, 1),
        })
    });
    match fault {
        Some((p, n)) if p == point => HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n,
        _ => false,
    }
}

/// End this process at once, as `kill -9` does: no destructors, no flushing.
pub fn kill_self() -> ! {
    // SAFETY: sending a signal to ourselves has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
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

/// The process's resident memory now, MiB (`/proc/self/statm`; NaN where there is none).
pub fn rss_mb() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * page / (1024.0 * 1024.0))
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

    #[test]
    fn failed_atomic_write_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.bin");
        super::write_atomic(&p, b"old").unwrap();
        let e = super::write_atomic_with(&p, |tmp| {
            std::fs::write(tmp, b"part").unwrap();
            Err(crate::Error::msg("disk full"))
        });
        let e = e.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: not written (disk full)", p.display())),
            "{e}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn atomic_writes_get_the_umask_mode_even_from_0600_writers() {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        super::write_atomic_with(&p, |tmp| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp)
                .map(drop)
                .map_err(|e| crate::Error::io(tmp, e))
        })
        .unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, super::created_file_mode());
        // What File::create gives in this process.
        let plain = d.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let want = std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want);
    }

    #[test]
    fn temporary_names_round_trip() {
        let n = super::temporary_name("checkpoint.safetensors", 4242);
        assert_eq!(n, ".checkpoint.safetensors.4242.tmp");
        let ours = |f: &str| f == "checkpoint.safetensors";
        assert_eq!(super::temporary_of(&n, ours), Some(4242));
        assert_eq!(super::temporary_of(".other.json.12.tmp", ours), None);
        assert_eq!(
            super::temporary_of(".checkpoint.safetensors.x.tmp", ours),
            None
        );
        assert_eq!(super::temporary_of("checkpoint.safetensors", ours), None);
    }
}
