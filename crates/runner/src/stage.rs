//! One stage of a run, generation after generation: ask the optimizer, [dedupe](Stage::dedupe)
//! (decode; reuse what a stopped process logged; answer repeats from the cache),
//! [evaluate](Stage::evaluate) the rest through the [`Executor`] (each row logged as it
//! finishes), [tell](Stage::tell) the optimizer and keep the best, then
//! [log the generation](Stage::log_generation) and save the state.

use crate::RunError;
use crate::executor::{Batch, Executor, Finished, Job, Scorer, check_interrupt};
use crate::experiment::{Budget, Experiment, GenomeKind};
use crate::log::{
    CandidateColumns, CandidateLog, CandidateRow, CandidateTable, GenerationLog, GenerationRow,
    Logged, Params, Status,
};
use crate::progress::Progress;
use crate::setup::Setup;
use crate::space::{Decoded, Space};
use crate::state::{RunState, Scored, Snapshot, StageState, crash_point};
use evomerge_eval::{EvalRequest, Split};
use evomerge_merge::Recipe;
use evomerge_search::Optimizer;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Which search space a stage searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    /// Parameter space: merge weights and densities.
    Ps,
    /// Data-flow space: a layer path.
    Dfs,
}

impl StageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Ps => "ps",
            StageKind::Dfs => "dfs",
        }
    }

    /// The stages of a genome kind, in order.
    pub fn of(kind: GenomeKind) -> Vec<StageKind> {
        match kind {
            GenomeKind::Ps => vec![StageKind::Ps],
            GenomeKind::Dfs => vec![StageKind::Dfs],
            GenomeKind::PsDfs => vec![StageKind::Ps, StageKind::Dfs],
        }
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ps" => Ok(StageKind::Ps),
            "dfs" => Ok(StageKind::Dfs),
            other => Err(format!("unknown stage `{other}` (ps or dfs)")),
        }
    }
}

/// File names of a stage's logs: `candidates.csv` and `generations.csv`, and for the second
/// stage of a two-stage run `dfs_candidates.csv` and `dfs_generations.csv`.
pub fn stage_files(kinds: &[StageKind], stage: usize) -> (String, String) {
    if stage == 0 || kinds.len() == 1 {
        ("candidates.csv".into(), "generations.csv".into())
    } else {
        (
            format!("{}_candidates.csv", kinds[stage]),
            format!("{}_generations.csv", kinds[stage]),
        )
    }
}

/// A stage of a run, with everything its generations need.
pub(crate) struct Stage<'a> {
    pub exp: &'a Experiment,
    pub setup: &'a Setup,
    pub space: &'a Space,
    pub executor: &'a dyn Executor,
    pub kind: StageKind,
    pub index: usize,
    pub run_dir: &'a Path,
    pub cand_path: PathBuf,
    pub gen_path: PathBuf,
    pub state_path: &'a Path,
    /// When this process started (the run's wall time adds earlier processes').
    pub started: Instant,
    pub progress: bool,
    /// State writes so far (the crash test hook counts them).
    pub writes: &'a AtomicU64,
}

/// The outcome of one candidate of a generation.
struct Outcome {
    status: Status,
    scored: Scored,
    merge_ms: f64,
    eval_ms: f64,
    /// Logged by an earlier process of the run (not logged again).
    reused: bool,
}

impl Outcome {
    fn known(status: Status, scored: Scored) -> Outcome {
        Outcome {
            status,
            scored,
            merge_ms: 0.0,
            eval_ms: 0.0,
            reused: false,
        }
    }
}

impl From<Finished> for Outcome {
    fn from(f: Finished) -> Outcome {
        Outcome {
            status: f.status,
            scored: f.scored,
            merge_ms: f.merge_ms,
            eval_ms: f.eval_ms,
            reused: false,
        }
    }
}

/// A generation's candidates after the dedupe step.
struct Generation {
    number: u64,
    xs: Vec<Vec<f64>>,
    /// Cut at the evaluation budget: the optimizer is not told.
    partial: bool,
    decoded: Vec<Option<Decoded>>,
    keys: Vec<String>,
    outcomes: Vec<Option<Outcome>>,
    /// Candidates to evaluate (the first of each key that is neither cached nor logged).
    to_eval: Vec<usize>,
    /// Later candidates with the key of an earlier one of this generation -> that one.
    dup_of: BTreeMap<usize, usize>,
}

/// What the tell step learnt about a generation.
struct Told {
    /// The generation's valid fitnesses, sorted.
    valid: Vec<f64>,
    failed: usize,
}

/// A generation's device use from the executor's busy times before and after its evaluation
/// step: the mean utilization over devices (busy / `wall`) and each device's busy seconds.
fn device_use(
    before: Option<Vec<(String, Duration)>>,
    after: Option<Vec<(String, Duration)>>,
    wall: Duration,
) -> Option<(f64, Vec<(String, f64)>)> {
    let (before, after) = (before?, after?);
    let busy: Vec<(String, f64)> = before
        .iter()
        .zip(&after)
        .map(|((name, b), (_, a))| (name.clone(), a.saturating_sub(*b).as_secs_f64()))
        .collect();
    let util = if wall.is_zero() || busy.is_empty() {
        0.0
    } else {
        busy.iter().map(|(_, b)| b).sum::<f64>() / busy.len() as f64 / wall.as_secs_f64()
    };
    Some((util, busy))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl Stage<'_> {
    fn budget(&self) -> &Budget {
        self.exp.budget_for(self.index)
    }

    fn elapsed(&self, state: &RunState) -> f64 {
        state.elapsed_s + self.started.elapsed().as_secs_f64()
    }

    fn budget_left(&self, st: &StageState, state: &RunState) -> bool {
        let budget = self.budget();
        if budget.evaluations.is_some_and(|e| st.evaluations >= e) {
            return false;
        }
        if budget.generations.is_some_and(|g| st.generations >= g) {
            return false;
        }
        if budget
            .wall_seconds
            .is_some_and(|w| self.elapsed(state) >= w)
        {
            return false;
        }
        st.optimizer.should_stop().is_none()
    }

    fn columns(&self) -> CandidateColumns {
        let genes = match self.space {
            Space::Ps(s) => s.genome.genes().iter().map(|g| g.name.clone()).collect(),
            Space::Dfs(_) => Vec::new(),
        };
        CandidateColumns::new(self.kind, genes, self.space.dim())
    }

    fn scorer(&self) -> Scorer<'_> {
        Scorer {
            space: self.space,
            evaluators: &self.setup.evaluators,
        }
    }

    /// Run the stage's generations until its budget is spent, then validate its best.
    pub(crate) fn run(&self, state: &mut RunState) -> Result<(), RunError> {
        let mut log = CandidateLog::open(&self.cand_path, self.columns())?;
        let mut glog = GenerationLog::open_with_devices(
            &self.gen_path,
            self.executor.device_busy().is_some(),
        )?;
        let mut prior = self.prior_rows()?;
        let bar = Progress::new(
            &format!("{} stage", self.kind),
            "candidates",
            self.budget().evaluations.unwrap_or(0),
            self.progress,
        );
        bar.start_at(state.stages[self.index].evaluations);
        // The previous generation's state.json write, counted in the next row's overhead.
        let mut last_save_ms = 0.0;
        while self.budget_left(&state.stages[self.index], state) {
            check_interrupt()?;
            let t_gen = Instant::now();
            let st = &mut state.stages[self.index];
            let mut generation = self.dedupe(st, &mut prior);
            // Log what is already known (cache hits and decode failures) first.
            for (i, o) in generation.outcomes.iter().enumerate() {
                if let Some(o) = o.as_ref().filter(|o| !o.reused) {
                    self.log_row(&mut log, &generation, i, o)?;
                }
            }
            let busy_before = self.executor.device_busy();
            let t_pipe = Instant::now();
            self.evaluate(&mut generation, st, &mut log, &bar)?;
            let devices = device_use(busy_before, self.executor.device_busy(), t_pipe.elapsed());
            let mut pipeline_ms = t_pipe.elapsed().as_secs_f64() * 1e3;
            let told = self.tell(&generation, st)?;
            let validation = if self.exp.validation.every > 0
                && st.generations.is_multiple_of(self.exp.validation.every)
            {
                let t_val = Instant::now();
                bar.set_message(format!(
                    "validating the best of generation {}",
                    generation.number
                ));
                let v = self.validate(st)?;
                pipeline_ms += t_val.elapsed().as_secs_f64() * 1e3;
                v
            } else {
                None
            };
            // Everything but merging and scoring: ask/tell, decoding, the cache, CSV rows,
            // statistics, and the previous generation's state write.
            let overhead_ms = t_gen.elapsed().as_secs_f64() * 1e3 - pipeline_ms + last_save_ms;
            self.log_generation(
                &mut glog,
                state,
                &generation,
                &told,
                validation,
                pipeline_ms,
                overhead_ms,
                devices,
                &bar,
            )?;
            let t_save = Instant::now();
            self.save(state)?;
            last_save_ms = t_save.elapsed().as_secs_f64() * 1e3;
        }
        // The stage ends with its best validated (when validation is on).
        let st = &mut state.stages[self.index];
        if self.exp.validation.every > 0 {
            bar.set_message("validating the stage's best".into());
            self.validate(st)?;
        }
        st.done = true;
        bar.finish();
        drop(bar);
        self.save(state)?;
        let st = &state.stages[self.index];
        if let Some(line) = stage_summary(
            self.kind,
            st.generations,
            st.evaluations,
            st.best.as_ref(),
            st.chosen(),
        ) && self.progress
        {
            eprintln!("{line}");
        }
        Ok(())
    }

    /// What earlier processes of the run logged, by (generation, index): the rows of the
    /// generation that was running when a process died are reused, not evaluated again.
    /// When a candidate has several rows the last sound one wins.
    fn prior_rows(&self) -> Result<HashMap<(u64, usize), Logged>, RunError> {
        let mut out: HashMap<(u64, usize), Logged> = HashMap::new();
        let Some(table) = CandidateTable::read(&self.cand_path)? else {
            return Ok(out);
        };
        for row in table.rows {
            match out.get(&row.place()) {
                Some(old) if old.row.is_ok() && row.row.is_err() => {}
                _ => {
                    out.insert(row.place(), row);
                }
            }
        }
        Ok(out)
    }

    /// Ask for a generation (cut at the evaluation budget), decode it, and find what needs no
    /// evaluation: rows an earlier process logged, cache hits, repeats within the generation.
    fn dedupe(&self, st: &mut StageState, prior: &mut HashMap<(u64, usize), Logged>) -> Generation {
        let g = st.generations;
        let mut xs = st.optimizer.ask();
        // The last generation stops at the evaluation budget: only its first candidates are
        // scored. The optimizer is not told a partial generation (its update assumes a whole
        // sample); the stage ends with it.
        let left = self
            .budget()
            .evaluations
            .map(|b| b.saturating_sub(st.evaluations) as usize);
        let partial = left.is_some_and(|n| n < xs.len());
        if let Some(n) = left.filter(|_| partial) {
            xs.truncate(n);
        }
        let n = xs.len();
        let mut this = Generation {
            number: g,
            partial,
            decoded: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            outcomes: (0..n).map(|_| None).collect(),
            to_eval: Vec::new(),
            dup_of: BTreeMap::new(),
            xs: Vec::new(),
        };
        let mut first_of_key: BTreeMap<String, usize> = BTreeMap::new();
        for (i, x) in xs.iter().enumerate() {
            let (d, key) = match self.space.decode(x) {
                Ok(d) => {
                    let k = d.key();
                    (Some(d), k)
                }
                Err(e) => {
                    this.outcomes[i] = Some(Outcome::known(
                        Status::Failed,
                        Scored {
                            fitness: None,
                            metrics: BTreeMap::new(),
                            error: Some(e.to_string()),
                        },
                    ));
                    (None, String::new())
                }
            };
            this.decoded.push(d);
            this.keys.push(key.clone());
            let logged = prior.remove(&(g, i)).and_then(|l| match l.row {
                Ok(row) => Some(row),
                Err(d) => {
                    eprintln!(
                        "warning: {} line {}: {}; the row is damaged and ignored, candidate {i} of generation {g} is evaluated again",
                        self.cand_path.display(),
                        l.line,
                        d.why
                    );
                    None
                }
            });
            if let Some(row) = logged {
                // Logged before the process stopped: reuse, do not evaluate or log again.
                let scored = Scored {
                    fitness: row.fitness,
                    metrics: row.metrics,
                    error: row.error,
                };
                if row.status != Status::Cached {
                    st.cache.insert(key.clone(), scored.clone());
                }
                this.outcomes[i] = Some(Outcome {
                    reused: true,
                    ..Outcome::known(row.status, scored)
                });
                continue;
            }
            if this.outcomes[i].is_some() {
                continue;
            }
            if let Some(hit) = st.cache.get(&key) {
                this.outcomes[i] = Some(Outcome::known(Status::Cached, hit.clone()));
                continue;
            }
            if let Some(&first) = first_of_key.get(&key) {
                this.dup_of.insert(i, first);
                continue;
            }
            first_of_key.insert(key.clone(), i);
            this.to_eval.push(i);
        }
        this.xs = xs;
        this
    }

    /// Evaluate what the dedupe step left through the executor, logging each row as it
    /// finishes; then answer the generation's repeats from their first candidate.
    fn evaluate(
        &self,
        this: &mut Generation,
        st: &mut StageState,
        log: &mut CandidateLog,
        bar: &Progress,
    ) -> Result<(), RunError> {
        let request = EvalRequest::new(Split::Search, this.number, self.exp.seed);
        let batch = Batch {
            run_dir: self.run_dir,
            stage: self.kind,
            generation: this.number,
            request: &request,
            jobs: this
                .to_eval
                .iter()
                .map(|&i| Job {
                    index: i,
                    decoded: this.decoded[i].as_ref().expect("decoded"),
                    key: &this.keys[i],
                    label: format!("{} gen {} #{i}", self.kind, this.number),
                })
                .collect(),
        };
        let mut finished: Vec<Finished> = Vec::with_capacity(batch.jobs.len());
        self.executor
            .evaluate(&batch, &self.scorer(), &mut |f: Finished| {
                let o = Outcome::from(f.clone());
                self.log_row(log, this, f.index, &o)?;
                finished.push(f);
                bar.inc();
                Ok(())
            })?;
        drop(batch);
        for f in finished {
            if f.scored.fitness.is_some() || f.scored.error.is_some() {
                st.cache
                    .insert(this.keys[f.index].clone(), f.scored.clone());
            }
            let i = f.index;
            this.outcomes[i] = Some(Outcome::from(f));
        }
        let dups = std::mem::take(&mut this.dup_of);
        for (i, first) in dups {
            let scored = this.outcomes[first]
                .as_ref()
                .expect("evaluated")
                .scored
                .clone();
            let o = Outcome::known(Status::Cached, scored);
            self.log_row(log, this, i, &o)?;
            this.outcomes[i] = Some(o);
        }
        Ok(())
    }

    /// Tell the optimizer (minimising -fitness; not for a partial generation) and keep the
    /// best so far.
    fn tell(&self, this: &Generation, st: &mut StageState) -> Result<Told, RunError> {
        let outcomes: Vec<&Outcome> = this
            .outcomes
            .iter()
            .map(|o| o.as_ref().expect("every candidate has an outcome"))
            .collect();
        let told: Vec<Option<f64>> = outcomes
            .iter()
            .map(|o| o.scored.fitness.map(|f| -f))
            .collect();
        if !this.partial {
            st.optimizer.tell(&told)?;
        }
        for (i, o) in outcomes.iter().enumerate() {
            if let (Some(f), Some(d)) = (o.scored.fitness, this.decoded[i].as_ref())
                && f.is_finite()
                && st.best.as_ref().is_none_or(|b| f > b.search_fitness)
            {
                st.best = Some(Snapshot {
                    generation: this.number,
                    index: i,
                    x: this.xs[i].clone(),
                    key: this.keys[i].clone(),
                    decoded: d.canonical(),
                    search_fitness: f,
                    validation_fitness: None,
                });
            }
        }
        st.generations += 1;
        st.evaluations += outcomes.len() as u64;
        let mut valid: Vec<f64> = outcomes.iter().filter_map(|o| o.scored.fitness).collect();
        valid.sort_by(f64::total_cmp);
        let failed = outcomes.len() - valid.len();
        Ok(Told { valid, failed })
    }

    /// Write the generation's row and show where the stage stands.
    #[allow(clippy::too_many_arguments)]
    fn log_generation(
        &self,
        glog: &mut GenerationLog,
        state: &RunState,
        this: &Generation,
        told: &Told,
        validation: Option<f64>,
        pipeline_ms: f64,
        overhead_ms: f64,
        devices: Option<(f64, Vec<(String, f64)>)>,
        bar: &Progress,
    ) -> Result<(), RunError> {
        let st = &state.stages[self.index];
        let valid = &told.valid;
        let some = |f: &dyn Fn() -> f64| (!valid.is_empty()).then(f);
        glog.write(&GenerationRow {
            stage: self.kind,
            generation: this.number,
            evaluations: st.evaluations,
            best: st.best.as_ref().map(|b| b.search_fitness),
            gen_best: valid.last().copied(),
            mean: some(&|| valid.iter().sum::<f64>() / valid.len() as f64),
            q25: some(&|| quantile(valid, 0.25)),
            median: some(&|| quantile(valid, 0.5)),
            q75: some(&|| quantile(valid, 0.75)),
            sigma: st.optimizer.sigma(),
            failed: told.failed,
            elapsed_s: self.elapsed(state),
            validation,
            pipeline_ms: Some(pipeline_ms),
            overhead_ms: Some(overhead_ms),
            device_util: devices.as_ref().map(|d| d.0),
            device_busy_s: devices.map(|d| d.1).unwrap_or_default(),
        })?;
        bar.set_message(format!(
            "gen {} best {}{}",
            st.generations,
            st.best
                .as_ref()
                .map(|b| format!("{:.4}", b.search_fitness))
                .unwrap_or_else(|| "-".into()),
            st.chosen()
                .and_then(|c| c.validation_fitness)
                .map(|v| format!(" val {v:.4}"))
                .unwrap_or_default()
        ));
        bar.set_position(st.evaluations);
        Ok(())
    }

    fn save(&self, state: &mut RunState) -> Result<(), RunError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let mut snapshot = state.clone();
        snapshot.elapsed_s = self.elapsed(state);
        snapshot.save(self.state_path, n)
    }

    /// Score the best-so-far on the validation split unless it already was.
    fn validate(&self, st: &mut StageState) -> Result<Option<f64>, RunError> {
        let Some(best) = st.best.clone() else {
            return Ok(None);
        };
        if st.validated.iter().any(|v| v.key == best.key) {
            return Ok(None);
        }
        let decoded = match self.space {
            Space::Ps(_) => Decoded::Recipe(Box::new(Recipe::from_toml(&best.decoded)?)),
            Space::Dfs(_) => Decoded::Path(serde_json::from_str(&best.decoded)?),
        };
        let request = EvalRequest::new(Split::Validation, 0, self.exp.seed);
        let f = self.scorer().run(
            best.index,
            &decoded,
            &format!("{} validation gen {}", self.kind, best.generation),
            &request,
        )?;
        let mut snap = best;
        snap.validation_fitness = f.scored.fitness;
        let v = f.scored.fitness;
        st.validated.push(snap);
        Ok(v)
    }

    fn log_row(
        &self,
        log: &mut CandidateLog,
        this: &Generation,
        i: usize,
        o: &Outcome,
    ) -> Result<(), RunError> {
        let status = if o.scored.fitness.is_none() && o.status == Status::Ok {
            Status::Failed
        } else {
            o.status
        };
        let x = &this.xs[i];
        let params = match this.decoded[i].as_ref() {
            Some(d) => self.space.params(x, d),
            None => Params::None,
        };
        log.write(&CandidateRow {
            stage: self.kind,
            generation: this.number,
            index: i,
            status,
            fitness: o.scored.fitness,
            metrics: o.scored.metrics.clone(),
            merge_ms: o.merge_ms,
            eval_ms: o.eval_ms,
            key: this.keys[i].clone(),
            error: o.scored.error.clone(),
            params,
            x: if log.columns().dims() > 0 {
                x.clone()
            } else {
                Vec::new()
            },
        })?;
        ROWS.with(|r| {
            let c = r.get() + 1;
            r.set(c);
            crash_point("after-row", c);
        });
        Ok(())
    }
}

thread_local! {
    static ROWS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The line a finished stage prints: the best on the search split (the `best` column of
/// generations.csv) and, when validation chose another candidate, which one it chose.
fn stage_summary(
    kind: StageKind,
    generations: u64,
    evaluations: u64,
    best: Option<&Snapshot>,
    chosen: Option<&Snapshot>,
) -> Option<String> {
    let best = best?;
    let mut line = format!(
        "{kind} stage done: {generations} generations, {evaluations} candidates; best search fitness {:.4} (generation {} #{})",
        best.search_fitness, best.generation, best.index
    );
    if let Some(c) = chosen.filter(|c| c.validation_fitness.is_some()) {
        let v = c.validation_fitness.unwrap_or(f64::NAN);
        if c.key == best.key {
            line.push_str(&format!(", validation {v:.4}; it is the result"));
        } else {
            line.push_str(&format!(
                "; result chosen by validation: generation {} #{} with validation {v:.4}, search fitness {:.4}",
                c.generation, c.index, c.search_fitness
            ));
        }
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(generation: u64, index: usize, key: &str, search: f64, val: Option<f64>) -> Snapshot {
        Snapshot {
            generation,
            index,
            x: vec![0.0],
            key: key.into(),
            decoded: String::new(),
            search_fitness: search,
            validation_fitness: val,
        }
    }

    #[test]
    fn the_stage_line_labels_the_search_best_and_the_validation_choice() {
        let best = snap(2, 5, "b", 0.9, Some(0.7));
        let chosen = snap(1, 3, "c", 0.85, Some(0.8));
        let line = stage_summary(StageKind::Ps, 3, 24, Some(&best), Some(&chosen)).unwrap();
        assert!(
            line.contains("best search fitness 0.9000 (generation 2 #5)")
                && line.contains(
                    "result chosen by validation: generation 1 #3 with validation 0.8000, search fitness 0.8500"
                ),
            "{line}"
        );
        let line = stage_summary(StageKind::Ps, 3, 24, Some(&best), Some(&best)).unwrap();
        assert!(
            line.contains("best search fitness 0.9000") && line.contains("it is the result"),
            "{line}"
        );
        let line = stage_summary(StageKind::Dfs, 1, 8, Some(&best), Some(&best.clone())).unwrap();
        assert!(!line.contains("chosen by validation"), "{line}");
    }

    #[test]
    fn stage_kinds_read_and_write_as_before() {
        for k in [StageKind::Ps, StageKind::Dfs] {
            assert_eq!(k.as_str().parse::<StageKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!(
            stage_files(&StageKind::of(GenomeKind::PsDfs), 1).0,
            "dfs_candidates.csv"
        );
        assert_eq!(
            stage_files(&StageKind::of(GenomeKind::Dfs), 0).1,
            "generations.csv"
        );
    }
}
