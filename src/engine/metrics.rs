//! Training metrics as JSON lines (`metrics.jsonl`: one object per logged iteration or
//! evaluation) and their plots (`loss.png`, `lr.png`, `ap.png`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// Appends metric records to `metrics.jsonl`.
///
/// Each record is one `write` of its whole line, newline included, so a kill leaves whole
/// records (and at worst, after a crash of the machine, one torn last line, which [`Self::open`]
/// drops when resuming and says so).
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
    /// The records in the file, to tell whether one is already there (`--resume`).
    records: Vec<Value>,
}

impl MetricsLog {
    /// Open the log of `dir`. When resuming at `resume_iter`, records of later iterations (from
    /// the interrupted run) are dropped so the log continues exactly; a torn last line is
    /// dropped with a warning. Without `resume_iter` the log starts empty.
    pub fn open(dir: &Path, resume_iter: Option<u64>) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let kept: Vec<Value> = match resume_iter {
            Some(it) => {
                let (recs, torn) = read_lines(&path)?;
                if let Some(line) = torn {
                    eprintln!(
                        "warning: {}: line {line} is an incomplete record (the previous run \
                         was interrupted while writing it); dropped",
                        path.display()
                    );
                }
                recs.into_iter()
                    .filter(|v| v["iter"].as_u64().is_some_and(|i| i <= it))
                    .collect()
            }
            None => vec![],
        };
        let mut text = String::new();
        for v in &kept {
            text.push_str(&v.to_string());
            text.push('\n');
        }
        crate::util::write_atomic(&path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            file,
            records: kept,
        })
    }

    /// Append one record.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        if crate::util::fault_point("metrics.torn") {
            // Test hook: die half-way through a record, as a kill inside a write would.
            let _ = self.file.write_all(&line.as_bytes()[..line.len() / 2]);
            crate::util::kill_self();
        }
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))?;
        self.records.push(record.clone());
        Ok(())
    }

    /// Whether a record of iteration `iter` holds `key`.
    pub fn has(&self, iter: u64, key: &str) -> bool {
        self.records
            .iter()
            .any(|r| r["iter"].as_u64() == Some(iter) && r.get(key).is_some())
    }
}

/// All records of a metrics file (missing file: none). A torn last line (an interrupted write)
/// is left out with a warning; a bad line elsewhere is an error naming it.
pub fn read(path: &Path) -> Result<Vec<Value>> {
    let (recs, torn) = read_lines(path)?;
    if let Some(line) = torn {
        eprintln!(
            "warning: {}: line {line} is an incomplete record (interrupted write); left out",
            path.display()
        );
    }
    Ok(recs)
}

/// The records of a metrics file, and the number of its last line when that line is an
/// incomplete record: not newline-terminated and not a whole JSON document.
fn read_lines(path: &Path) -> Result<(Vec<Value>, Option<usize>)> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], None)),
        Err(e) => return Err(Error::io(path, e)),
    };
    let lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    let complete = text.ends_with(b"\n") || text.is_empty();
    let mut recs = vec![];
    for (i, l) in lines.iter().enumerate() {
        if l.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let last = i + 1 == lines.len();
        // serde_json rejects anything after the record, so two records glued together are
        // an error too.
        match serde_json::from_slice::<Value>(l) {
            Ok(v) => recs.push(v),
            Err(_) if last && !complete => return Ok((recs, Some(i + 1))),
            Err(e) => {
                return Err(Error::located(
                    path,
                    format!("line {}", i + 1),
                    e.to_string(),
                ))
            }
        }
    }
    Ok((recs, None))
}

/// Bookkeeping of a step record: not a loss term.
const NOT_TERMS: [&str; 6] = ["iter", "epoch", "lr", "time", "data_wait", "rss_mb"];

/// Draw into `dir` from its metrics: `loss.png` (the total and every loss term, with the
/// distillation terms in a second panel: their scale differs, and in a distilled run they are
/// most of the loss), `lr.png`, and `ap.png` (each evaluation as a point — a run evaluated once
/// is one point at its last iteration — other networks' too, with the teachers' final AP or
/// top-1 as dashed reference lines). Returns the files written.
pub fn plot_run(dir: &Path) -> Result<Vec<PathBuf>> {
    use crate::plot::{panels_chart, Panel};
    let recs = read(&dir.join("metrics.jsonl"))?;
    if recs.is_empty() {
        return Err(Error::msg(format!(
            "{}: no metrics.jsonl records to plot",
            dir.display()
        )));
    }
    let series = |filter: &dyn Fn(&str) -> bool| series_of(&recs, filter);
    let last_iter = recs
        .iter()
        .filter_map(|r| r["iter"].as_f64())
        .fold(0.0, f64::max);
    let x = (0.0, last_iter);
    let panel = |title: &str, series, references, markers| Panel {
        title: title.to_string(),
        series,
        references,
        markers,
    };
    let mut out = vec![];
    let is_term = |k: &str| !NOT_TERMS.contains(&k) && !k.contains('/');
    let mut panels = vec![];
    let losses = series(&|k| is_term(k) && !k.starts_with("distill.") && k.contains("loss"));
    if !losses.is_empty() {
        panels.push(panel("training losses", losses, vec![], false));
    }
    let distill = series(&|k| is_term(k) && k.starts_with("distill."));
    if !distill.is_empty() {
        panels.push(panel("distillation terms", distill, vec![], false));
    }
    if !panels.is_empty() {
        let p = dir.join("loss.png");
        panels_chart(&p, "iteration", x, &panels)?;
        out.push(p);
    }
    let lr = series(&|k| k == "lr");
    if !lr.is_empty() {
        let p = dir.join("lr.png");
        panels_chart(
            &p,
            "iteration",
            x,
            &[panel("learning rate", lr, vec![], false)],
        )?;
        out.push(p);
    }
    let (evals, references, title) = eval_series(&recs);
    if !evals.is_empty() {
        let p = dir.join("ap.png");
        panels_chart(&p, "iteration", x, &[panel(title, evals, references, true)])?;
        out.push(p);
    }
    Ok(out)
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

/// Each key of the records that `filter` takes, as (iteration, value) points, by name.
fn series_of(recs: &[Value], filter: &dyn Fn(&str) -> bool) -> Series {
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
}

/// The evaluations to plot (`val/AP`, `val/AP50` or `val/top1`, and other networks'
/// `<net>/val/…`), the reference models' final values (`teacher0/AP`), and the chart's title.
fn eval_series(recs: &[Value]) -> (Series, Vec<(String, f64)>, &'static str) {
    let series = |filter: &dyn Fn(&str) -> bool| series_of(recs, filter);
    let classification = recs.iter().any(|r| r.get("val/top1").is_some());
    let (metrics, title): (&[&str], _) = if classification {
        (&["top1"], "validation top-1 accuracy")
    } else {
        (&["AP", "AP50"], "validation bbox AP")
    };
    let is_eval = |k: &str| {
        metrics.iter().any(|m| {
            k == format!("val/{m}")
                || (k.ends_with(&format!("/val/{m}")) && k.matches('/').count() == 2)
        })
    };
    let evals = series(&is_eval);
    let mut references = vec![];
    for (name, pts) in series(&|k: &str| {
        metrics.iter().any(|m| k.ends_with(&format!("/{m}")))
            && k.matches('/').count() == 1
            && !k.starts_with("val/")
    }) {
        if let Some(&(_, y)) = pts.last() {
            references.push((name, y));
        }
    }
    (evals, references, title)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A distilled run evaluated once: the distillation terms get a panel of their own in
    /// loss.png, and ap.png has the one evaluation and the teacher's AP as a reference.
    #[test]
    fn plots_distillation_terms_and_a_single_evaluation() {
        let d = tempfile::tempdir().unwrap();
        let mut m = MetricsLog::open(d.path(), None).unwrap();
        for it in 1..=3u64 {
            m.write(
                &json!({"iter": it, "loss": 4.0, "loss_classifier": 0.5, "lr": 0.01,
                            "distill.hint.fpn.p3": 3.0, "time": 0.1, "rss_mb": 100.0}),
            )
            .unwrap();
        }
        m.write(&json!({"iter": 3, "val/AP": 0.3, "val/AP50": 0.6}))
            .unwrap();
        m.write(&json!({"iter": 3, "teacher0/AP": 0.5, "teacher0/AP50": 0.7}))
            .unwrap();
        drop(m);
        let recs = read(&d.path().join("metrics.jsonl")).unwrap();
        let (evals, refs, _) = eval_series(&recs);
        let names: Vec<&str> = evals.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["val/AP", "val/AP50"]);
        assert_eq!(evals[0].1, [(3.0, 0.3)]);
        assert_eq!(
            refs,
            [
                ("teacher0/AP".to_string(), 0.5),
                ("teacher0/AP50".to_string(), 0.7)
            ]
        );
        let files = plot_run(d.path()).unwrap();
        let loss = image::open(d.path().join("loss.png")).unwrap();
        assert_eq!(
            loss.height(),
            2 * 420,
            "two panels: losses and distillation terms"
        );
        assert_eq!(files.len(), 3);
    }

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

    #[test]
    fn a_torn_last_record_is_dropped_on_resume() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"iter\": 1, \"loss\": 2}\n{\"iter\": 2, \"lo").unwrap();
        let mut m = MetricsLog::open(d.path(), Some(2)).unwrap();
        assert!(m.has(1, "loss") && !m.has(2, "loss"));
        m.write(&json!({"iter": 2, "loss": 1.5})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"iter\":1,\"loss\":2}\n{\"iter\":2,\"loss\":1.5}\n"
        );
        // A bad line that is not the last, or a complete last line that is not JSON, is an
        // error naming the line.
        std::fs::write(&p, "{\"iter\": 1,\n{\"iter\": 2}\n").unwrap();
        let e = MetricsLog::open(d.path(), Some(2))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("metrics.jsonl: line 1: EOF while parsing"),
            "{e}"
        );
        std::fs::write(&p, "{\"iter\": 1}\n{\"iter\": 2\n").unwrap();
        assert!(read(&p).is_err());
    }
}
