//! Training metrics as JSON lines (`metrics.jsonl`: one object per logged iteration or
//! evaluation) and their plots (`loss.png`, `lr.png`, `ap.png`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::plot::line_chart;

/// Appends metric records to `metrics.jsonl`.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Open the log of `dir`. When resuming at `resume_iter`, records of later iterations (from
    /// the interrupted run) are dropped so the log continues exactly.
    pub fn open(dir: &Path, resume_iter: Option<u64>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let kept = match resume_iter {
            Some(it) => read(&path)?
                .into_iter()
                .filter(|v| v["iter"].as_u64().is_some_and(|i| i <= it))
                .collect(),
            None => vec![],
        };
        let mut text = String::new();
        for v in kept {
            text.push_str(&v.to_string());
            text.push('\n');
        }
        crate::util::write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { path, file })
    }

    pub fn write(&mut self, record: &Value) -> Result<()> {
        writeln!(self.file, "{record}")
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// All records of a metrics file (missing file: none).
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::located(path, format!("line {}", i + 1), e.to_string()))
        })
        .collect()
}

/// Draw `loss.png` (every `loss*` term), `lr.png` and `ap.png` (eval AP/AP50) into `dir` from its
/// metrics. Returns the files written.
pub fn plot_run(dir: &Path) -> Result<Vec<PathBuf>> {
    let recs = read(&dir.join("metrics.jsonl"))?;
    if recs.is_empty() {
        return Err(Error::msg(format!(
            "{}: no metrics.jsonl records to plot",
            dir.display()
        )));
    }
    let series = |filter: &dyn Fn(&str) -> bool| -> Vec<(String, Vec<(f64, f64)>)> {
        let mut names: Vec<String> = recs
            .iter()
            .flat_map(|r| r.as_object().into_iter().flat_map(|o| o.keys().cloned()))
            .filter(|k| filter(k))
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| {
                let pts = recs
                    .iter()
                    .filter_map(|r| Some((r["iter"].as_f64()?, r[&n].as_f64()?)))
                    .collect();
                (n, pts)
            })
            .collect()
    };
    let mut out = vec![];
    let loss = series(&|k| k.starts_with("loss"));
    if !loss.is_empty() {
        let p = dir.join("loss.png");
        line_chart(&p, "training losses", "iteration", &loss)?;
        out.push(p);
    }
    let lr = series(&|k| k == "lr");
    if !lr.is_empty() {
        let p = dir.join("lr.png");
        line_chart(&p, "learning rate", "iteration", &lr)?;
        out.push(p);
    }
    let ap = series(&|k| k == "val/AP" || k == "val/AP50");
    if !ap.is_empty() {
        let p = dir.join("ap.png");
        line_chart(&p, "validation bbox AP", "iteration", &ap)?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resume_truncates_and_plots() {
        let d = tempfile::tempdir().unwrap();
        let mut m = MetricsLog::open(d.path(), None).unwrap();
        for it in 1..=4u64 {
            m.write(&json!({"iter": it, "loss": 1.0 / it as f64, "loss_rpn": 0.5, "lr": 0.01}))
                .unwrap();
        }
        m.write(&json!({"iter": 4, "val/AP": 0.3, "val/AP50": 0.6}))
            .unwrap();
        drop(m);
        let mut m = MetricsLog::open(d.path(), Some(2)).unwrap();
        m.write(&json!({"iter": 3, "loss": 0.2, "lr": 0.01}))
            .unwrap();
        let recs = read(&d.path().join("metrics.jsonl")).unwrap();
        assert_eq!(
            recs.iter()
                .map(|r| r["iter"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let files = plot_run(d.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert!(image::open(&files[0]).is_ok());
    }
}
