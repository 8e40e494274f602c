//! Checkpoints: one safetensors file holding the model's tensors, the optimizer's state
//! (`optim.` prefix) and the iteration (`meta.` prefix), written atomically (temporary file,
//! fsync, rename) so a crash leaves the previous checkpoint intact and `--resume` continues from
//! exactly where the file says.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// Contents of a checkpoint.
pub struct Checkpoint {
    pub model: HashMap<String, Tensor>,
    pub optim: HashMap<String, Tensor>,
    pub optim_step: u64,
    /// Iterations completed.
    pub iter: u64,
    /// Named strings (e.g. the teachers' paths and SHA-256), stored as u8 tensors `meta.s.<key>`
    /// since candle's safetensors writer takes no metadata.
    pub strings: BTreeMap<String, String>,
}

/// Write `ck` to `path` atomically.
pub fn save(
    path: &Path,
    model: &[(String, Tensor)],
    optim: &HashMap<String, Tensor>,
    optim_step: u64,
    iter: u64,
    strings: &BTreeMap<String, String>,
) -> Result<()> {
    let mut all: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in model {
        all.insert(format!("model.{k}"), t.clone());
    }
    for (k, t) in optim {
        all.insert(format!("optim.{k}"), t.clone());
    }
    all.insert(
        "meta.iter".into(),
        Tensor::new(&[iter as i64], &Device::Cpu)?,
    );
    for (k, v) in strings {
        let b = v.as_bytes().to_vec();
        let n = b.len();
        all.insert(format!("meta.s.{k}"), Tensor::from_vec(b, n, &Device::Cpu)?);
    }
    all.insert(
        "meta.optim_step".into(),
        Tensor::new(&[optim_step as i64], &Device::Cpu)?,
    );
    crate::models::weights::write_safetensors(&all, path)
}

/// Read a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint> {
    let all = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let scalar = |k: &str| -> Result<u64> {
        let t = all.get(k).ok_or_else(|| {
            Error::msg(format!(
                "{}: not a kdet checkpoint (no {k})",
                path.display()
            ))
        })?;
        Ok(t.to_vec1::<i64>()?[0] as u64)
    };
    let (iter, optim_step) = (scalar("meta.iter")?, scalar("meta.optim_step")?);
    let mut model = HashMap::new();
    let mut optim = HashMap::new();
    let mut strings = BTreeMap::new();
    for (k, t) in all {
        if let Some(n) = k.strip_prefix("meta.s.") {
            let bytes = t.to_vec1::<u8>()?;
            strings.insert(n.to_string(), String::from_utf8_lossy(&bytes).into_owned());
        } else if let Some(n) = k.strip_prefix("model.") {
            model.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_prefix("optim.") {
            optim.insert(n.to_string(), t);
        }
    }
    Ok(Checkpoint {
        model,
        optim,
        optim_step,
        iter,
        strings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.safetensors");
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let opt = HashMap::from([("momentum_buffer.w".to_string(), t.clone())]);
        let strings = BTreeMap::from([("teacher0.sha256".to_string(), "ab12".to_string())]);
        save(&p, &[("w".into(), t.clone())], &opt, 3, 17, &strings).unwrap();
        let c = load(&p).unwrap();
        assert_eq!((c.iter, c.optim_step), (17, 3));
        assert_eq!(c.strings, strings);
        assert_eq!(c.model["w"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert!(c.optim.contains_key("momentum_buffer.w"));
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::write(d.path().join("x.safetensors"), b"junk").unwrap();
        assert!(load(&d.path().join("x.safetensors")).is_err());
    }
}
