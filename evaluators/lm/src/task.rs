//! The task description (TOML) and its items (JSONL).

use evomerge_eval::{EvalError, Split};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One JSONL record.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The `id` field, or `file:line`.
    pub id: String,
    pub fields: Map<String, Value>,
    pub file: PathBuf,
    /// 1-based line number in `file`.
    pub line: usize,
}

impl Item {
    /// A field as text (strings as they are, numbers and booleans printed).
    pub fn text(&self, field: &str) -> Option<String> {
        match self.fields.get(field)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => Some(other.to_string()),
        }
    }

    pub(crate) fn error(&self, message: impl Into<String>) -> EvalError {
        EvalError::Data {
            file: self.file.display().to_string(),
            line: self.line,
            message: message.into(),
        }
    }
}

/// Where a split's items come from: a whole file, or an index range of one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SplitSource {
    File(PathBuf),
    Range {
        file: PathBuf,
        /// `[start, end)` item indices (0-based, end exclusive) of the file's records.
        range: [usize; 2],
    },
}

/// `[data]`: the splits and the per-generation subsample.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub search: Option<SplitSource>,
    pub validation: Option<SplitSource>,
    pub test: Option<SplitSource>,
    /// Items drawn from the search split for each generation (all of them when absent).
    pub subsample: Option<usize>,
    /// The field holding an item's id (default `id`; `file:line` when absent).
    #[serde(default = "default_id_field")]
    pub id_field: String,
}

fn default_id_field() -> String {
    "id".into()
}

/// How to read the answer out of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Extract {
    /// The last number (minus sign, thousands commas and decimals understood).
    #[default]
    LastNumber,
    /// Exactly the Sakana evaluation: `re.findall(r"\d*\.?\d+", text)[-1]` (no minus sign,
    /// "1,000" reads as 000).
    Sakana,
    /// The custom `regex`: group 1 of its last match, or the whole match.
    Regex,
    /// The whole output, trimmed.
    Full,
}

/// `[generate.language]`: the share of output words in a vocabulary, or of letters in some
/// scripts, must reach `threshold`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageSpec {
    /// Words of the language (case-insensitive).
    pub vocabulary: Option<Vec<String>>,
    /// A file with one word per line (relative to the task file).
    pub vocabulary_file: Option<PathBuf>,
    /// Unicode scripts: Latin, Greek, Cyrillic, Arabic, Hebrew, Devanagari, Thai, Hangul,
    /// Hiragana, Katakana, Han.
    pub scripts: Option<Vec<String>>,
    #[serde(default = "half")]
    pub threshold: f64,
}

fn half() -> f64 {
    0.5
}

/// `[generate]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// `{field}` placeholders are replaced by the item's fields; `{{`/`}}` are braces.
    pub prompt: String,
    #[serde(default = "default_answer_field")]
    pub answer_field: String,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub extract: Extract,
    pub regex: Option<String>,
    pub language: Option<LanguageSpec>,
}

fn default_answer_field() -> String {
    "answer".into()
}

fn default_max_new_tokens() -> usize {
    64
}

/// Which metric of a multiple-choice task is the fitness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ChoiceFitness {
    #[default]
    Acc,
    AccNorm,
}

/// `[multiple_choice]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceSpec {
    /// The context, a template like `prompt` above.
    pub prompt: String,
    #[serde(default = "default_choices_field")]
    pub choices_field: String,
    /// Each choice's continuation; `{choice}` is the choice text (other fields work too).
    #[serde(default = "default_choice_template")]
    pub choice_template: String,
    /// The right choice: an index into the choices, or the choice's text.
    #[serde(default = "default_gold_field")]
    pub gold_field: String,
    #[serde(default)]
    pub fitness: ChoiceFitness,
}

fn default_choices_field() -> String {
    "choices".into()
}
fn default_choice_template() -> String {
    " {choice}".into()
}
fn default_gold_field() -> String {
    "gold".into()
}

/// `[perplexity]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerplexitySpec {
    #[serde(default = "default_text_field")]
    pub text_field: String,
}

fn default_text_field() -> String {
    "text".into()
}

/// The kind of task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    Generate,
    MultipleChoice,
    Perplexity,
}

/// A whole task file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub task_type: TaskType,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    pub data: DataSpec,
    pub generate: Option<GenerateSpec>,
    pub multiple_choice: Option<ChoiceSpec>,
    pub perplexity: Option<PerplexitySpec>,
}

fn default_batch_size() -> usize {
    32
}

/// Fill a template's `{field}` placeholders from an item.
pub fn render(template: &str, item: &Item, extra: &[(&str, &str)]) -> Result<String, EvalError> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        let after = &rest[i + 1..];
        if after.as_bytes().first() == Some(&c) {
            out.push(c as char);
            rest = &after[1..];
            continue;
        }
        if c == b'}' {
            return Err(EvalError::Config(format!(
                "template {template:?}: unmatched '}}' (write '}}}}' for a literal brace)"
            )));
        }
        let end = after.find('}').ok_or_else(|| {
            EvalError::Config(format!(
                "template {template:?}: unclosed '{{' (write '{{{{' for a literal brace)"
            ))
        })?;
        let key = &after[..end];
        let value = match extra.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => v.to_string(),
            None => item.text(key).ok_or_else(|| {
                item.error(format!(
                    "the template uses {{{key}}} but the item has no \"{key}\" field"
                ))
            })?,
        };
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Read a JSONL file: one JSON object per line, blank lines skipped.
pub fn read_jsonl(path: &Path, id_field: &str) -> Result<Vec<Item>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| EvalError::Data {
            file: path.display().to_string(),
            line: i + 1,
            message,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| {
            bad(format!(
                "not valid JSON ({e}); each line must be one JSON object"
            ))
        })?;
        let Value::Object(fields) = value else {
            return Err(bad(
                "not a JSON object; each line must be one JSON object".into()
            ));
        };
        let id = match fields.get(id_field) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!(
                "{}:{}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                i + 1
            ),
        };
        items.push(Item {
            id,
            fields,
            file: path.to_path_buf(),
            line: i + 1,
        });
    }
    Ok(items)
}

/// Load every split a data spec names (paths relative to `base`).
pub fn load_splits(data: &DataSpec, base: &Path) -> Result<BTreeMap<Split, Vec<Item>>, EvalError> {
    let mut out = BTreeMap::new();
    for (split, src) in [
        (Split::Search, &data.search),
        (Split::Validation, &data.validation),
        (Split::Test, &data.test),
    ] {
        let Some(src) = src else { continue };
        let items = match src {
            SplitSource::File(f) => read_jsonl(&base.join(f), &data.id_field)?,
            SplitSource::Range { file, range } => {
                let path = base.join(file);
                let all = read_jsonl(&path, &data.id_field)?;
                let [start, end] = *range;
                if start > end || end > all.len() {
                    return Err(EvalError::Config(format!(
                        "[data] {split}: range [{start}, {end}) does not fit {} ({} items)",
                        path.display(),
                        all.len()
                    )));
                }
                all[start..end].to_vec()
            }
        };
        if items.is_empty() {
            return Err(EvalError::Config(format!("[data] {split}: no items")));
        }
        out.insert(split, items);
    }
    if out.is_empty() {
        return Err(EvalError::Config(
            "[data] names no split; give at least `search = \"file.jsonl\"`".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str) -> Item {
        let Value::Object(fields) = serde_json::from_str(json).unwrap() else {
            panic!()
        };
        Item {
            id: "x".into(),
            fields,
            file: "t.jsonl".into(),
            line: 3,
        }
    }

    #[test]
    fn templates() {
        let it = item(r#"{"q": "2+2", "n": 4}"#);
        assert_eq!(
            render("Q: {q} ({n}) {{x}} {c}", &it, &[("c", "C")]).unwrap(),
            "Q: 2+2 (4) {x} C"
        );
        let e = render("{missing}", &it, &[]).unwrap_err().to_string();
        assert!(e.contains("t.jsonl:3") && e.contains("missing"), "{e}");
        assert!(render("{q", &it, &[]).is_err());
    }
}
