//! The `model` section of a config: one model family's settings, chosen by `arch`
//! (`faster_rcnn` when absent). Each family's settings live beside its code and implement
//! [`Family`]; the family table below (`model_families!`) is the only list of families, and
//! adding one is one line there (see docs/architecture.md).

use candle_nn::VarBuilder;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::backbone::BackboneConfig;
use super::contract::{Head, Model, TapSpec};
use crate::data::transforms::InputConfig;
use crate::error::{nested, split_nested, Check};

/// What the rest of kdet needs from a family's settings.
pub trait Family {
    /// The input transform the model expects (resize, normalisation, padding).
    fn input(&self) -> &InputConfig;
    /// The backbone trunk (its weights, normalisation, depth).
    fn backbone(&self) -> &BackboneConfig;
    /// Ranges and cross-field rules; `p` is the section's JSON path (`model`,
    /// `teachers[0].model`).
    fn validate(&self, p: &str) -> Check;
    /// The taps the built model exposes.
    fn taps(&self) -> Vec<TapSpec>;
    /// The model, for `num_classes` foreground classes, its parameters from `vb`.
    fn build(&self, vb: VarBuilder, num_classes: usize) -> candle_core::Result<Box<dyn Model>>;
    /// Whether a teacher of settings `teacher` produces `head` outputs that line up with this
    /// model's (same candidates; with `regression`, the same box coding), so a distillation term
    /// can compare them row by row. Errors name a path inside the teacher's model section.
    fn check_teacher(&self, teacher: &ModelConfig, head: Head, regression: bool) -> Check;
    /// Whether the model classifies whole images (one `Head::Classifier` row per image) rather
    /// than detecting boxes: what methods and commands that serve one kind ask, never `arch`.
    fn classifies_images(&self) -> bool {
        false
    }
}

/// Declares [`ModelConfig`] from the family table: `Variant("arch") => SettingsType`.
macro_rules! model_families {
    ($($variant:ident($arch:literal) => $settings:ty),+ $(,)?) => {
        /// A model: its family (`arch`) and that family's settings.
        #[derive(Debug, Clone, Serialize, PartialEq)]
        #[serde(tag = "arch")]
        pub enum ModelConfig {
            $(#[serde(rename = $arch)] $variant($settings)),+
        }

        impl ModelConfig {
            /// The `arch` names, in table order.
            pub const ARCHS: &'static [&'static str] = &[$($arch),+];

            /// The family's settings.
            pub fn family(&self) -> &dyn Family {
                match self {
                    $(ModelConfig::$variant(s) => s),+
                }
            }

            /// The `arch` of this model.
            pub fn arch(&self) -> &'static str {
                match self {
                    $(ModelConfig::$variant(_) => $arch),+
                }
            }

            fn parse(arch: &str, v: Value) -> Result<Self, (String, String)> {
                match arch {
                    $($arch => parse_settings(v).map(ModelConfig::$variant),)+
                    other => Err((
                        "arch".to_string(),
                        format!(
                            "unknown variant `{other}`, expected one of {}",
                            Self::ARCHS
                                .iter()
                                .map(|a| format!("`{a}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )),
                }
            }
        }
    };
}

model_families! {
    FasterRcnn("faster_rcnn") => super::faster_rcnn::config::FasterRcnnConfig,
    Paa("paa") => super::paa::config::PaaConfig,
    Classifier("classifier") => super::classifier::config::ClassifierConfig,
}

impl Default for ModelConfig {
    /// torchvision's `fasterrcnn_resnet50_fpn`.
    fn default() -> Self {
        ModelConfig::FasterRcnn(Default::default())
    }
}

impl ModelConfig {
    pub fn input(&self) -> &InputConfig {
        self.family().input()
    }
    pub fn backbone(&self) -> &BackboneConfig {
        self.family().backbone()
    }
    pub fn validate(&self, p: &str) -> Check {
        self.family().validate(p)
    }
    pub fn taps(&self) -> Vec<TapSpec> {
        self.family().taps()
    }
    pub fn classifies_images(&self) -> bool {
        self.family().classifies_images()
    }
}

/// One family's settings from the section (without `arch`), keeping the JSON path of an error.
fn parse_settings<T: DeserializeOwned>(v: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        split_nested(&path, &e.into_inner().to_string())
    })
}

impl<'de> Deserialize<'de> for ModelConfig {
    /// `arch` picks the family (default `faster_rcnn`); the rest of the object is that family's
    /// settings, unknown fields refused. serde's internally tagged enums lose the JSON path of
    /// an error inside the variant, so the section is parsed here and the path carried out in
    /// the message ([`crate::error::nested`]).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = Value::deserialize(d)?;
        let Value::Object(map) = &mut v else {
            return Err(D::Error::custom(format!(
                "invalid type: {v}, expected a model section (an object)"
            )));
        };
        let arch = match map.remove("arch") {
            None => ModelConfig::ARCHS[0].to_string(),
            Some(Value::String(a)) => a,
            Some(other) => {
                return Err(D::Error::custom(nested(
                    "arch",
                    format!("invalid type: {other}, expected a string"),
                )))
            }
        };
        ModelConfig::parse(&arch, v).map_err(|(path, msg)| D::Error::custom(nested(&path, msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig, (String, String)> {
        let mut de = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize::<_, ModelConfig>(&mut de).map_err(|e| {
            let p = e.path().to_string();
            split_nested(&p, &e.into_inner().to_string())
        })
    }

    #[test]
    fn arch_picks_the_family_and_errors_keep_their_path() {
        let m = parse(r#"{"backbone": {"depth": 18}}"#).unwrap();
        assert_eq!(m.arch(), "faster_rcnn");
        assert_eq!(m.backbone().depth, 18);
        let (p, msg) =
            parse(r#"{"arch": "faster_rcnn", "backbone": {"weights_keys": {"strip": []}}}"#)
                .unwrap_err();
        assert_eq!(p, "backbone.weights_keys.strip");
        assert!(msg.starts_with("unknown field `strip`"), "{msg}");
        let (p, msg) = parse(r#"{"arch": "yolo"}"#).unwrap_err();
        assert_eq!(p, "arch");
        assert!(msg.starts_with("unknown variant `yolo`"), "{msg}");
        // Serialised with its tag first, as configs and sidecars write it.
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["arch"], "faster_rcnn");
        assert_eq!(serde_json::from_value::<ModelConfig>(v).unwrap(), m);
    }
}
