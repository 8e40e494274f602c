//! Loading weights by name into a model's VarMap, with a report of missing, unexpected and
//! shape-mismatched keys (fatal unless the caller allows it): the guard against the most common
//! distillation failure, a teacher that silently did not load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Check, Error, Result};

/// How to rename a checkpoint's keys onto kdet's names, which are torchvision's
/// (`backbone.body.layer1.0.conv1.weight`, `backbone.fpn.inner_blocks.0.0.weight`, …).
/// Every key is first stripped of each of `strip_prefixes` it starts with (in order), then
/// the first `rename` rule whose `from` it starts with replaces that prefix by `to`.
///
/// Typical recipes:
/// - torchvision detection checkpoints (also its older names such as
///   `backbone.fpn.inner_blocks.0.weight`, upgraded on load): none.
/// - a checkpoint saved from `nn.DataParallel` / `DistributedDataParallel`:
///   `"strip_prefixes": ["module."]`.
/// - backbone weights (`model.backbone.weights_keys`) from torchvision's or timm's plain
///   ResNets (`conv1.weight`, `bn1.*`, `layer1.0.downsample.0.weight`, `fc.*`): none.
/// - the backbone and neck of an mmdetection Faster R-CNN (pytorch-style ResNet, `FPN` neck):
///   `{"from": "backbone.", "to": "backbone.body."}` (its ResNet uses torchvision's names),
///   and per FPN level N, `{"from": "neck.lateral_convs.N.conv.", "to":
///   "backbone.fpn.inner_blocks.N.0."}` and `{"from": "neck.fpn_convs.N.conv.", "to":
///   "backbone.fpn.layer_blocks.N.0."}` (mmcv's `ConvModule` keeps its conv in `.conv`).
///   mmdetection's heads are not a matter of names (its background class is the last
///   logit, torchvision's the first), so renames alone do not load them.
///
/// A rule with an empty `from` matches every key: put last, it adds a prefix.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyRules {
    /// Prefixes removed from the start of every key that has them, in this order.
    #[serde(default)]
    pub strip_prefixes: Vec<String>,
    /// Prefix renames, tried in order after stripping; the first match wins.
    #[serde(default)]
    pub rename: Vec<KeyRename>,
}

/// One prefix rename: a key starting with `from` gets `to` instead.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyRename {
    pub from: String,
    pub to: String,
}

impl KeyRules {
    /// Whether no rule is set (keys stay as they are).
    pub fn is_empty(&self) -> bool {
        self.strip_prefixes.is_empty() && self.rename.is_empty()
    }

    /// The kdet name for a checkpoint key.
    pub fn apply(&self, key: &str) -> String {
        let mut k = key;
        for p in &self.strip_prefixes {
            if let Some(rest) = k.strip_prefix(p.as_str()) {
                k = rest;
            }
        }
        for r in &self.rename {
            if let Some(rest) = k.strip_prefix(r.from.as_str()) {
                return format!("{}{rest}", r.to);
            }
        }
        k.to_string()
    }

    /// An empty prefix to strip is a mistake (it strips nothing); `p` is the section's path.
    pub fn validate(&self, p: &str) -> Check {
        if let Some(i) = self.strip_prefixes.iter().position(|s| s.is_empty()) {
            return Err(invalid(
                format!("{p}.strip_prefixes[{i}]"),
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// What a load found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// (key, shape in the model, shape in the file)
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
    /// A sentence listing the problems (first few of each kind).
    pub fn describe(&self) -> String {
        let few = |v: &[String]| {
            let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if v.len() > 5 {
                s.push_str(&format!(" … ({} in all)", v.len()));
            }
            s
        };
        let mut parts = vec![];
        if !self.missing.is_empty() {
            parts.push(format!("missing keys: {}", few(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", few(&self.unexpected)));
        }
        if !self.mismatched.is_empty() {
            let m: Vec<String> = self
                .mismatched
                .iter()
                .map(|(k, a, b)| format!("{k} (model {a:?}, file {b:?})"))
                .collect();
            parts.push(format!("shape mismatches: {}", few(&m)));
        }
        parts.join("; ")
    }
}

/// Keys PyTorch state_dicts carry that have no tensor in kdet's modules.
fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

/// torchvision's names before its FPN and RPN head gained `Conv2dNormActivation` wrappers
/// (`inner_blocks.0.weight` → `inner_blocks.0.0.weight`, `rpn.head.conv.weight` →
/// `rpn.head.conv.0.0.weight`), renamed as torchvision's `_load_from_state_dict` does for old
/// checkpoints such as the released COCO `.pth`.
pub fn upgrade_legacy_key(key: &str) -> Option<String> {
    for blocks in ["backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks."] {
        if let Some(rest) = key.strip_prefix(blocks) {
            let (i, leaf) = rest.split_once('.')?;
            if i.parse::<usize>().is_ok() && (leaf == "weight" || leaf == "bias") {
                return Some(format!("{blocks}{i}.0.{leaf}"));
            }
        }
    }
    match key {
        "rpn.head.conv.weight" => Some("rpn.head.conv.0.0.weight".into()),
        "rpn.head.conv.bias" => Some("rpn.head.conv.0.0.bias".into()),
        _ => None,
    }
}

/// Copy `tensors` into the variables of `varmap` by name (legacy torchvision names upgraded).
pub fn load_tensors(varmap: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<LoadReport> {
    let data = varmap.data().lock().expect("varmap lock");
    let upgraded: HashMap<String, Tensor>;
    let tensors = if tensors
        .keys()
        .any(|k| upgrade_legacy_key(k).is_some() && !data.contains_key(k))
    {
        upgraded = tensors
            .iter()
            .map(|(k, t)| {
                (
                    upgrade_legacy_key(k).unwrap_or_else(|| k.clone()),
                    t.clone(),
                )
            })
            .collect();
        &upgraded
    } else {
        tensors
    };
    copy_into(&data, tensors, |_| true)
}

/// Load a weights file (see [`load_weights`]) into `varmap` with its keys as they are.
pub fn load_safetensors(varmap: &VarMap, path: &Path, strict: bool) -> Result<LoadReport> {
    load_weights(varmap, path, &KeyRules::default(), strict)
}

/// Load a checkpoint (local path or `hf://owner/repo/file@rev`; safetensors or PyTorch) into
/// `varmap`, its keys renamed by `rules`. With `strict`, any missing, unexpected or
/// shape-mismatched key is an error naming the file; without, those are left out and the
/// report says which (the caller shows it). Either way a file of which no tensor fits is an
/// error: a teacher that silently keeps its random init is the failure this guards against.
pub fn load_weights(
    varmap: &VarMap,
    path: &Path,
    rules: &KeyRules,
    strict: bool,
) -> Result<LoadReport> {
    let file = locate(path)?;
    let tensors = read_state_dict(&file, rules)?;
    let r = load_tensors(varmap, &tensors).map_err(|e| in_file(path, e))?;
    if r.is_clean() {
        return Ok(r);
    }
    if strict {
        return Err(Error::msg(format!(
            "{}: weights do not fit the model: {} (strict load: fix the names with `keys` rules, \
             or set `strict: false` to load only what fits)",
            path.display(),
            r.describe()
        )));
    }
    if r.loaded == 0 {
        return Err(Error::msg(format!(
            "{}: no tensor fits the model, even with `strict: false`: {} (do the `keys` rules \
             map the file's names onto the model's?)",
            path.display(),
            r.describe()
        )));
    }
    Ok(r)
}

/// `e` (about a tensor) said of the weights file `path`.
pub fn in_file(path: &Path, e: Error) -> Error {
    Error::msg(format!("{}: {e}", path.display()))
}

/// The local file for a weights path: `hf://…` goes through [`crate::hub::resolve`].
pub fn locate(path: &Path) -> Result<PathBuf> {
    match path.to_str() {
        Some(s) if crate::hub::is_hub(s) => crate::hub::resolve(s),
        _ => Ok(path.to_path_buf()),
    }
}

/// Read every tensor of a checkpoint by name, keys renamed by `rules` (which see). Reads
/// safetensors and PyTorch zip checkpoints (`torch.save` since 1.6: `.pth`, `.pt`, `.bin`),
/// told apart by their first bytes rather than the extension. A PyTorch file may hold the
/// state_dict itself, or wrap it as mmdetection (`{"state_dict": …, "meta": …}`) or
/// torchvision's reference scripts (`{"model": …, "optimizer": …}`) save checkpoints.
/// Errors name the file.
pub fn read_state_dict(path: &Path, rules: &KeyRules) -> Result<HashMap<String, Tensor>> {
    let err = |e: &dyn std::fmt::Display| Error::msg(format!("{}: {e}", path.display()));
    if path.is_dir() {
        return Err(err(&"is a folder, not a weights file"));
    }
    let mut head = [0u8; 9];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]).map_err(|e| Error::io(path, e))? {
                0 => break,
                k => n += k,
            }
        }
        n
    };
    let tensors: Vec<(String, Tensor)> = if head[..n].starts_with(b"PK\x03\x04") {
        read_pytorch(path)?
    } else if n == 9 && head[8] == b'{' {
        // safetensors: an 8-byte little-endian header length, then the JSON header.
        read_safetensors(path)?.into_iter().collect()
    } else {
        return Err(err(
            &"neither a safetensors file nor a PyTorch zip checkpoint (torch.save \
             since PyTorch 1.6); re-save older or pickled-numpy (.pkl) checkpoints with a recent \
             torch.save, or convert them to safetensors",
        ));
    };
    rename_keys(path, tensors, rules)
}

/// Tensors of a PyTorch zip checkpoint: the top-level dict, else the one under `state_dict`,
/// else under `model`.
fn read_pytorch(path: &Path) -> Result<Vec<(String, Tensor)>> {
    // candle's pickle reader panics on some malformed files (a tensor's rebuild arguments
    // shorter than expected: `Vec::remove` out of range, found by tests/fuzz.rs): a bad file
    // is an error naming it, never a crash.
    std::panic::catch_unwind(|| read_pytorch_unguarded(path)).unwrap_or_else(|p| {
        let why = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("the reader failed");
        Err(Error::msg(format!(
            "{}: not a valid PyTorch checkpoint (malformed pickle: {why})",
            path.display()
        )))
    })
}

fn read_pytorch_unguarded(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let err = |e: candle_core::Error| Error::msg(format!("{}: {e}", path.display()));
    let top = candle_core::pickle::read_all(path).map_err(err)?;
    if !top.is_empty() {
        return Ok(top);
    }
    for key in ["state_dict", "model"] {
        match candle_core::pickle::read_all_with_key(path, Some(key)) {
            Ok(t) if !t.is_empty() => return Ok(t),
            Ok(_) => {}
            // candle's way of saying the checkpoint has no such key: try the next one.
            Err(e) if e.to_string().contains(&format!("key {key} not found")) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Err(Error::msg(format!(
        "{}: no tensors found, neither at the top level nor under `state_dict` or `model`",
        path.display()
    )))
}

/// Apply `rules` to every key; two keys that end up with the same name are an error (one
/// would silently replace the other).
fn rename_keys(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    rules: &KeyRules,
) -> Result<HashMap<String, Tensor>> {
    let mut origin: HashMap<String, String> = HashMap::with_capacity(tensors.len());
    let mut out = HashMap::with_capacity(tensors.len());
    for (key, t) in tensors {
        let name = rules.apply(&key);
        if let Some(other) = origin.insert(name.clone(), key.clone()) {
            let (a, b) = if other < key {
                (other, key)
            } else {
                (key, other)
            };
            return Err(Error::msg(format!(
                "{}: keys `{a}` and `{b}` both become `{name}` under the `keys` rules",
                path.display()
            )));
        }
        out.insert(name, t);
    }
    Ok(out)
}

/// Copy `tensors` into the variables whose name passes `include`; report what did not fit.
/// Keys PyTorch adds without a kdet tensor (`num_batches_tracked`) are not "unexpected".
fn copy_into(
    data: &HashMap<String, candle_core::Var>,
    tensors: &HashMap<String, Tensor>,
    include: impl Fn(&str) -> bool,
) -> Result<LoadReport> {
    let mut r = LoadReport::default();
    for (name, var) in data.iter().filter(|(k, _)| include(k)) {
        match tensors.get(name) {
            None => r.missing.push(name.clone()),
            Some(t) if t.dims() != var.dims() => {
                r.mismatched
                    .push((name.clone(), var.dims().to_vec(), t.dims().to_vec()))
            }
            Some(t) => {
                check_loadable(name, t)?;
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
                r.loaded += 1;
            }
        }
    }
    r.unexpected = tensors
        .keys()
        .filter(|k| !data.contains_key(*k) && !ignorable(k))
        .cloned()
        .collect();
    r.missing.sort();
    r.unexpected.sort();
    r.mismatched.sort();
    Ok(r)
}

/// Refuse a tensor no model weight can be: an integer one (it would be cast silently, and fail
/// later as "empty tensor for reduce"), or one holding NaN or inf (the model would predict
/// nothing and score AP 0 without a word). The caller adds the file.
fn check_loadable(name: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::msg(format!(
            "tensor `{name}` is {}: model weights are floating-point (f32, f16, bf16 or f64)",
            t.dtype().as_str()
        )));
    }
    let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        return Err(Error::msg(format!(
            "tensor `{name}` holds {bad} non-finite value(s) (NaN or inf) of {}: these weights \
             are broken (a diverged training?); use an earlier checkpoint or other weights",
            values.len()
        )));
    }
    Ok(())
}

/// Load ImageNet-style backbone weights (a torchvision/timm ResNet state_dict: `conv1.weight`,
/// `layer1.0.…`, optionally already under `prefix`; a local path or `hf://…`, safetensors or
/// PyTorch), keys first renamed by `rules`, into the model's trunk variables, which are named
/// `prefix` + the ResNet name (`backbone.body.` in Faster R-CNN). Every trunk variable must be
/// found; the classifier (`fc.*`) is ignored.
pub fn load_backbone(
    varmap: &VarMap,
    path: &Path,
    prefix: &str,
    rules: &KeyRules,
) -> Result<LoadReport> {
    let file = locate(path)?;
    let tensors: HashMap<String, Tensor> = read_state_dict(&file, rules)?
        .into_iter()
        // A classifier's `fc` and SimCLRv2 projection-head layers (`mlp.*`) are not trunk
        // weights (the kept head layers load with `load_projection_layers`).
        .filter(|(k, _)| !k.starts_with("fc.") && !k.starts_with("mlp.") && !ignorable(k))
        .map(|(k, t)| {
            (
                if k.starts_with(prefix) {
                    k
                } else {
                    format!("{prefix}{k}")
                },
                t,
            )
        })
        .collect();
    let data = varmap.data().lock().expect("varmap lock");
    let r = copy_into(&data, &tensors, |k| k.starts_with(prefix)).map_err(|e| in_file(path, e))?;
    if !r.is_clean() {
        return Err(Error::msg(format!(
            "{}: backbone weights do not fit model.backbone: {} (rename the file's keys with \
             `model.backbone.weights_keys`)",
            path.display(),
            r.describe()
        )));
    }
    Ok(r)
}

/// SimCLRv2's fine-tuning "from the first layer of the projection head": the classifier's kept
/// head layers `mlp.0 .. mlp.{layers − 1}` copied from a file that has them (a classifier run's
/// `model.safetensors` after `simclr_pretrain`), every tensor of each kept layer required with
/// its shape; a file without `mlp.*` keys loads nothing (an ImageNet ResNet). Returns the
/// tensors loaded.
pub fn load_projection_layers(
    varmap: &VarMap,
    path: &Path,
    rules: &KeyRules,
    layers: usize,
) -> Result<usize> {
    let kept = |k: &str| {
        k.strip_prefix("mlp.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i < layers)
    };
    let tensors: HashMap<String, Tensor> = read_state_dict(&locate(path)?, rules)?
        .into_iter()
        .filter(|(k, _)| kept(k) && !ignorable(k))
        .collect();
    if tensors.is_empty() {
        return Ok(0);
    }
    let data = varmap.data().lock().expect("varmap lock");
    let r = copy_into(&data, &tensors, kept).map_err(|e| in_file(path, e))?;
    if !r.is_clean() {
        return Err(Error::msg(format!(
            "{}: projection-head layers do not fit model.mlp_layers: {}",
            path.display(),
            r.describe()
        )));
    }
    Ok(r.loaded)
}

/// Save the variables of `varmap` as safetensors, atomically.
pub fn save_safetensors(varmap: &VarMap, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = named_tensors(varmap).into_iter().collect();
    write_safetensors(&map, path)
}

/// Every tensor of a safetensors file, on the CPU. Errors name the file; a folder is said to be
/// one (rather than the OS's "Is a directory" from deep inside the reader).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    if path.is_dir() {
        return Err(Error::msg(format!(
            "{}: is a folder, not a weights file",
            path.display()
        )));
    }
    candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// Write tensors as safetensors, atomically ([`crate::util::write_atomic_with`]).
pub fn write_safetensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    crate::util::write_atomic_with(path, |tmp| {
        candle_core::safetensors::save(map, tmp)
            .map_err(|e| Error::msg(format!("{}: {e}", tmp.display())))
    })
}

/// All variables of a VarMap by name (sorted), for saving.
pub fn named_tensors(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut v: Vec<(String, Tensor)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules_strip_then_rename() {
        let r: KeyRules = serde_json::from_str(
            r#"{"strip_prefixes": ["module.", "model."],
                "rename": [{"from": "backbone.", "to": "backbone.body."},
                           {"from": "neck.lateral_convs.0.conv.", "to": "backbone.fpn.inner_blocks.0.0."},
                           {"from": "back", "to": "never"}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.apply("module.model.backbone.conv1.weight"),
            "backbone.body.conv1.weight"
        );
        assert_eq!(
            r.apply("neck.lateral_convs.0.conv.bias"),
            "backbone.fpn.inner_blocks.0.0.bias"
        );
        // Prefixes strip only at the start, in order; unmatched keys stay.
        assert_eq!(r.apply("model.module.x"), "module.x");
        assert_eq!(r.apply("rpn.module.x"), "rpn.module.x");
        assert!(KeyRules::default().is_empty());
        assert_eq!(KeyRules::default().apply("a.b"), "a.b");
        // An empty `from` adds a prefix to every key it reaches.
        let add = KeyRules {
            strip_prefixes: vec![],
            rename: vec![KeyRename {
                from: String::new(),
                to: "backbone.body.".into(),
            }],
        };
        assert_eq!(add.apply("conv1.weight"), "backbone.body.conv1.weight");
    }
    use candle_core::DType;

    #[test]
    fn legacy_torchvision_names_load() {
        assert_eq!(
            upgrade_legacy_key("backbone.fpn.inner_blocks.3.bias").as_deref(),
            Some("backbone.fpn.inner_blocks.3.0.bias")
        );
        assert_eq!(
            upgrade_legacy_key("rpn.head.conv.weight").as_deref(),
            Some("rpn.head.conv.0.0.weight")
        );
        assert_eq!(
            upgrade_legacy_key("backbone.fpn.inner_blocks.3.0.bias"),
            None
        );
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        vb.get(2, "rpn.head.conv.0.0.bias").unwrap();
        let file = HashMap::from([(
            "rpn.head.conv.bias".to_string(),
            Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
        )]);
        let r = load_tensors(&vm, &file).unwrap();
        assert!(r.is_clean() && r.loaded == 1, "{r:?}");
    }

    #[test]
    fn backbone_weights_map_onto_body() {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        vb.get(2, "backbone.body.conv1.weight").unwrap();
        vb.get(2, "backbone.body.bn1.weight").unwrap();
        vb.get(2, "rpn.head.cls_logits.bias").unwrap();
        let d = tempfile::tempdir().unwrap();
        let t = |v: f32| Tensor::full(v, 2, &Device::Cpu).unwrap();
        // An ImageNet ResNet state_dict: unprefixed names, a classifier, a BN counter.
        let file = HashMap::from([
            ("conv1.weight".to_string(), t(3.0)),
            ("bn1.weight".to_string(), t(4.0)),
            ("fc.weight".to_string(), t(5.0)),
            ("bn1.num_batches_tracked".to_string(), t(0.0)),
        ]);
        let p = d.path().join("r.safetensors");
        candle_core::safetensors::save(&file, &p).unwrap();
        let r = load_backbone(&vm, &p, "backbone.body.", &KeyRules::default()).unwrap();
        assert_eq!(r.loaded, 2);
        assert_eq!(
            vm.data().lock().unwrap()["backbone.body.bn1.weight"]
                .to_vec1::<f32>()
                .unwrap(),
            vec![4.0, 4.0]
        );
        // A file without one of the body's tensors is an error naming it.
        let partial = HashMap::from([("conv1.weight".to_string(), t(3.0))]);
        candle_core::safetensors::save(&partial, &p).unwrap();
        let e = load_backbone(&vm, &p, "backbone.body.", &KeyRules::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing keys: backbone.body.bn1.weight"), "{e}");
    }

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pth")
            .join(name)
    }

    fn rules(strip: &[&str], rename: &[(&str, &str)]) -> KeyRules {
        KeyRules {
            strip_prefixes: strip.iter().map(|s| s.to_string()).collect(),
            rename: rename
                .iter()
                .map(|(f, t)| KeyRename {
                    from: f.to_string(),
                    to: t.to_string(),
                })
                .collect(),
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn reads_pytorch_state_dict() {
        // tools/make_pth_fixture.py: a DataParallel-style state_dict.
        let sd = read_state_dict(&fixture("tiny_state_dict.pth"), &KeyRules::default()).unwrap();
        let mut keys: Vec<&str> = sd.keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "module.backbone.bn1.bias",
                "module.backbone.bn1.num_batches_tracked",
                "module.backbone.conv1.weight"
            ]
        );
        let w = &sd["module.backbone.conv1.weight"];
        assert_eq!(w.dims(), &[2, 1, 1, 1]);
        assert_eq!(values(w), [1.0, 2.0]);
        assert_eq!(values(&sd["module.backbone.bn1.bias"]), [0.5, -0.5]);
        let n = &sd["module.backbone.bn1.num_batches_tracked"];
        assert_eq!((n.dtype(), n.dims()), (DType::I64, &[][..]));

        // Strip `module.`, then rename onto torchvision's body.
        let r = rules(&["module."], &[("backbone.", "backbone.body.")]);
        let sd = read_state_dict(&fixture("tiny_state_dict.pth"), &r).unwrap();
        assert_eq!(values(&sd["backbone.body.conv1.weight"]), [1.0, 2.0]);
        assert_eq!(values(&sd["backbone.body.bn1.bias"]), [0.5, -0.5]);
        assert!(sd.contains_key("backbone.body.bn1.num_batches_tracked"));
    }

    #[test]
    fn reads_wrapped_checkpoint() {
        // mmdetection-style {"meta": …, "state_dict": …}.
        let r = rules(&[], &[("backbone.", "backbone.body.")]);
        let sd = read_state_dict(&fixture("tiny_wrapped.pth"), &r).unwrap();
        let mut keys: Vec<&str> = sd.keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["backbone.body.bn1.bias", "backbone.body.conv1.weight"]
        );
        assert_eq!(values(&sd["backbone.body.conv1.weight"]), [1.0, 2.0]);
    }

    #[test]
    fn unreadable_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("old.pth");
        std::fs::write(&p, b"\x80\x02legacy pickle").unwrap();
        let e = read_state_dict(&p, &KeyRules::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&p.display().to_string()) && e.contains("neither a safetensors"),
            "{e}"
        );
        let e = read_state_dict(&d.path().join("none.pth"), &KeyRules::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.pth"), "{e}");
        // Rules that merge two keys into one.
        let merge = rules(
            &[],
            &[
                ("module.backbone.conv1.weight", "w"),
                ("module.backbone.bn1.bias", "w"),
            ],
        );
        let e = read_state_dict(&fixture("tiny_state_dict.pth"), &merge)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keys `module.backbone.bn1.bias` and `module.backbone.conv1.weight` both become `w`"),
            "{e}"
        );
    }

    #[test]
    fn backbone_from_pth_with_rules() {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        vb.get((2, 1, 1, 1), "backbone.body.conv1.weight").unwrap();
        vb.get(2, "backbone.body.bn1.bias").unwrap();
        // `module.backbone.` stripped leaves ResNet names, which land under backbone.body.
        let r = load_backbone(
            &vm,
            &fixture("tiny_state_dict.pth"),
            "backbone.body.",
            &rules(&["module.", "backbone."], &[]),
        )
        .unwrap();
        assert_eq!(r.loaded, 2);
        assert_eq!(
            values(vm.data().lock().unwrap()["backbone.body.bn1.bias"].as_tensor()),
            [0.5, -0.5]
        );
        // Without the rules the names do not fit, and the error says so.
        let e = load_backbone(
            &vm,
            &fixture("tiny_state_dict.pth"),
            "backbone.body.",
            &KeyRules::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing keys: backbone.body.bn1.bias"), "{e}");
    }

    #[test]
    fn strict_and_lenient_loads() {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        vb.get((2, 1, 1, 1), "backbone.body.conv1.weight").unwrap();
        vb.get(2, "backbone.body.bn1.bias").unwrap();
        vb.get(3, "rpn.head.cls_logits.bias").unwrap();
        let p = fixture("tiny_wrapped.pth");
        let r = rules(&[], &[("backbone.", "backbone.body.")]);
        // Strict: the missing RPN tensor is fatal, and the message says how to proceed.
        let e = load_weights(&vm, &p, &r, true).unwrap_err().to_string();
        assert!(
            e.contains("tiny_wrapped.pth: weights do not fit the model: missing keys: rpn.head.cls_logits.bias")
                && e.contains("`strict: false`"),
            "{e}"
        );
        // Lenient: what fits is loaded, the rest reported.
        let rep = load_weights(&vm, &p, &r, false).unwrap();
        assert_eq!(
            (rep.loaded, rep.missing.clone()),
            (2, vec!["rpn.head.cls_logits.bias".to_string()])
        );
        assert_eq!(
            values(vm.data().lock().unwrap()["backbone.body.conv1.weight"].as_tensor()),
            [1.0, 2.0]
        );
        // Lenient, but nothing fits: still an error.
        let e = load_weights(&vm, &p, &KeyRules::default(), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no tensor fits the model, even with `strict: false`"),
            "{e}"
        );
    }

    #[test]
    fn report_names_problems() {
        let vm = VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        vb.get((2, 2), "a.weight").unwrap();
        vb.get(3, "b.bias").unwrap();
        vb.get(1, "c").unwrap();
        let t = |s: &[usize]| Tensor::ones(s, DType::F32, &Device::Cpu).unwrap();
        let file = HashMap::from([
            ("a.weight".to_string(), t(&[2, 2])),
            ("b.bias".to_string(), t(&[4])),
            ("z.extra".to_string(), t(&[1])),
            ("bn.num_batches_tracked".to_string(), t(&[1])),
        ]);
        let r = load_tensors(&vm, &file).unwrap();
        assert_eq!(r.loaded, 1);
        assert_eq!(r.missing, vec!["c"]);
        assert_eq!(r.unexpected, vec!["z.extra"]);
        assert_eq!(r.mismatched, vec![("b.bias".to_string(), vec![3], vec![4])]);
        let d = r.describe();
        assert!(
            d.contains("missing keys: c")
                && d.contains("unexpected keys: z.extra")
                && d.contains("b.bias (model [3], file [4])"),
            "{d}"
        );
        assert_eq!(
            vm.data().lock().unwrap()["a.weight"]
                .to_vec2::<f32>()
                .unwrap(),
            vec![vec![1.0, 1.0]; 2]
        );
    }
}
