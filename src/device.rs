//! Device selection (`cpu`, `cuda`, `cuda:N`, `metal`) and the precision of frozen models. A
//! binary built without the matching cargo feature says exactly which feature to enable instead
//! of failing somewhere deep in candle.

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
                Ok(Device::new_cuda(i)?)
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
    #[cfg(not(feature = "cuda"))]
    fn cuda_without_feature_names_the_feature() {
        let e = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(
            e.contains("--features cuda") && e.contains("--device cpu"),
            "{e}"
        );
    }
}
