//! Loading weights by name into a model's VarMap, with a report of missing, unexpected and
//! shape-mismatched keys (fatal unless the caller allows it): the guard against the most common
//! distillation failure, a teacher that silently did not load.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::error::{Error, Result};

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

/// Load a safetensors file into `varmap`; with `strict`, any missing, unexpected or mismatched
/// key is an error naming the file.
pub fn load_safetensors(varmap: &VarMap, path: &Path, strict: bool) -> Result<LoadReport> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let r = load_tensors(varmap, &tensors)?;
    if strict && !r.is_clean() {
        return Err(Error::msg(format!(
            "{}: weights do not fit the model: {}",
            path.display(),
            r.describe()
        )));
    }
    Ok(r)
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

/// Load ImageNet-style backbone weights (a torchvision/timm ResNet state_dict: `conv1.weight`,
/// `layer1.0.…`, optionally prefixed `backbone.body.`) into the `backbone.body.` variables.
/// Every backbone variable must be found; the classifier (`fc.*`) is ignored.
pub fn load_backbone(varmap: &VarMap, path: &Path) -> Result<LoadReport> {
    if path.to_string_lossy().starts_with("hf://") {
        return Err(Error::msg(format!(
            "{}: loading from the Hugging Face hub is not available in this version; download the file and give its local path",
            path.display()
        )));
    }
    let raw = candle_core::safetensors::load(path, &Device::Cpu)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let tensors: HashMap<String, Tensor> = raw
        .into_iter()
        .filter(|(k, _)| !k.starts_with("fc.") && !ignorable(k))
        .map(|(k, t)| {
            (
                if k.starts_with("backbone.body.") {
                    k
                } else {
                    format!("backbone.body.{k}")
                },
                t,
            )
        })
        .collect();
    let data = varmap.data().lock().expect("varmap lock");
    let r = copy_into(&data, &tensors, |k| k.starts_with("backbone.body."))?;
    if !r.is_clean() {
        return Err(Error::msg(format!(
            "{}: backbone weights do not fit model.backbone: {}",
            path.display(),
            r.describe()
        )));
    }
    Ok(r)
}

/// Save the model's variables as safetensors, atomically — without the distillation-only
/// adaptation layers (`distill.*`), which belong to the checkpoint, not to the model.
pub fn save_safetensors(varmap: &VarMap, path: &Path) -> Result<()> {
    let map: HashMap<String, Tensor> = named_tensors(varmap)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(crate::distill::PARAM_PREFIX))
        .collect();
    write_safetensors(&map, path)
}

/// Write tensors as safetensors, atomically (a temporary file renamed into place).
pub fn write_safetensors(map: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("weights"),
        std::process::id()
    ));
    candle_core::safetensors::save(map, &tmp)
        .map_err(|e| Error::msg(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
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
        let r = load_backbone(&vm, &p).unwrap();
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
        let e = load_backbone(&vm, &p).unwrap_err().to_string();
        assert!(e.contains("missing keys: backbone.body.bn1.weight"), "{e}");
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
