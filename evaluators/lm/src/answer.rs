//! Reading answers out of generations, and the language check.

use crate::task::{Extract, LanguageSpec};
use evomerge_eval::EvalError;
use regex::Regex;
use std::collections::HashSet;
use std::path::Path;

/// Pulls the answer out of a generated text.
#[derive(Debug, Clone)]
pub struct Extractor {
    kind: Extract,
    regex: Option<Regex>,
}

impl Extractor {
    pub fn new(kind: Extract, regex: Option<&str>) -> Result<Extractor, EvalError> {
        let pattern = match (kind, regex) {
            (Extract::Regex, Some(r)) => r.to_string(),
            (Extract::Regex, None) => {
                return Err(EvalError::Config(
                    "[generate] extract = \"regex\" needs `regex = \"...\"`".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(EvalError::Config(
                    "[generate] `regex` is given but extract is not \"regex\"; set extract = \"regex\"".into(),
                ));
            }
            (Extract::LastNumber, None) => r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)".to_string(),
            (Extract::Sakana, None) => r"\d*\.?\d+".to_string(),
            (Extract::Full, None) => String::new(),
        };
        let regex = if pattern.is_empty() {
            None
        } else {
            Some(Regex::new(&pattern).map_err(|e| {
                EvalError::Config(format!(
                    "[generate] regex {pattern:?} does not compile: {e}"
                ))
            })?)
        };
        Ok(Extractor { kind, regex })
    }

    /// The answer in `text`, if any.
    pub fn extract(&self, text: &str) -> Option<String> {
        let Some(re) = &self.regex else {
            return Some(text.trim().to_string());
        };
        let caps = re.captures_iter(text).last()?;
        let m = caps.get(1).or_else(|| caps.get(0))?.as_str();
        Some(match self.kind {
            Extract::LastNumber => m.replace(',', ""),
            _ => m.to_string(),
        })
    }
}

/// Whether an extracted answer equals the reference: as numbers when both parse (commas
/// removed), else as trimmed strings.
pub fn answers_match(got: &str, want: &str) -> bool {
    let num = |s: &str| s.trim().replace(',', "").parse::<f64>().ok();
    match (num(got), num(want)) {
        (Some(a), Some(b)) => a == b,
        _ => got.trim() == want.trim(),
    }
}

/// The language check (a stand-in for the paper's fastText Japanese check).
#[derive(Debug, Clone)]
pub struct LanguageCheck {
    vocabulary: Option<HashSet<String>>,
    scripts: Vec<Script>,
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Latin,
    Greek,
    Cyrillic,
    Arabic,
    Hebrew,
    Devanagari,
    Thai,
    Hangul,
    Hiragana,
    Katakana,
    Han,
}

const SCRIPTS: &[(&str, Script)] = &[
    ("latin", Script::Latin),
    ("greek", Script::Greek),
    ("cyrillic", Script::Cyrillic),
    ("arabic", Script::Arabic),
    ("hebrew", Script::Hebrew),
    ("devanagari", Script::Devanagari),
    ("thai", Script::Thai),
    ("hangul", Script::Hangul),
    ("hiragana", Script::Hiragana),
    ("katakana", Script::Katakana),
    ("han", Script::Han),
];

impl Script {
    fn contains(self, c: char) -> bool {
        let u = c as u32;
        let r = |lo: u32, hi: u32| (lo..=hi).contains(&u);
        match self {
            Script::Latin => c.is_ascii_alphabetic() || r(0xC0, 0x24F) && u != 0xD7 && u != 0xF7,
            Script::Greek => r(0x370, 0x3FF),
            Script::Cyrillic => r(0x400, 0x4FF),
            Script::Arabic => r(0x600, 0x6FF),
            Script::Hebrew => r(0x590, 0x5FF),
            Script::Devanagari => r(0x900, 0x97F),
            Script::Thai => r(0xE00, 0xE7F),
            Script::Hangul => r(0xAC00, 0xD7AF) || r(0x1100, 0x11FF) || r(0x3130, 0x318F),
            Script::Hiragana => r(0x3040, 0x309F),
            Script::Katakana => r(0x30A0, 0x30FF) || r(0x31F0, 0x31FF) || r(0xFF66, 0xFF9F),
            Script::Han => {
                r(0x4E00, 0x9FFF) || r(0x3400, 0x4DBF) || r(0xF900, 0xFAFF) || r(0x20000, 0x2A6DF)
            }
        }
    }
}

impl LanguageCheck {
    pub fn new(spec: &LanguageSpec, base: &Path) -> Result<LanguageCheck, EvalError> {
        let mut vocab: Option<HashSet<String>> = None;
        if let Some(words) = &spec.vocabulary {
            vocab
                .get_or_insert_with(HashSet::new)
                .extend(words.iter().map(|w| w.to_lowercase()));
        }
        if let Some(file) = &spec.vocabulary_file {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| EvalError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            vocab.get_or_insert_with(HashSet::new).extend(
                text.lines()
                    .map(|l| l.trim().to_lowercase())
                    .filter(|l| !l.is_empty()),
            );
        }
        let mut scripts = Vec::new();
        for name in spec.scripts.iter().flatten() {
            let s = SCRIPTS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    EvalError::Config(format!(
                        "[generate.language] unknown script '{name}'; known: {}",
                        SCRIPTS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
            scripts.push(s);
        }
        match (&vocab, scripts.is_empty()) {
            (None, true) => Err(EvalError::Config(
                "[generate.language] needs `vocabulary`, `vocabulary_file` or `scripts`".into(),
            )),
            (Some(_), false) => Err(EvalError::Config(
                "[generate.language] give either a vocabulary or scripts, not both".into(),
            )),
            _ if !(0.0..=1.0).contains(&spec.threshold) => Err(EvalError::Config(format!(
                "[generate.language] threshold {} is not in [0, 1]",
                spec.threshold
            ))),
            _ => Ok(LanguageCheck {
                vocabulary: vocab,
                scripts,
                threshold: spec.threshold,
            }),
        }
    }

    /// The share of `text` in the language: of its words (those with a letter; numbers and
    /// punctuation do not count) found in the vocabulary, or of its letters in the scripts.
    /// Text with no words or letters scores 0.
    pub fn share(&self, text: &str) -> f64 {
        let (hit, total) = match &self.vocabulary {
            Some(v) => text
                .split_whitespace()
                .map(|w| {
                    w.trim_matches(|c: char| !c.is_alphanumeric())
                        .to_lowercase()
                })
                .filter(|w| w.chars().any(char::is_alphabetic))
                .fold((0usize, 0usize), |(h, t), w| {
                    (h + usize::from(v.contains(&w)), t + 1)
                }),
            None => text
                .chars()
                .filter(|c| c.is_alphabetic())
                .fold((0, 0), |(h, t), c| {
                    let inside = self.scripts.iter().any(|s| s.contains(c));
                    (h + usize::from(inside), t + 1)
                }),
        };
        if total == 0 {
            0.0
        } else {
            hit as f64 / total as f64
        }
    }

    /// Whether the text passes.
    pub fn passes(&self, text: &str) -> bool {
        self.share(text) >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_number_and_sakana_extraction() {
        let ours = Extractor::new(Extract::LastNumber, None).unwrap();
        assert_eq!(ours.extract("so 3 + 4 = 7.").as_deref(), Some("7"));
        assert_eq!(ours.extract("total 1,000 yen").as_deref(), Some("1000"));
        assert_eq!(ours.extract("it is -2.5").as_deref(), Some("-2.5"));
        assert_eq!(ours.extract("no digits"), None);
        let sakana = Extractor::new(Extract::Sakana, None).unwrap();
        assert_eq!(sakana.extract("total 1,000 yen").as_deref(), Some("000"));
        assert_eq!(sakana.extract("it is -2.5").as_deref(), Some("2.5"));
        let re = Extractor::new(Extract::Regex, Some(r"answer is (\w+)")).unwrap();
        assert_eq!(
            re.extract("the answer is 12, no, the answer is 13")
                .as_deref(),
            Some("13")
        );
        assert!(Extractor::new(Extract::Regex, None).is_err());
        assert!(Extractor::new(Extract::Regex, Some("(")).is_err());
        assert!(answers_match("000", "0") && answers_match("7.0", "7") && !answers_match("7", "8"));
        assert!(answers_match(" yes", "yes"));
    }

    #[test]
    fn language_shares() {
        let spec = |vocab: Option<Vec<&str>>, scripts: Option<Vec<&str>>| LanguageSpec {
            vocabulary: vocab.map(|v| v.into_iter().map(String::from).collect()),
            vocabulary_file: None,
            scripts: scripts.map(|v| v.into_iter().map(String::from).collect()),
            threshold: 0.5,
        };
        let v = LanguageCheck::new(&spec(Some(vec!["ja", "kotae", "wa"]), None), Path::new("."))
            .unwrap();
        assert_eq!(v.share("kotae wa 42 desu."), 2.0 / 3.0);
        assert!(v.passes("Kotae wa 42"));
        assert!(!v.passes("the answer is 42"));
        assert_eq!(v.share("42"), 0.0);
        let s = LanguageCheck::new(
            &spec(None, Some(vec!["Hiragana", "Han", "katakana"])),
            Path::new("."),
        )
        .unwrap();
        assert!(s.passes("答えは42です"));
        assert!(!s.passes("The answer is 42"));
        assert!(LanguageCheck::new(&spec(None, Some(vec!["Klingon"])), Path::new(".")).is_err());
        assert!(LanguageCheck::new(&spec(None, None), Path::new(".")).is_err());
    }
}
