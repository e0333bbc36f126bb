//! The miniature Japanese-math world: two synthetic languages and the data sets of the mini
//! reproduction of Sakana's EvoLLM-JP.
//!
//! - **EN** is a small English-like language; **JA** is a word-for-word relexification of it
//!   (same word order, its own words; digits and the symbols `+ - * = . ? :` are shared). The
//!   design pilot found that this, plus parallel
//!   sentence pairs in pretraining, is what lets a skill learned in EN show up on JA inputs.
//! - Numbers are whole words `0 ... 20`; arithmetic facts appear in pretraining as bare,
//!   language-neutral equations (`7 + 5 = 12 .`), so the math experts learn to turn a word
//!   problem into an equation, not the tables.
//! - [`Corpus`] names the data each model is trained on: the base's general text (monolingual
//!   documents in both languages, parallel pairs `EN <=> JA`, equations, and simple non-math
//!   questions answered in the language they are asked in), EN math word problems with worked
//!   EN answers (add/subtract: the "WizardMath" expert), a second math style (multiply and
//!   subtract with other phrasing: the "Abel" expert), and JA instructions with JA answers and
//!   no arithmetic (the "shisa" language expert).
//! - The target task is JA math word problems (all three operations) in the JA instruction
//!   template; an answer counts only when its last number is right and it is written in JA
//!   (the share of its words in the JA vocabulary file reaches the threshold).
//!   [`write_task`] writes disjoint search / validation / test JSONL splits, the task TOML for
//!   `evaluators/lm`, the JA vocabulary file, and an EN-math sanity task.
//!
//! Everything is a function of a seed (ChaCha8 streams), so the same seed writes the same files.

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

/// The largest number word; every number in the world (operands and results) is in `0..=MAX_NUMBER`.
pub const MAX_NUMBER: u32 = 20;

/// EN word -> JA word (the relexification). Every EN word has exactly one JA word and the JA
/// words are all different from the EN words and from each other.
pub const LEXICON: &[(&str, &str)] = &[
    // names
    ("tom", "taro"),
    ("ann", "hana"),
    ("bob", "kenji"),
    ("mary", "yuki"),
    ("sam", "sora"),
    ("lucy", "emi"),
    // objects
    ("apples", "ringo"),
    ("books", "hon"),
    ("pens", "enpitsu"),
    ("eggs", "tamago"),
    ("cards", "kaado"),
    ("coins", "koban"),
    ("cups", "koppu"),
    ("stones", "ishi"),
    // verbs
    ("has", "motsu"),
    ("buys", "kau"),
    ("finds", "mitsukeru"),
    ("gets", "morau"),
    ("eats", "taberu"),
    ("loses", "nakusu"),
    ("gives", "ageru"),
    ("sells", "uru"),
    ("likes", "suki"),
    ("sees", "miru"),
    ("have", "motteiru"),
    ("are", "desu"),
    ("is", "wa"),
    // colours and sizes
    ("red", "akai"),
    ("blue", "aoi"),
    ("green", "midori"),
    ("big", "ookii"),
    ("small", "chiisai"),
    // function words
    ("he", "kare"),
    ("she", "kanojo"),
    ("they", "karera"),
    ("the", "sono"),
    ("a", "aru"),
    ("and", "soshite"),
    ("to", "ni"),
    ("more", "motto"),
    ("how", "dore"),
    ("many", "kurai"),
    ("does", "suru"),
    ("do", "shimasu"),
    ("now", "ima"),
    ("left", "nokori"),
    ("what", "nani"),
    ("who", "dare"),
    ("color", "iro"),
    ("friends", "tomodachi"),
    ("each", "sorezore"),
    ("box", "hako"),
    ("boxes", "hakotachi"),
    ("in", "naka"),
    ("all", "zenbu"),
    ("together", "issho"),
    ("so", "dakara"),
    ("answer", "kotae"),
    ("question", "shitsumon"),
    ("reply", "kaitou"),
    ("then", "sorekara"),
    ("today", "kyou"),
    ("there", "soko"),
    ("it", "sore"),
];

/// Symbols shared by both languages.
pub const SYMBOLS: &[&str] = &["+", "-", "*", "=", ".", "?", ":", "<=>"];

/// Special tokens, in id order: padding/unknown, begin, end of sequence.
pub const SPECIALS: &[&str] = &["<unk>", "<s>", "</s>"];

/// The end-of-sequence token that closes every answer (id 2, the config's `eos_token_id`).
pub const EOS: &str = "</s>";

/// One of the two languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    En,
    Ja,
}

impl Lang {
    /// The instruction template: `question : {q} reply :` in EN, its relexification in JA.
    pub fn prompt(self, question: &str) -> String {
        format!(
            "{} : {question} {} :",
            word(self, "question"),
            word(self, "reply")
        )
    }
}

/// The word for EN word `en` in `lang` (numbers and symbols are returned unchanged).
pub fn word(lang: Lang, en: &str) -> &str {
    match lang {
        Lang::En => en,
        Lang::Ja => LEXICON
            .iter()
            .find(|(e, _)| *e == en)
            .map(|(_, j)| *j)
            .unwrap_or(en),
    }
}

/// Relexify an EN text (words separated by spaces) into `lang`.
pub fn relex(lang: Lang, en: &str) -> String {
    en.split(' ')
        .map(|w| word(lang, w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The whole vocabulary in token-id order: specials, numbers, symbols, EN words, JA words.
pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    v.extend((0..=MAX_NUMBER).map(|n| n.to_string()));
    v.extend(SYMBOLS.iter().map(|s| s.to_string()));
    v.extend(LEXICON.iter().map(|(e, _)| e.to_string()));
    v.extend(LEXICON.iter().map(|(_, j)| j.to_string()));
    v
}

/// Start the two languages aligned: every JA word's row of the embeddings and of the output
/// head becomes `a` times its EN word's row plus `sqrt(1 - a^2)` times its own draw (so the
/// rows keep their scale). `a = 0` leaves `weights` as drawn; `a = 1` makes each JA word
/// start as its EN word. Only the `[vocabulary, hidden]` tensors are touched.
pub fn align_languages(weights: &mut evomerge_zoo::Weights, a: f32) {
    if a == 0.0 {
        return;
    }
    let first_en = SPECIALS.len() + MAX_NUMBER as usize + 1 + SYMBOLS.len();
    let first_ja = first_en + LEXICON.len();
    let own = (1.0 - a * a).max(0.0).sqrt();
    for (name, shape, values) in &mut weights.tensors {
        if name != "model.embed_tokens.weight" && name != "lm_head.weight" {
            continue;
        }
        let hidden = shape[1];
        for i in 0..LEXICON.len() {
            let (en, ja) = ((first_en + i) * hidden, (first_ja + i) * hidden);
            for k in 0..hidden {
                values[ja + k] = a * values[en + k] + own * values[ja + k];
            }
        }
    }
}

/// The JA words (the language check's vocabulary file, one per line).
pub fn ja_words() -> Vec<&'static str> {
    LEXICON.iter().map(|(_, j)| *j).collect()
}

/// A word-level `tokenizer.json` over [`vocabulary`] (whitespace pre-tokenizer, no BOS added).
pub fn tokenizer_json() -> Value {
    let mut map = serde_json::Map::new();
    for (i, w) in vocabulary().iter().enumerate() {
        map.insert(w.clone(), json!(i));
    }
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": false},
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"}
    })
}

/// Token ids of a text (words separated by single spaces); unknown words map to `<unk>`.
pub fn encode(text: &str) -> Vec<u32> {
    let vocab = vocabulary();
    text.split_whitespace()
        .map(|w| vocab.iter().position(|v| v == w).unwrap_or(0) as u32)
        .collect()
}

/// A fast encoder (the vocabulary as a hash map).
#[derive(Debug, Clone)]
pub struct Encoder {
    ids: std::collections::HashMap<String, u32>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder {
            ids: vocabulary()
                .into_iter()
                .enumerate()
                .map(|(i, w)| (w, i as u32))
                .collect(),
        }
    }
}

impl Encoder {
    pub fn encode(&self, text: &str) -> Vec<u32> {
        text.split_whitespace()
            .map(|w| self.ids.get(w).copied().unwrap_or(0))
            .collect()
    }
}

const NAMES: &[&str] = &["tom", "ann", "bob", "mary", "sam", "lucy"];
const OBJECTS: &[&str] = &[
    "apples", "books", "pens", "eggs", "cards", "coins", "cups", "stones",
];
const COLORS: &[&str] = &["red", "blue", "green"];
const SIZES: &[&str] = &["big", "small"];

fn pronoun(name: &str) -> &'static str {
    match name {
        "ann" | "mary" | "lucy" => "she",
        _ => "he",
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs.choose(rng).expect("non-empty list")
}

fn two_names(rng: &mut ChaCha8Rng) -> (&'static str, &'static str) {
    let a = pick(rng, NAMES);
    loop {
        let b = pick(rng, NAMES);
        if b != a {
            return (a, b);
        }
    }
}

/// An arithmetic operation of a word problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
        }
    }
}

/// A word problem in EN: the question, the worked answer (closed by [`EOS`]) and the number.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub op: Op,
    /// Which phrasing (0 or 1): style 0 is the first math expert's, style 1 the second's.
    pub style: u8,
    pub question: String,
    pub answer: String,
    pub number: u32,
}

/// Draw operands for `op` so that every number stays in `0..=MAX_NUMBER`.
fn operands(rng: &mut ChaCha8Rng, op: Op) -> (u32, u32, u32) {
    match op {
        Op::Add => {
            let a = rng.random_range(1..=10);
            let b = rng.random_range(1..=10);
            (a, b, a + b)
        }
        Op::Sub => {
            let a = rng.random_range(2..=MAX_NUMBER);
            let b = rng.random_range(1..a);
            (a, b, a - b)
        }
        Op::Mul => {
            let a = rng.random_range(2..=5);
            let b = rng.random_range(2..=4);
            (a, b, a * b)
        }
    }
}

/// An EN word problem of `op` in phrasing `style`.
pub fn problem(rng: &mut ChaCha8Rng, op: Op, style: u8) -> Problem {
    let (a, b, c) = operands(rng, op);
    let (n, m) = two_names(rng);
    let obj = pick(rng, OBJECTS);
    let he = pronoun(n);
    let (question, work) = match (op, style) {
        (Op::Add, 0) => {
            let verb = pick(rng, &["buys", "finds", "gets"]);
            (
                format!(
                    "{n} has {a} {obj} . {he} {verb} {b} more {obj} . how many {obj} does {n} have now ?"
                ),
                format!("{n} has {a} + {b} = {c} {obj} ."),
            )
        }
        (Op::Add, _) => (
            format!(
                "{n} has {a} {obj} and {m} has {b} {obj} . how many {obj} do they have together ?"
            ),
            format!("they have {a} + {b} = {c} {obj} ."),
        ),
        (Op::Sub, 0) => {
            let verb = pick(rng, &["eats", "loses", "sells"]);
            (
                format!(
                    "{n} has {a} {obj} . {he} {verb} {b} {obj} . how many {obj} does {n} have now ?"
                ),
                format!("{n} has {a} - {b} = {c} {obj} ."),
            )
        }
        (Op::Sub, _) => (
            format!("{n} has {a} {obj} . {he} gives {b} {obj} to {m} . how many {obj} are left ?"),
            format!("{a} - {b} = {c} {obj} are left ."),
        ),
        (Op::Mul, _) => (
            format!(
                "{n} has {a} boxes . each box has {b} {obj} in it . how many {obj} does {n} have ?"
            ),
            format!("{n} has {a} * {b} = {c} {obj} ."),
        ),
    };
    let lead = if style == 0 { "" } else { "so " };
    Problem {
        op,
        style,
        question,
        answer: format!("{work} {lead}the answer is {c} . {EOS}"),
        number: c,
    }
}

/// A general sentence in EN (monolingual documents and parallel pairs).
fn sentence(rng: &mut ChaCha8Rng) -> String {
    let (n, m) = two_names(rng);
    let obj = pick(rng, OBJECTS);
    let k = rng.random_range(0..=MAX_NUMBER);
    match rng.random_range(0..9) {
        0 => format!("{n} has {k} {obj} ."),
        1 => format!("{n} likes {obj} ."),
        2 => format!("the {obj} are {} .", pick(rng, COLORS)),
        3 => format!("{n} gives {k} {obj} to {m} ."),
        4 => format!("{n} and {m} are friends ."),
        5 => format!("{n} sees a {} box .", pick(rng, SIZES)),
        6 => format!(
            "today {n} {} {k} {obj} .",
            pick(rng, &["buys", "finds", "gets", "eats", "loses", "sells"])
        ),
        7 => format!("there are {k} {obj} in the box ."),
        _ => format!("then {} likes the {} {obj} .", pronoun(n), pick(rng, SIZES)),
    }
}

/// A story in EN where something is added, taken away or multiplied, ending with the result
/// stated in words (the facts a math word problem asks about, without the question).
pub fn story(rng: &mut ChaCha8Rng) -> String {
    let op = *[Op::Add, Op::Sub, Op::Mul].choose(rng).expect("ops");
    let style = rng.random_range(0..=1);
    let p = problem(rng, op, style);
    let setup = p
        .question
        .rsplit_once(" . ")
        .map(|(s, _)| s)
        .unwrap_or(&p.question);
    // the worked answer's first sentence without its equation: "tom has 8 apples ."
    let first = p.answer.split(" . ").next().unwrap_or_default();
    let words: Vec<&str> = first.split(' ').collect();
    let stated = match words.iter().position(|w| *w == "=") {
        Some(eq) if eq >= 3 => [&words[..eq - 3], &words[eq + 1..]].concat().join(" "),
        _ => first.to_string(),
    };
    format!("{setup} . {stated} .")
}

/// An EN text with every word replaced by its JA word with probability `p` (numbers and
/// symbols are shared by both languages anyway).
pub fn code_switch(rng: &mut ChaCha8Rng, en: &str, p: f64) -> String {
    en.split(' ')
        .map(|w| {
            if rng.random_bool(p) {
                word(Lang::Ja, w)
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A non-math question answered by reading (no arithmetic), with its answer (closed by
/// [`EOS`]), in EN.
fn reading_question(rng: &mut ChaCha8Rng) -> (String, String) {
    let (n, m) = two_names(rng);
    let obj = pick(rng, OBJECTS);
    let k = rng.random_range(1..=MAX_NUMBER);
    match rng.random_range(0..4) {
        0 => (
            format!("{n} has {k} {obj} . how many {obj} does {n} have ?"),
            format!("{n} has {k} {obj} . the answer is {k} . {EOS}"),
        ),
        1 => (
            format!("{n} gives {k} {obj} to {m} . who gets the {obj} ?"),
            format!("{m} gets {k} {obj} . the answer is {m} . {EOS}"),
        ),
        2 => {
            let c = pick(rng, COLORS);
            (
                format!("the {obj} are {c} . what color are the {obj} ?"),
                format!("the {obj} are {c} . the answer is {c} . {EOS}"),
            )
        }
        _ => {
            let j = rng.random_range(1..=MAX_NUMBER);
            (
                format!("{n} has {k} {obj} and {m} has {j} cups . how many cups does {m} have ?"),
                format!("{m} has {j} cups . the answer is {j} . {EOS}"),
            )
        }
    }
}

/// What a model is trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corpus {
    /// The base: general text in both languages, parallel pairs, equations, reading questions
    /// answered in the language asked.
    Base,
    /// The base's corpus where `switched_percent`% of the documents are code-switched: 2-4
    /// sentences or arithmetic stories whose every word is EN or JA by a coin flip, so that
    /// the two languages' words must mean the same inside one context (`mini-world build
    /// --code-switch`), and reading questions in the languages `questions` says
    /// (`--base-questions`).
    BaseMixed {
        switched_percent: u32,
        questions: BaseQuestions,
    },
    /// EN add/subtract word problems with worked EN answers (style 0).
    MathEn,
    /// A second math style: EN multiply/subtract/add problems in phrasing 1.
    MathEn2,
    /// A math expert's corpus (`second`: [`Corpus::MathEn2`]'s, else [`Corpus::MathEn`]'s)
    /// where `switched_percent`% of the questions (template included) are code-switched word by
    /// word; the answers stay EN (`--math-switch`: an expert that reads some JA but answers in
    /// EN, as WizardMath does).
    /// With `answers`, the answers of those questions are code-switched too (an expert whose
    /// math reads and writes either language, with no preference for one).
    MathMixed {
        second: bool,
        switched_percent: u32,
        answers: bool,
    },
    /// JA instructions (reading questions) with JA answers, no arithmetic.
    InstructJa,
    /// [`Corpus::InstructJa`] where `percent`% of the examples are JA math word problems (the
    /// target's operations and styles) answered in the worked JA form with a wrong result:
    /// a JA expert that writes JA reasoning text but cannot compute (`mini-world build
    /// --ja-reasoning`).
    InstructJaReasoning { percent: u32 },
    /// The target: JA math word problems in the JA template (all operations and styles).
    MathJa,
}

/// Which reading questions the base learns (`mini-world build --base-questions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseQuestions {
    /// Asked and answered in both languages (the committed recipe): the base answers in the
    /// language asked.
    Both,
    /// Only EN questions: the base answers in the EN form, and only the JA expert learns to
    /// answer JA questions in JA.
    En,
    /// None: the question template is new to every fine-tune.
    None,
}

impl BaseQuestions {
    /// Parse `both`, `en` or `none`.
    pub fn parse(s: &str) -> Option<BaseQuestions> {
        match s {
            "both" => Some(BaseQuestions::Both),
            "en" => Some(BaseQuestions::En),
            "none" => Some(BaseQuestions::None),
            _ => None,
        }
    }
}

/// One training example: the text and how many leading words are prompt (no loss on them;
/// 0 = learn every token).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub prompt_words: usize,
}

fn qa(lang: Lang, question: &str, answer: &str) -> Example {
    let prompt = lang.prompt(&relex(lang, question));
    let prompt_words = prompt.split(' ').count();
    Example {
        text: format!("{prompt} {}", relex(lang, answer)),
        prompt_words,
    }
}

fn random_lang(rng: &mut ChaCha8Rng) -> Lang {
    if rng.random_bool(0.5) {
        Lang::En
    } else {
        Lang::Ja
    }
}

impl Corpus {
    /// One example drawn from the corpus.
    pub fn sample(self, rng: &mut ChaCha8Rng) -> Example {
        match self {
            Corpus::BaseMixed {
                switched_percent,
                questions,
            } => {
                if rng.random_range(0..100) >= switched_percent {
                    loop {
                        let ex = Corpus::Base.sample(rng);
                        // a reading question is the only base example with a template
                        let keep = match questions {
                            BaseQuestions::Both => true,
                            BaseQuestions::En => !ex
                                .text
                                .starts_with(&format!("{} :", word(Lang::Ja, "question"))),
                            BaseQuestions::None => !ex.text.contains(" : "),
                        };
                        if keep {
                            return ex;
                        }
                    }
                }
                // 2-4 sentences or stories, as many as fit the training window with the EOS
                let n = rng.random_range(2..=4);
                let mut docs: Vec<String> = Vec::new();
                let mut words = 0;
                for _ in 0..n {
                    let en = if rng.random_bool(0.3) {
                        story(rng)
                    } else {
                        sentence(rng)
                    };
                    let doc = code_switch(rng, &en, 0.5);
                    let len = doc.split(' ').count();
                    if !docs.is_empty() && words + len > 47 {
                        break;
                    }
                    words += len;
                    docs.push(doc);
                }
                Example {
                    text: format!("{} {EOS}", docs.join(" ")),
                    prompt_words: 0,
                }
            }
            Corpus::Base => {
                let text = match rng.random_range(0..20) {
                    // monolingual documents of 2-4 sentences
                    0..=5 => {
                        let lang = random_lang(rng);
                        let n = rng.random_range(2..=4);
                        let s: Vec<String> = (0..n).map(|_| relex(lang, &sentence(rng))).collect();
                        s.join(" ")
                    }
                    // parallel pairs (either order)
                    6..=9 => {
                        let s = sentence(rng);
                        if rng.random_bool(0.5) {
                            format!("{s} <=> {}", relex(Lang::Ja, &s))
                        } else {
                            format!("{} <=> {s}", relex(Lang::Ja, &s))
                        }
                    }
                    // stories with arithmetic in them (no question, no equation)
                    10..=12 => relex(random_lang(rng), &story(rng)),
                    // equations
                    13..=15 => {
                        let n = rng.random_range(2..=4);
                        let s: Vec<String> = (0..n)
                            .map(|_| {
                                let op = *[Op::Add, Op::Sub, Op::Mul].choose(rng).expect("ops");
                                let (a, b, c) = operands(rng, op);
                                let sym = match op {
                                    Op::Add => "+",
                                    Op::Sub => "-",
                                    Op::Mul => "*",
                                };
                                format!("{a} {sym} {b} = {c} .")
                            })
                            .collect();
                        s.join(" ")
                    }
                    // reading questions, answered in the language asked
                    _ => {
                        let lang = random_lang(rng);
                        let (q, a) = reading_question(rng);
                        return Example {
                            text: qa(lang, &q, &a).text,
                            prompt_words: 0,
                        };
                    }
                };
                Example {
                    text: format!("{text} {EOS}"),
                    prompt_words: 0,
                }
            }
            Corpus::MathEn | Corpus::MathEn2 => {
                let p = expert_problem(rng, self == Corpus::MathEn2);
                qa(Lang::En, &p.question, &p.answer)
            }
            Corpus::MathMixed {
                second,
                switched_percent,
                answers,
            } => {
                let plain = if second {
                    Corpus::MathEn2
                } else {
                    Corpus::MathEn
                };
                if rng.random_range(0..100) >= switched_percent {
                    return plain.sample(rng);
                }
                let p = expert_problem(rng, second);
                let prompt = code_switch(rng, &Lang::En.prompt(&p.question), 0.5);
                let prompt_words = prompt.split(' ').count();
                let answer = if answers {
                    code_switch(rng, &p.answer, 0.5)
                } else {
                    p.answer
                };
                Example {
                    text: format!("{prompt} {answer}"),
                    prompt_words,
                }
            }
            Corpus::InstructJa => {
                let (q, a) = reading_question(rng);
                qa(Lang::Ja, &q, &a)
            }
            Corpus::InstructJaReasoning { percent } => {
                if rng.random_range(0..100) >= percent {
                    return Corpus::InstructJa.sample(rng);
                }
                let p = target_problem(rng);
                let answer = wrong_result(rng, &p);
                qa(Lang::Ja, &p.question, &answer)
            }
            Corpus::MathJa => {
                let p = target_problem(rng);
                qa(Lang::Ja, &p.question, &p.answer)
            }
        }
    }
}

/// A math expert's problem: add/subtract in phrasing 0 ([`Corpus::MathEn`]), or with `second`
/// mostly multiply, then subtract and add, in phrasing 1 ([`Corpus::MathEn2`]).
fn expert_problem(rng: &mut ChaCha8Rng, second: bool) -> Problem {
    let op = if second {
        *[Op::Mul, Op::Mul, Op::Sub, Op::Add]
            .choose(rng)
            .expect("ops")
    } else if rng.random_bool(0.5) {
        Op::Add
    } else {
        Op::Sub
    };
    problem(rng, op, u8::from(second))
}

/// `p`'s worked answer with the result (in the equation and in "the answer is") replaced by
/// another number of `0..=MAX_NUMBER`.
fn wrong_result(rng: &mut ChaCha8Rng, p: &Problem) -> String {
    let mut w = rng.random_range(0..MAX_NUMBER);
    if w >= p.number {
        w += 1;
    }
    let c = p.number;
    p.answer
        .replace(&format!("= {c} "), &format!("= {w} "))
        .replace(
            &format!("the answer is {c} ."),
            &format!("the answer is {w} ."),
        )
}

/// A target-task problem (EN; the task asks it in JA): any operation, any style.
pub fn target_problem(rng: &mut ChaCha8Rng) -> Problem {
    let op = *[Op::Add, Op::Sub, Op::Mul].choose(rng).expect("ops");
    let style = if op == Op::Mul {
        1
    } else {
        rng.random_range(0..=1)
    };
    problem(rng, op, style)
}

/// Sizes of the target task's splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSizes {
    pub search: usize,
    pub validation: usize,
    pub test: usize,
}

impl Default for SplitSizes {
    /// Like GSM8K-ja (search) vs MGSM-JA (test): 1000 / 250 / 250.
    fn default() -> Self {
        SplitSizes {
            search: 1000,
            validation: 250,
            test: 250,
        }
    }
}

/// Settings of the written task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOptions {
    pub sizes: SplitSizes,
    pub seed: u64,
    /// Search items per generation (`[data] subsample`).
    pub subsample: usize,
    /// The share of answer words that must be JA words.
    pub threshold: f64,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            sizes: SplitSizes::default(),
            seed: 7,
            subsample: 100,
            threshold: 0.8,
        }
    }
}

/// Write the target task into `dir`: `ja_math_{search,validation,test}.jsonl` (disjoint:
/// no question text appears in two splits), `ja_math.toml` (generate task, last number, JA
/// language check), `ja_words.txt`, and the EN sanity task `en_math.toml` +
/// `en_math_test.jsonl` (the same test problems asked in EN, no language check).
/// Returns the number of items per split.
pub fn write_task(dir: &Path, options: &TaskOptions) -> std::io::Result<[usize; 3]> {
    std::fs::create_dir_all(dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut seen = BTreeSet::new();
    let mut counts = [0usize; 3];
    let sizes = [
        ("search", options.sizes.search),
        ("validation", options.sizes.validation),
        ("test", options.sizes.test),
    ];
    let mut en_test = String::new();
    for (k, (split, n)) in sizes.iter().enumerate() {
        let mut text = String::new();
        let mut tries = 0usize;
        while counts[k] < *n {
            tries += 1;
            if tries > 200 * n + 1000 {
                return Err(std::io::Error::other(format!(
                    "cannot draw {n} distinct {split} problems"
                )));
            }
            let p = target_problem(&mut rng);
            if !seen.insert(p.question.clone()) {
                continue;
            }
            let id = format!("{split}-{}", counts[k]);
            let record = json!({
                "id": id,
                "question": relex(Lang::Ja, &p.question),
                "answer": p.number,
                "op": p.op.name(),
                "style": p.style,
                "question_en": p.question,
            });
            writeln!(text, "{record}").expect("string write");
            if *split == "test" {
                let en = json!({"id": id, "question": p.question, "answer": p.number, "op": p.op.name()});
                writeln!(en_test, "{en}").expect("string write");
            }
            counts[k] += 1;
        }
        std::fs::write(dir.join(format!("ja_math_{split}.jsonl")), text)?;
    }
    std::fs::write(dir.join("en_math_test.jsonl"), en_test)?;
    let mut words = ja_words().join("\n");
    words.push('\n');
    std::fs::write(dir.join("ja_words.txt"), words)?;
    std::fs::write(
        dir.join("ja_math.toml"),
        format!(
            "# The mini Japanese-math task (issue 7): JA word problems, JA instruction template.\n\
             # Correct = the last number is right (acc) AND the answer is JA (acc_lang, the fitness).\n\
             name = \"mini-ja-math\"\ntype = \"generate\"\nbatch_size = 125\n\n[data]\n\
             search = \"ja_math_search.jsonl\"\nvalidation = \"ja_math_validation.jsonl\"\n\
             test = \"ja_math_test.jsonl\"\nsubsample = {}\n\n[generate]\n\
             prompt = \"{} : {{question}} {} :\"\nanswer_field = \"answer\"\nmax_new_tokens = 24\n\
             extract = \"last_number\"\n\n[generate.language]\nvocabulary_file = \"ja_words.txt\"\n\
             threshold = {}\n",
            options.subsample,
            word(Lang::Ja, "question"),
            word(Lang::Ja, "reply"),
            options.threshold,
        ),
    )?;
    std::fs::write(
        dir.join("en_math.toml"),
        "# Sanity task: the JA test problems asked in EN (no language check).\n\
         name = \"mini-en-math\"\ntype = \"generate\"\nbatch_size = 125\n\n[data]\n\
         test = \"en_math_test.jsonl\"\nsearch = \"en_math_test.jsonl\"\n\n[generate]\n\
         prompt = \"question : {question} reply :\"\nanswer_field = \"answer\"\n\
         max_new_tokens = 24\nextract = \"last_number\"\n",
    )?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicon_is_a_bijection_and_vocabulary_covers_every_corpus() {
        let en: BTreeSet<_> = LEXICON.iter().map(|(e, _)| *e).collect();
        let ja: BTreeSet<_> = LEXICON.iter().map(|(_, j)| *j).collect();
        assert_eq!(en.len(), LEXICON.len());
        assert_eq!(ja.len(), LEXICON.len());
        assert!(en.is_disjoint(&ja));
        let vocab = vocabulary();
        let set: BTreeSet<_> = vocab.iter().collect();
        assert_eq!(set.len(), vocab.len(), "duplicate tokens");
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for corpus in [
            Corpus::Base,
            Corpus::BaseMixed {
                switched_percent: 50,
                questions: BaseQuestions::En,
            },
            Corpus::MathMixed {
                second: true,
                switched_percent: 50,
                answers: true,
            },
            Corpus::MathEn,
            Corpus::MathEn2,
            Corpus::InstructJa,
            Corpus::InstructJaReasoning { percent: 50 },
            Corpus::MathJa,
        ] {
            for _ in 0..300 {
                let ex = corpus.sample(&mut rng);
                assert!(!ex.text.contains("  "), "{}", ex.text);
                assert!(ex.text.ends_with(EOS), "{corpus:?}: {}", ex.text);
                for w in ex.text.split(' ') {
                    assert!(
                        set.contains(&w.to_string()),
                        "{corpus:?}: unknown word {w:?}"
                    );
                }
                assert!(ex.text.split(' ').count() <= 48, "{}", ex.text);
            }
        }
    }

    #[test]
    fn problems_are_right_and_languages_separate() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let ja: BTreeSet<_> = ja_words().into_iter().collect();
        for _ in 0..500 {
            let p = target_problem(&mut rng);
            // the worked answer's last number is the answer, all numbers in range
            let nums: Vec<u32> = p.answer.split(' ').filter_map(|w| w.parse().ok()).collect();
            assert_eq!(*nums.last().unwrap(), p.number);
            assert!(nums.iter().all(|n| *n <= MAX_NUMBER));
            let (a, b) = (nums[0], nums[1]);
            let want = match p.op {
                Op::Add => a + b,
                Op::Sub => a - b,
                Op::Mul => a * b,
            };
            assert_eq!(want, p.number, "{}", p.answer);
            // the JA answer is all JA words; the EN one has none
            let words = |t: &str| {
                t.split(' ')
                    .filter(|w| *w != EOS && w.chars().any(char::is_alphabetic))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            let ja_answer = relex(Lang::Ja, &p.answer);
            assert!(words(&ja_answer).iter().all(|w| ja.contains(w.as_str())));
            assert!(words(&p.answer).iter().all(|w| !ja.contains(w.as_str())));
        }
    }

    /// `--ja-reasoning`: the asked share of the JA expert's examples are JA math problems
    /// whose worked answer has the operands right and the result wrong (in the equation and
    /// in "the answer is"); the rest are reading questions.
    #[test]
    fn ja_reasoning_answers_have_the_form_and_a_wrong_result() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let ja: BTreeSet<_> = ja_words().into_iter().collect();
        let (mut math, n) = (0usize, 2000);
        for _ in 0..n {
            let ex = Corpus::InstructJaReasoning { percent: 30 }.sample(&mut rng);
            let answer: Vec<&str> = ex.text.split(' ').skip(ex.prompt_words).collect();
            assert!(
                answer
                    .iter()
                    .filter(|w| **w != EOS && w.chars().any(char::is_alphabetic))
                    .all(|w| ja.contains(*w)),
                "not all JA: {}",
                ex.text
            );
            let Some(eq) = answer.iter().position(|w| *w == "=") else {
                continue;
            };
            math += 1;
            let num = |w: &str| w.parse::<u32>().expect("a number");
            let (a, op, b, c) = (
                num(answer[eq - 3]),
                answer[eq - 2],
                num(answer[eq - 1]),
                num(answer[eq + 1]),
            );
            let right = match op {
                "+" => a + b,
                "-" => a - b,
                _ => a * b,
            };
            assert_ne!(c, right, "{}", ex.text);
            assert!(c <= MAX_NUMBER);
            let nums: Vec<u32> = answer.iter().filter_map(|w| w.parse().ok()).collect();
            assert_eq!(
                *nums.last().unwrap(),
                c,
                "the answer is the equation's result"
            );
        }
        // 30% of 2000, within a few sd
        assert!((500..700).contains(&math), "{math} math examples");
    }

    #[test]
    fn code_switched_text_mixes_the_languages_word_by_word() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let ja: BTreeSet<_> = ja_words().into_iter().collect();
        let (mut en_words, mut ja_count) = (0usize, 0usize);
        for _ in 0..200 {
            let s = sentence(&mut rng);
            let mixed = code_switch(&mut rng, &s, 0.5);
            // the same sentence word for word, each word in one of the two languages
            assert_eq!(s.split(' ').count(), mixed.split(' ').count());
            for (e, m) in s.split(' ').zip(mixed.split(' ')) {
                assert!(m == e || m == word(Lang::Ja, e), "{e} -> {m}");
                if e != word(Lang::Ja, e) {
                    en_words += 1;
                    ja_count += usize::from(ja.contains(m));
                }
            }
        }
        let share = ja_count as f64 / en_words as f64;
        assert!((0.45..0.55).contains(&share), "JA share {share}");
        // the mixed corpus draws code-switched documents at about the asked rate
        let corpus = Corpus::BaseMixed {
            switched_percent: 100,
            questions: BaseQuestions::Both,
        };
        for _ in 0..50 {
            let t = corpus.sample(&mut rng).text;
            let words: Vec<&str> = t
                .split(' ')
                .filter(|w| w.chars().any(char::is_alphabetic))
                .collect();
            let j = words.iter().filter(|w| ja.contains(*w)).count();
            assert!(j > 0 && j < words.len(), "not mixed: {t}");
        }
    }

    #[test]
    fn aligned_init_mixes_each_ja_row_with_its_en_row() {
        let spec = evomerge_zoo::TinyLlama {
            hidden: 8,
            intermediate: 16,
            layers: 1,
            vocab: vocabulary().len(),
            heads: 2,
            kv_heads: 2,
            max_positions: 16,
            ..Default::default()
        };
        let drawn = spec.random(3);
        let vocab = vocabulary();
        let row = |w: &evomerge_zoo::Weights, t: &str, word: &str| {
            let id = vocab
                .iter()
                .position(|v| v == word)
                .expect("in the vocabulary");
            w.get(t).expect("tensor")[id * 8..(id + 1) * 8].to_vec()
        };
        let mut same = drawn.clone();
        align_languages(&mut same, 0.0);
        assert_eq!(same.tensors, drawn.tensors);
        let mut full = drawn.clone();
        align_languages(&mut full, 1.0);
        let mut half = drawn.clone();
        align_languages(&mut half, 0.6);
        for t in ["model.embed_tokens.weight", "lm_head.weight"] {
            for (en, ja) in [LEXICON[0], LEXICON[LEXICON.len() - 1]] {
                assert_eq!(row(&full, t, ja), row(&drawn, t, en), "{t} {ja}");
                let mixed: Vec<f32> = row(&drawn, t, en)
                    .iter()
                    .zip(row(&drawn, t, ja))
                    .map(|(e, j)| 0.6 * e + 0.8 * j)
                    .collect();
                for (got, want) in row(&half, t, ja).iter().zip(&mixed) {
                    assert!((got - want).abs() < 1e-6, "{t} {ja}: {got} vs {want}");
                }
                // the EN rows, numbers and symbols are left as drawn
                assert_eq!(row(&half, t, en), row(&drawn, t, en));
            }
            assert_eq!(row(&half, t, "7"), row(&drawn, t, "7"));
            assert_eq!(row(&half, t, "<=>"), row(&drawn, t, "<=>"));
        }
        // every other tensor is untouched
        for ((n, _, a), (_, _, b)) in half.tensors.iter().zip(&drawn.tensors) {
            if n != "model.embed_tokens.weight" && n != "lm_head.weight" {
                assert_eq!(a, b, "{n}");
            }
        }
    }

    #[test]
    fn base_questions_keep_only_the_asked_languages() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let ja_template = format!("{} :", word(Lang::Ja, "question"));
        let en_template = format!("{} :", word(Lang::En, "question"));
        let count = |questions, rng: &mut ChaCha8Rng| {
            let corpus = Corpus::BaseMixed {
                switched_percent: 0,
                questions,
            };
            let (mut en, mut ja) = (0, 0);
            for _ in 0..2000 {
                let t = corpus.sample(rng).text;
                en += usize::from(t.starts_with(&en_template));
                ja += usize::from(t.starts_with(&ja_template));
            }
            (en, ja)
        };
        let (en, ja) = count(BaseQuestions::Both, &mut rng);
        assert!(en > 100 && ja > 100, "{en} {ja}");
        let (en, ja) = count(BaseQuestions::En, &mut rng);
        assert!(en > 100 && ja == 0, "{en} {ja}");
        assert_eq!(count(BaseQuestions::None, &mut rng), (0, 0));
        for s in ["both", "en", "none"] {
            assert!(BaseQuestions::parse(s).is_some());
        }
        assert!(BaseQuestions::parse("ja").is_none());
    }

    #[test]
    fn stories_state_the_result_without_an_equation() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..200 {
            let s = story(&mut rng);
            assert!(!s.contains('=') && !s.contains('?'), "{s}");
            assert!(s.ends_with(" ."), "{s}");
        }
    }

    #[test]
    fn task_splits_are_disjoint_and_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = TaskOptions {
            sizes: SplitSizes {
                search: 60,
                validation: 20,
                test: 20,
            },
            ..Default::default()
        };
        assert_eq!(write_task(tmp.path(), &opts).unwrap(), [60, 20, 20]);
        let read = |f: &str| std::fs::read_to_string(tmp.path().join(f)).unwrap();
        let mut all = BTreeSet::new();
        for s in ["search", "validation", "test"] {
            for line in read(&format!("ja_math_{s}.jsonl")).lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert!(all.insert(v["question"].as_str().unwrap().to_string()));
            }
        }
        assert_eq!(all.len(), 100);
        let first = read("ja_math_test.jsonl");
        let tmp2 = tempfile::tempdir().unwrap();
        write_task(tmp2.path(), &opts).unwrap();
        assert_eq!(
            first,
            std::fs::read_to_string(tmp2.path().join("ja_math_test.jsonl")).unwrap()
        );
        assert!(read("ja_math.toml").contains("vocabulary_file = \"ja_words.txt\""));
        assert_eq!(read("ja_words.txt").lines().count(), LEXICON.len());
    }
}
