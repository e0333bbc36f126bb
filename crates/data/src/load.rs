//! Reading a user's data set from CSV or JSON lines.

use crate::{DataError, Dataset, Result};
use std::path::Path;

const LABEL_NAMES: &[&str] = &["label", "target", "class", "y"];

pub(crate) fn load(path: &Path) -> Result<Dataset> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") => load_csv(path),
        Some("jsonl") | Some("ndjson") => load_jsonl(path),
        _ => Err(DataError::Invalid(format!(
            "{}: unknown data format; use *.csv (numeric columns and a label column) or *.jsonl ({{\"features\": [...], \"label\": 0}} per line)",
            path.display()
        ))),
    }
}

fn parse_err(path: &Path, line: usize, message: impl Into<String>) -> DataError {
    DataError::Parse {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

fn parse_label(path: &Path, line: usize, text: &str) -> Result<u32> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| parse_err(path, line, format!("label '{text}' is not a number")))?;
    if v < 0.0 || v.fract() != 0.0 || v > u32::MAX as f64 {
        return Err(parse_err(
            path,
            line,
            format!("label '{text}' is not a class index (0, 1, 2, ...)"),
        ));
    }
    Ok(v as u32)
}

fn load_csv(path: &Path) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records = reader.records().enumerate().peekable();
    // A first row with any non-numeric field is a header.
    let mut label_col = None;
    let mut first_data_line = 1;
    if let Some((_, Ok(first))) = records.peek()
        && first.iter().any(|f| f.parse::<f64>().is_err())
    {
        let names: Vec<String> = first.iter().map(|f| f.to_ascii_lowercase()).collect();
        label_col = names.iter().position(|n| LABEL_NAMES.contains(&n.as_str()));
        if label_col.is_none() {
            return Err(parse_err(
                path,
                1,
                format!(
                    "the header has no label column (name one of: {})",
                    LABEL_NAMES.join(", ")
                ),
            ));
        }
        records.next();
        first_data_line = 2;
    }
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    let mut width = None;
    for (i, rec) in records {
        let line = i + 1;
        let rec = rec.map_err(|e| parse_err(path, line, e.to_string()))?;
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        let n = rec.len();
        if n < 2 {
            return Err(parse_err(
                path,
                line,
                "a row needs at least one feature and a label",
            ));
        }
        match width {
            None => width = Some(n),
            Some(w) if w != n => {
                return Err(parse_err(
                    path,
                    line,
                    format!("{n} columns, but line {first_data_line} has {w}"),
                ));
            }
            _ => {}
        }
        let lc = label_col.unwrap_or(n - 1);
        for (j, f) in rec.iter().enumerate() {
            if j == lc {
                labels.push(parse_label(path, line, f)?);
            } else {
                let v: f32 = f.parse().map_err(|_| {
                    parse_err(
                        path,
                        line,
                        format!("column {}: '{f}' is not a number", j + 1),
                    )
                })?;
                features.push(v);
            }
        }
    }
    let n_features = width
        .map(|w| w - 1)
        .ok_or_else(|| DataError::Invalid(format!("{}: no data rows", path.display())))?;
    Dataset::new(
        path.display().to_string(),
        features,
        labels,
        n_features,
        None,
    )
}

fn load_jsonl(path: &Path) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    let mut width: Option<(usize, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| parse_err(path, line, e.to_string()))?;
        let xs = v
            .get("features")
            .or_else(|| v.get("x"))
            .and_then(|x| x.as_array())
            .ok_or_else(|| parse_err(path, line, "no \"features\" array"))?;
        let label = v
            .get("label")
            .or_else(|| v.get("y"))
            .ok_or_else(|| parse_err(path, line, "no \"label\""))?;
        let label_text = match label {
            serde_json::Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        labels.push(parse_label(path, line, &label_text)?);
        match width {
            None => width = Some((xs.len(), line)),
            Some((w, first)) if w != xs.len() => {
                return Err(parse_err(
                    path,
                    line,
                    format!("{} features, but line {first} has {w}", xs.len()),
                ));
            }
            _ => {}
        }
        for x in xs {
            features.push(
                x.as_f64()
                    .ok_or_else(|| parse_err(path, line, format!("feature {x} is not a number")))?
                    as f32,
            );
        }
    }
    let (n_features, _) =
        width.ok_or_else(|| DataError::Invalid(format!("{}: no data rows", path.display())))?;
    Dataset::new(
        path.display().to_string(),
        features,
        labels,
        n_features,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_and_without_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.csv");
        std::fs::write(&p, "f1,label,f2\n0.5,1,2\n1.5,0,3\n").unwrap();
        let d = Dataset::load(&p).unwrap();
        assert_eq!(d.n_features, 2);
        assert_eq!(d.features, vec![0.5, 2.0, 1.5, 3.0]);
        assert_eq!(d.labels, vec![1, 0]);
        let p = dir.path().join("b.csv");
        std::fs::write(&p, "1,2,3,2\n4,5,6,0\n").unwrap();
        let d = Dataset::load(&p).unwrap();
        assert_eq!((d.n_features, d.n_classes), (3, 3));
    }

    #[test]
    fn bad_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.csv");
        std::fs::write(&p, "1,2,0\n1,2,3,1\n").unwrap();
        let e = Dataset::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.csv") && e.contains("line 2"), "{e}");
        let p = dir.path().join("bad.jsonl");
        std::fs::write(
            &p,
            "{\"features\": [1, 2], \"label\": 1}\n{\"features\": [1], \"label\": 0}\n",
        )
        .unwrap();
        let e = Dataset::load(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("1 features"), "{e}");
        let p = dir.path().join("neg.jsonl");
        std::fs::write(&p, "{\"features\": [1, 2], \"label\": -1}\n").unwrap();
        let e = Dataset::load(&p).unwrap_err().to_string();
        assert!(e.contains("class index"), "{e}");
        let e = Dataset::load(dir.path().join("x.parquet"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown data format"), "{e}");
    }

    #[test]
    fn jsonl_reads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(
            &p,
            "{\"features\": [1, 2], \"label\": 1}\n\n{\"x\": [3, 4], \"y\": 0}\n",
        )
        .unwrap();
        let d = Dataset::load(&p).unwrap();
        assert_eq!(d.features, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.labels, vec![1, 0]);
        assert!(d.expect_features(3).is_err());
    }
}
