//! Checkpoints: one safetensors file holding the trained networks' tensors (`model.` prefix;
//! several networks' names carry the network's name), the method's own variables (`aux.`), the
//! optimizers' state (`optim.`) and the iteration and identity strings (`meta.`), written
//! atomically (temporary file, fsync, rename) so a crash leaves the previous checkpoint intact
//! and `--resume` continues from exactly where the file says.
//!
//! Since format 2 a checkpoint also stores the SHA-256 of its tensors (`meta.s.tensors_sha256`,
//! see [`tensors_sha256`]); [`from_tensors`] verifies it, so flipped bytes in the tensor data
//! (which safetensors itself does not notice) are an error rather than a silently different run.
//! Checkpoints written before the checksum existed load without the check.
//!
//! Format 1 (before the training-method seam) kept Chen et al.'s adaptation layers among the
//! model's tensors, as `model.distill.*`; [`load`] reads them as the method's own variables, so
//! such checkpoints resume and export unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The string key (under `meta.s.`) of the tensors' checksum.
const CHECKSUM_KEY: &str = "tensors_sha256";

/// The layout [`save`] writes (`meta.format`; absent in format 1).
const FORMAT: u64 = 2;

/// Where format 1 kept the method's own variables (see the module doc).
const FORMAT1_AUX_PREFIX: &str = "distill.";

/// Contents of a checkpoint.
pub struct Checkpoint {
    /// The trained networks' tensors by checkpoint name.
    pub model: HashMap<String, Tensor>,
    /// The method's own variables.
    pub aux: HashMap<String, Tensor>,
    pub optim: HashMap<String, Tensor>,
    pub optim_step: u64,
    /// Iterations completed.
    pub iter: u64,
    /// Named strings (e.g. the teachers' paths and SHA-256), stored as u8 tensors `meta.s.<key>`
    /// since candle's safetensors writer takes no metadata.
    pub strings: BTreeMap<String, String>,
}

/// What a run's checkpoint holds, by reference, for [`save`].
pub struct State<'a> {
    pub model: &'a [(String, Tensor)],
    pub aux: &'a [(String, Tensor)],
    pub optim: &'a HashMap<String, Tensor>,
    pub optim_step: u64,
    pub iter: u64,
    pub strings: &'a BTreeMap<String, String>,
}

/// Write `st` to `path` atomically.
pub fn save(path: &Path, st: &State) -> Result<()> {
    let mut all: HashMap<String, Tensor> = HashMap::new();
    for (k, t) in st.model {
        all.insert(format!("model.{k}"), t.clone());
    }
    for (k, t) in st.aux {
        all.insert(format!("aux.{k}"), t.clone());
    }
    for (k, t) in st.optim {
        all.insert(format!("optim.{k}"), t.clone());
    }
    all.insert(
        "meta.iter".into(),
        Tensor::new(&[st.iter as i64], &Device::Cpu)?,
    );
    for (k, v) in st.strings {
        let b = v.as_bytes().to_vec();
        let n = b.len();
        all.insert(format!("meta.s.{k}"), Tensor::from_vec(b, n, &Device::Cpu)?);
    }
    all.insert(
        "meta.optim_step".into(),
        Tensor::new(&[st.optim_step as i64], &Device::Cpu)?,
    );
    all.insert(
        "meta.format".into(),
        Tensor::new(&[FORMAT as i64], &Device::Cpu)?,
    );
    let sum = tensors_sha256(&all)?;
    let n = sum.len();
    all.insert(
        format!("meta.s.{CHECKSUM_KEY}"),
        Tensor::from_vec(sum.into_bytes(), n, &Device::Cpu)?,
    );
    crate::models::weights::write_safetensors(&all, path)
}

/// Hex SHA-256 over every tensor but the checksum itself, in name order: each tensor's name,
/// dtype, shape and little-endian element bytes. Independent of the file layout, so it checks
/// what the checkpoint means rather than how safetensors arranged it.
pub fn tensors_sha256(all: &HashMap<String, Tensor>) -> Result<String> {
    let skip = format!("meta.s.{CHECKSUM_KEY}");
    let mut names: Vec<&String> = all.keys().filter(|k| **k != skip).collect();
    names.sort();
    let mut h = Sha256::new();
    for k in names {
        let t = &all[k];
        h.update((k.len() as u64).to_le_bytes());
        h.update(k.as_bytes());
        h.update(format!("{:?}", t.dtype()).as_bytes());
        h.update((t.rank() as u64).to_le_bytes());
        for d in t.dims() {
            h.update((*d as u64).to_le_bytes());
        }
        let flat = t.flatten_all()?;
        match t.dtype() {
            DType::U8 => h.update(flat.to_vec1::<u8>()?),
            DType::I64 => flat
                .to_vec1::<i64>()?
                .iter()
                .for_each(|v| h.update(v.to_le_bytes())),
            DType::F64 => flat
                .to_vec1::<f64>()?
                .iter()
                .for_each(|v| h.update(v.to_le_bytes())),
            DType::U32 => flat
                .to_vec1::<u32>()?
                .iter()
                .for_each(|v| h.update(v.to_le_bytes())),
            // f32 and the narrower float types (exactly representable in f32).
            _ => flat
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .for_each(|v| h.update(v.to_le_bytes())),
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether a safetensors file is a kdet checkpoint (rather than a model file).
pub fn is_checkpoint(tensors: &HashMap<String, Tensor>) -> bool {
    tensors.contains_key("meta.iter")
}

/// Whether `path` is a safetensors file holding a kdet checkpoint, from its header alone (a
/// PyTorch file, another format or an unreadable file is not).
pub fn is_checkpoint_file(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut len = [0u8; 8];
    if std::io::Read::read_exact(&mut f, &mut len).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(len);
    // A safetensors header is JSON of at most 100 MB (the format's own limit).
    if n > 100_000_000 {
        return false;
    }
    let mut header = vec![0u8; n as usize];
    if std::io::Read::read_exact(&mut f, &mut header).is_err() {
        return false;
    }
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&header)
        .is_ok_and(|h| h.contains_key("meta.iter"))
}

/// Read a checkpoint written by [`save`] (or by format 1).
pub fn load(path: &Path) -> Result<Checkpoint> {
    if !path.exists() {
        return Err(Error::msg(format!(
            "{}: no checkpoint to resume from (start without --resume)",
            path.display()
        )));
    }
    let all = crate::models::weights::read_safetensors(path)?;
    from_tensors(path, all)
}

/// A checkpoint from the tensors of its file, its checksum verified when it has one. Errors
/// name the file.
pub fn from_tensors(path: &Path, all: HashMap<String, Tensor>) -> Result<Checkpoint> {
    parse(path, all).map_err(|e| match e {
        // A tensor of the wrong type or shape where a counter or string belongs.
        Error::Candle(c) => Error::msg(format!(
            "{}: not a valid kdet checkpoint: {c}",
            path.display()
        )),
        e => e,
    })
}

fn parse(path: &Path, all: HashMap<String, Tensor>) -> Result<Checkpoint> {
    if let Some(t) = all.get(&format!("meta.s.{CHECKSUM_KEY}")) {
        let stored = String::from_utf8_lossy(&t.to_vec1::<u8>()?).into_owned();
        let now = tensors_sha256(&all)?;
        if stored != now {
            return Err(Error::msg(format!(
                "{}: corrupted checkpoint: its tensors' SHA-256 is {now} but the file records \
                 {stored}; restore it from a copy or start over with --fresh",
                path.display()
            )));
        }
    }
    let scalar = |k: &str| -> Result<u64> {
        let t = all.get(k).ok_or_else(|| {
            Error::msg(format!(
                "{}: not a kdet checkpoint (no {k})",
                path.display()
            ))
        })?;
        t.to_vec1::<i64>()?
            .first()
            .map(|v| *v as u64)
            .ok_or_else(|| Error::msg(format!("{}: {k} is empty", path.display())))
    };
    let (iter, optim_step) = (scalar("meta.iter")?, scalar("meta.optim_step")?);
    let format1 = !all.contains_key("meta.format");
    let mut ck = Checkpoint {
        model: HashMap::new(),
        aux: HashMap::new(),
        optim: HashMap::new(),
        optim_step,
        iter,
        strings: BTreeMap::new(),
    };
    for (k, t) in all {
        if let Some(n) = k.strip_prefix("meta.s.") {
            if n == CHECKSUM_KEY {
                continue;
            }
            let bytes = t.to_vec1::<u8>()?;
            ck.strings
                .insert(n.to_string(), String::from_utf8_lossy(&bytes).into_owned());
        } else if let Some(n) = k.strip_prefix("model.") {
            if format1 && n.starts_with(FORMAT1_AUX_PREFIX) {
                ck.aux.insert(n.to_string(), t);
            } else {
                ck.model.insert(n.to_string(), t);
            }
        } else if let Some(n) = k.strip_prefix("aux.") {
            ck.aux.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_prefix("optim.") {
            ck.optim.insert(n.to_string(), t);
        }
    }
    Ok(ck)
}

/// A file a run depends on besides its config (a teacher's weights). Checkpoints record it;
/// resuming with different contents is refused, since the run would no longer be what its
/// files say.
#[derive(Debug, Clone, PartialEq)]
pub struct FrozenInput {
    /// Key of its checkpoint strings (`teacher0`).
    pub key: String,
    /// How messages name it (`teachers[0]`).
    pub label: String,
    pub path: PathBuf,
    /// Hex SHA-256 of the file.
    pub sha256: String,
}

/// The checkpoint strings recording `inputs`.
pub fn frozen_strings(inputs: &[FrozenInput]) -> BTreeMap<String, String> {
    inputs
        .iter()
        .flat_map(|f| {
            [
                (format!("{}.path", f.key), f.path.display().to_string()),
                (format!("{}.sha256", f.key), f.sha256.clone()),
                (format!("{}.label", f.key), f.label.clone()),
            ]
        })
        .collect()
}

/// Refuse to resume `ckpt` (whose strings are `stored`) when the frozen inputs differ in
/// contents from the ones it was trained with.
pub fn check_frozen_inputs(
    ckpt: &Path,
    stored: &BTreeMap<String, String>,
    now: &[FrozenInput],
) -> Result<()> {
    let now = frozen_strings(now);
    let sha = |m: &BTreeMap<String, String>| -> Vec<(String, String)> {
        m.iter()
            .filter(|(k, _)| k.ends_with(".sha256"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if sha(stored) == sha(&now) {
        return Ok(());
    }
    let describe = |m: &BTreeMap<String, String>| -> String {
        let v: Vec<String> = m
            .iter()
            .filter_map(|(k, sha)| {
                let key = k.strip_suffix(".sha256")?;
                let get = |f: &str| m.get(&format!("{key}.{f}")).cloned();
                Some(format!(
                    "{} = {} (sha256 {sha})",
                    get("label").unwrap_or_else(|| key.to_string()),
                    get("path").unwrap_or_default()
                ))
            })
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    Err(Error::msg(format!(
        "{}: the checkpoint was trained with {}, but the config now gives {}; resume with the same files or start over with --fresh",
        ckpt.display(),
        describe(stored),
        describe(&now)
    )))
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
        let aux = [("distill.0.a".to_string(), t.clone())];
        save(
            &p,
            &State {
                model: &[("w".into(), t.clone())],
                aux: &aux,
                optim: &opt,
                optim_step: 3,
                iter: 17,
                strings: &strings,
            },
        )
        .unwrap();
        let c = load(&p).unwrap();
        assert_eq!((c.iter, c.optim_step), (17, 3));
        assert_eq!(c.strings, strings);
        assert_eq!(c.model["w"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert!(c.aux.contains_key("distill.0.a") && !c.model.contains_key("distill.0.a"));
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
