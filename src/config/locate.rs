//! Where in a merged config a deserialisation error lies. serde loses the JSON path inside an
//! internally tagged value (`method`, `distill[i]`, `teachers[i].pretrained`: `{"type": …}`):
//! an unknown field under `method.partner` is reported at `method`, and the file that set
//! `method` (perhaps the base) would be blamed. The merged document itself says where the
//! offending key or value is; this finds it there.

use serde_json::Value;

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `a.b[0].c` → steps; `.` or `` → none.
fn steps(path: &str) -> Vec<Step> {
    let mut out = vec![];
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(k) = pieces.next().filter(|k| !k.is_empty()) {
            out.push(Step::Key(k.to_string()));
        }
        for ix in pieces {
            match ix.trim_end_matches(']').parse() {
                Ok(i) => out.push(Step::Index(i)),
                Err(_) => out.push(Step::Key(ix.to_string())),
            }
        }
    }
    out
}

fn join(steps: &[Step]) -> String {
    let mut s = String::new();
    for st in steps {
        match st {
            Step::Key(k) if s.is_empty() => s.push_str(k),
            Step::Key(k) => {
                s.push('.');
                s.push_str(k)
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() {
        ".".into()
    } else {
        s
    }
}

fn child<'a>(v: &'a Value, st: &Step) -> Option<&'a Value> {
    match st {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    }
}

/// The one value below `v` (not `v` itself) that `hit` accepts, with its path relative to
/// `v`; none when there is none or more than one (then the coarser path is the honest one).
fn find_below<'a>(
    v: &'a Value,
    hit: &dyn Fn(&Step, &Value) -> bool,
) -> Option<(Vec<Step>, &'a Value)> {
    let mut found = vec![];
    let mut stack: Vec<(Vec<Step>, &Value)> = vec![(vec![], v)];
    while let Some((at, node)) = stack.pop() {
        let kids: Vec<(Step, &Value)> = match node {
            Value::Object(m) => m.iter().map(|(k, c)| (Step::Key(k.clone()), c)).collect(),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, c)| (Step::Index(i), c))
                .collect(),
            _ => vec![],
        };
        for (st, c) in kids {
            let mut p = at.clone();
            p.push(st.clone());
            if hit(&st, c) {
                found.push((p.clone(), c));
            }
            stack.push((p, c));
        }
    }
    (found.len() == 1).then(|| found.remove(0))
}

/// How serde describes a value in `invalid type: …, expected …`.
fn describe(v: &Value) -> String {
    use serde::de::Unexpected as U;
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => U::Bool(*b).to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => U::Unsigned(u).to_string(),
            (_, Some(i), _) => U::Signed(i).to_string(),
            (_, _, Some(f)) => U::Float(f).to_string(),
            _ => String::new(),
        },
        Value::String(s) => U::Str(s).to_string(),
        Value::Array(_) => "sequence".into(),
        Value::Object(_) => "map".into(),
    }
}

/// The text between `start` and the next `end` in `msg`.
fn between<'a>(msg: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &msg[msg.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// The full JSON path of an error serde reported at `reported` with `msg`, found in the merged
/// document `doc`; `reported` itself when the document does not say more.
pub fn locate(doc: &Value, reported: &str, msg: &str) -> String {
    let mut at = vec![];
    let mut node = doc;
    for st in steps(reported) {
        if let Some(c) = child(node, &st) {
            at.push(st);
            node = c;
            continue;
        }
        // Keys between `node` and `st` were lost inside a tagged value: look below.
        match find_below(node, &|s, _| s == &st) {
            Some((rel, c)) => {
                at.extend(rel);
                node = c;
            }
            None => return reported.to_string(),
        }
    }
    let below = if let Some(field) = between(msg, "unknown field `", "`") {
        let key = Step::Key(field.to_string());
        match child(node, &key) {
            Some(c) => Some((vec![key], c)),
            None => find_below(node, &|s, _| s == &key),
        }
    } else if let Some(what) = between(msg, "invalid type: ", ", expected")
        .or_else(|| between(msg, "invalid value: ", ", expected"))
    {
        (describe(node) != what)
            .then(|| find_below(node, &|_, v| describe(v) == what))
            .flatten()
    } else {
        None
    };
    if let Some((rel, _)) = below {
        at.extend(rel);
    }
    join(&at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_serde_lost_inside_tagged_values() {
        let doc: Value = serde_json::from_str(
            r#"{"method": {"type": "colad", "partner": {"backbone": {"dpth": 3}}, "x": "s"},
                "distill": [{"type": "kd", "temperature": "hot"}], "solver": {"lr": 1}}"#,
        )
        .unwrap();
        let cases = [
            ("method", "unknown field `x`, expected …", "method.x"),
            (
                "method.backbone.dpth",
                "unknown field `dpth`",
                "method.partner.backbone.dpth",
            ),
            (
                "distill[0]",
                "invalid type: string \"hot\", expected f64",
                "distill[0].temperature",
            ),
            (
                "solver.lr",
                "invalid type: integer `1`, expected bool",
                "solver.lr",
            ),
            // Nothing more to say: the reported path stays.
            ("method", "missing field `partner`", "method"),
            ("solver.nope", "unknown field `nope`", "solver.nope"),
        ];
        for (reported, msg, want) in cases {
            assert_eq!(locate(&doc, reported, msg), want, "{reported}: {msg}");
        }
    }

    #[test]
    fn describes_values_as_serde_does() {
        let e = serde_json::from_str::<f64>("\"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid type: string \"x\""), "{e}");
        assert_eq!(describe(&Value::String("x".into())), "string \"x\"");
        let e = serde_json::from_value::<bool>(serde_json::json!(-3))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&describe(&serde_json::json!(-3))), "{e}");
        let e = serde_json::from_value::<bool>(serde_json::json!(1.5))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&describe(&serde_json::json!(1.5))), "{e}");
        let e = serde_json::from_value::<bool>(Value::Null)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&describe(&Value::Null)), "{e}");
    }
}
