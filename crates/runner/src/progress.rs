//! Progress of a long phase (the search, validation, the test table, training): a bar with
//! ETA when stderr is a terminal, one plain line every 10% (or every 30 s) otherwise — never
//! a bar's control characters into a log file — and nothing when turned off (`--quiet`).

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A long phase's progress; see the module docs. Cheap to tick from any thread.
pub struct Progress {
    mode: Mode,
}

enum Mode {
    Hidden,
    Bar(ProgressBar),
    Lines(Mutex<Lines>),
}

struct Lines {
    label: String,
    unit: String,
    len: u64,
    pos: u64,
    msg: String,
    started: Instant,
    last_line: Instant,
    /// The next position (in tenths of `len`) that prints a line.
    next_tenth: u64,
    printed_at: Option<u64>,
}

/// Every terminal bar of the process, so bars of phases running at once (experts trained in
/// parallel) stack instead of overwriting each other.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// Print a line on stderr above any bar being drawn (plain `eprintln!` when none is).
pub fn eprint_line(line: &str) {
    bars().suspend(|| eprintln!("{line}"));
}

/// A line at least this often when the phase moves slowly between 10% steps.
const LINE_EVERY: Duration = Duration::from_secs(30);

impl Progress {
    /// Progress of `label` over `len` `unit`s (0: unknown length), shown when `show`.
    pub fn new(label: &str, unit: &str, len: u64, show: bool) -> Progress {
        let mode = if !show {
            Mode::Hidden
        } else if std::io::stderr().is_terminal() {
            let bar = if len > 0 {
                ProgressBar::new(len)
            } else {
                ProgressBar::new_spinner()
            };
            bar.set_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner}} {{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed}} ETA {{eta}} {{msg}}"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            Mode::Bar(bars().add(bar))
        } else {
            let now = Instant::now();
            Mode::Lines(Mutex::new(Lines {
                label: label.into(),
                unit: unit.into(),
                len,
                pos: 0,
                msg: String::new(),
                started: now,
                last_line: now,
                next_tenth: 1,
                printed_at: None,
            }))
        };
        Progress { mode }
    }

    /// Nothing shown.
    pub fn hidden() -> Progress {
        Progress { mode: Mode::Hidden }
    }

    /// Move to `pos` (a resumed phase starts where it stopped; no line for the jump).
    pub fn start_at(&self, pos: u64) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => b.set_position(pos),
            Mode::Lines(l) => {
                let mut l = l.lock().expect("progress");
                l.pos = pos;
                if let Some(t) = (pos * 10).checked_div(l.len) {
                    l.next_tenth = t + 1;
                }
            }
        }
    }

    /// Move to `pos`.
    pub fn set_position(&self, pos: u64) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => b.set_position(pos),
            Mode::Lines(l) => l.lock().expect("progress").moved_to(pos),
        }
    }

    /// One more unit done.
    pub fn inc(&self) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => b.inc(1),
            Mode::Lines(l) => {
                let mut l = l.lock().expect("progress");
                let p = l.pos + 1;
                l.moved_to(p);
            }
        }
    }

    /// Text after the counts (the best so far, a loss).
    pub fn set_message(&self, msg: String) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => b.set_message(msg),
            Mode::Lines(l) => l.lock().expect("progress").msg = msg,
        }
    }

    /// The phase is over: the bar is cleared; in lines mode the final count is printed unless
    /// the last line already showed it.
    pub fn finish(&self) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(b) => clear(b),
            Mode::Lines(l) => {
                let mut l = l.lock().expect("progress");
                if l.printed_at != Some(l.pos) && l.pos > 0 {
                    l.print();
                }
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Mode::Bar(b) = &self.mode {
            clear(b);
        }
    }
}

/// Take a finished bar off the terminal, so the next line starts on a clean one.
fn clear(b: &ProgressBar) {
    if !b.is_finished() {
        b.finish_and_clear();
        bars().remove(b);
        let _ = bars().clear();
    }
}

impl Lines {
    fn moved_to(&mut self, pos: u64) {
        self.pos = pos;
        let step = self.len > 0 && pos * 10 >= self.next_tenth * self.len;
        if step || self.last_line.elapsed() >= LINE_EVERY {
            if let Some(t) = (pos * 10).checked_div(self.len) {
                self.next_tenth = t + 1;
            }
            self.print();
        }
    }

    fn print(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut line = format!("{}: {}", self.label, self.pos);
        if self.len > 0 {
            line.push_str(&format!(
                "/{} {} ({:.0}%), {elapsed:.0}s",
                self.len,
                self.unit,
                100.0 * self.pos as f64 / self.len as f64
            ));
            if self.pos > 0 && self.pos < self.len {
                let eta = elapsed / self.pos as f64 * (self.len - self.pos) as f64;
                line.push_str(&format!(", ETA {eta:.0}s"));
            }
        } else {
            line.push_str(&format!(" {}, {elapsed:.0}s", self.unit));
        }
        if !self.msg.is_empty() {
            line.push_str(&format!(", {}", self.msg));
        }
        eprint_line(&line);
        self.last_line = Instant::now();
        self.printed_at = Some(self.pos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_step_every_tenth() {
        let mut l = Lines {
            label: "x".into(),
            unit: "u".into(),
            len: 20,
            pos: 0,
            msg: String::new(),
            started: Instant::now(),
            last_line: Instant::now(),
            next_tenth: 1,
            printed_at: None,
        };
        let mut printed = Vec::new();
        for p in 1..=20 {
            l.moved_to(p);
            if l.printed_at == Some(p) {
                printed.push(p);
            }
        }
        assert_eq!(printed, vec![2, 4, 6, 8, 10, 12, 14, 16, 18, 20]);
    }
}
