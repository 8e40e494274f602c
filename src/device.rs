//! Device selection (`cpu`, `cuda`, `cuda:N`, `metal`) and the precision of frozen models. A
//! binary built without the matching cargo feature says exactly which feature to enable instead
//! of failing somewhere deep in candle; a `cuda` build that cannot load the driver or the CUDA
//! libraries names the missing ones.

use candle_core::Device;

/// A parsed device string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    Metal,
}

/// Parse `cpu | cuda | cuda:N | metal`; the error is a sentence for a located message.
pub fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    match s {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        "metal" => Ok(DeviceSpec::Metal),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => n
                .parse::<usize>()
                .map(DeviceSpec::Cuda)
                .map_err(|_| format!("`{s}`: the GPU index after `cuda:` must be a number")),
            None => Err(format!(
                "`{s}` is not a device; use cpu, cuda, cuda:N or metal"
            )),
        },
    }
}

/// Open the device. Fails with the cargo feature to enable when this build lacks it.
pub fn open(spec: DeviceSpec) -> crate::Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(i) => {
            if cfg!(feature = "cuda") {
                open_cuda(i)
            } else {
                Err(crate::Error::msg(
                    "this kdet was built without CUDA support: run on the CPU with \
                     `--device cpu` (or `\"device\": \"cpu\"` in the config), or rebuild with \
                     `cargo build --release --features cuda` (needs a CUDA toolkit)",
                ))
            }
        }
        DeviceSpec::Metal => {
            if cfg!(feature = "metal") {
                Ok(Device::new_metal(0)?)
            } else {
                Err(crate::Error::msg(
                    "this kdet was built without Metal support: run on the CPU with \
                     `--device cpu` (or `\"device\": \"cpu\"` in the config), or rebuild with \
                     `cargo build --release --features metal` (macOS only)",
                ))
            }
        }
    }
}

/// The shared libraries `--device cuda` loads at run time (the `cuda` build loads them with
/// dlopen, tools/build_cuda_binary.sh), each with the file names tried and what provides it.
pub const CUDA_LIBRARIES: &[(&[&str], &str)] = &[
    (&["libcuda.so.1", "libcuda.so"], "the NVIDIA driver"),
    (&["libcublas.so.13", "libcublas.so"], "cuBLAS of CUDA 13"),
    (
        &["libcublasLt.so.13", "libcublasLt.so"],
        "cuBLASLt of CUDA 13",
    ),
    (&["libcurand.so.10", "libcurand.so"], "cuRAND of CUDA 13"),
];

/// Whether the dynamic loader finds one of `names` (dlopen, closed again at once).
pub fn library_loads(names: &[&str]) -> bool {
    names.iter().any(|n| {
        let Ok(c) = std::ffi::CString::new(*n) else {
            return false;
        };
        // SAFETY: dlopen of a NUL-terminated name; the handle is closed before returning.
        unsafe {
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if h.is_null() {
                false
            } else {
                libc::dlclose(h);
                true
            }
        }
    })
}

/// The error for libraries the loader cannot find, or `None` when every one loads. cudarc
/// would panic on the first missing one; this names them all and where they come from.
pub fn missing_libraries_error(libs: &[(&[&str], &str)]) -> Option<String> {
    let missing: Vec<String> = libs
        .iter()
        .filter(|(names, _)| !library_loads(names))
        .map(|(names, what)| format!("{} ({what})", names[0]))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let driver = missing.iter().any(|m| m.starts_with("libcuda.so"));
    Some(format!(
        "--device cuda: cannot load {}{}; set LD_LIBRARY_PATH to the folders that hold them \
         (a CUDA 13 toolkit's lib64, or a PyTorch install's nvidia/*/lib), or run on the CPU \
         with `--device cpu`",
        missing.join(", "),
        if driver {
            " — no NVIDIA driver is installed on this machine"
        } else {
            ""
        }
    ))
}

/// One candle device per GPU for the whole process: candle tells CUDA devices apart by an id
/// drawn at each `Device::new_cuda`, so tensors of two openings of the same GPU would not mix.
fn open_cuda(i: usize) -> crate::Result<Device> {
    static OPENED: std::sync::Mutex<Vec<(usize, Device)>> = std::sync::Mutex::new(Vec::new());
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, d)) = opened.iter().find(|(j, _)| *j == i) {
        return Ok(d.clone());
    }
    if let Some(e) = missing_libraries_error(CUDA_LIBRARIES) {
        return Err(crate::Error::msg(e));
    }
    // cudarc panics where a library lacks a function it expects (an older driver); say so.
    let d = std::panic::catch_unwind(|| Device::new_cuda(i))
        .map_err(|p| {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            crate::Error::msg(format!(
                "--device cuda:{i}: the CUDA libraries failed: {what}"
            ))
        })?
        .map_err(|e| {
            crate::Error::msg(format!(
                "--device cuda:{i}: cannot open the GPU ({e}); `nvidia-smi` lists the GPUs the \
                 driver sees, or run on the CPU with `--device cpu`"
            ))
        })?;
    opened.push((i, d.clone()));
    Ok(d)
}

/// Open the device a config or flag names (`cpu`, `cuda:1`, …).
pub fn open_named(s: &str) -> crate::Result<Device> {
    open(parse_device(s).map_err(crate::Error::msg)?)
}

/// Precision a frozen teacher runs in, and an export's storage type.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    serde::Serialize,
    serde::Deserialize,
    PartialEq,
    Eq,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn to_candle(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F16 => candle_core::DType::F16,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(DeviceSpec::Cuda(1)));
        assert!(parse_device("cuda:x")
            .unwrap_err()
            .contains("must be a number"));
        assert!(parse_device("tpu").unwrap_err().contains("not a device"));
    }

    #[test]
    fn missing_libraries_are_named_with_their_source() {
        assert!(library_loads(&["libc.so.6"]));
        assert!(!library_loads(&[
            "libkdet-no-such-library.so.1",
            "libkdet-nope.so"
        ]));
        assert_eq!(missing_libraries_error(&[(&["libc.so.6"], "glibc")]), None);
        let e = missing_libraries_error(&[
            (&["libc.so.6"], "glibc"),
            (&["libkdet-no-such-library.so.1"], "a test library"),
            (&["libcuda.so.kdet-test"], "the NVIDIA driver"),
        ])
        .unwrap();
        assert!(
            e.contains("libkdet-no-such-library.so.1 (a test library)")
                && e.contains("libcuda.so.kdet-test (the NVIDIA driver)")
                && e.contains("no NVIDIA driver")
                && e.contains("LD_LIBRARY_PATH")
                && e.contains("--device cpu")
                && !e.contains("glibc"),
            "{e}"
        );
    }

    #[test]
    #[cfg(not(feature = "cuda"))]
    fn cuda_without_feature_names_the_feature() {
        let e = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(
            e.contains("--features cuda") && e.contains("--device cpu"),
            "{e}"
        );
    }
}
