//! The executor that spreads a search over a Slurm cluster (`[execution] kind = "slurm"`).
//!
//! Each generation's candidates go to one job array ([`evomerge_exec::SlurmExecutor`]): the
//! decoded recipe or layer path of each is written as a task file in
//! `RUN_DIR/exec/{stage}-g{generation}/`, every array task runs `evomerge worker TASK_FILE` on
//! its node ([`crate::worker`]), and the runner collects the score files. The run folder must
//! be on storage the nodes share. Validation and the final test table are scored in the
//! runner's process.

use crate::RunError;
use crate::executor::{Batch, Executor, Finished, Scorer};
use crate::log::Status;
use crate::state::Scored;
use evomerge_exec::{ExecError, SlurmExecutor, TaskFile, task};

/// Candidates scored by Slurm array tasks.
pub struct SlurmArrays {
    slurm: SlurmExecutor,
}

impl SlurmArrays {
    pub fn new(slurm: SlurmExecutor) -> SlurmArrays {
        SlurmArrays { slurm }
    }
}

fn exec_error(e: ExecError) -> RunError {
    match e {
        ExecError::Interrupted(signal) => {
            RunError::Eval(evomerge_eval::EvalError::Interrupted(signal))
        }
        ExecError::Config(m) => RunError::Config(m),
        e => RunError::Config(format!("slurm executor: {e}")),
    }
}

impl Executor for SlurmArrays {
    fn name(&self) -> &str {
        "slurm"
    }

    fn evaluate(
        &self,
        batch: &Batch<'_>,
        _scorer: &Scorer<'_>,
        done: &mut dyn FnMut(Finished) -> Result<(), RunError>,
    ) -> Result<(), RunError> {
        let run_dir = std::path::absolute(batch.run_dir).unwrap_or(batch.run_dir.to_path_buf());
        let kind = batch.stage.as_str();
        let dir = task::generation_dir(&run_dir, kind, batch.generation);
        let tasks: Vec<TaskFile> = batch
            .jobs
            .iter()
            .map(|j| TaskFile {
                run_dir: run_dir.clone(),
                kind: kind.to_string(),
                generation: batch.generation,
                index: j.index,
                split: batch.request.split.as_str().to_string(),
                seed: batch.request.seed,
                key: j.key.to_string(),
                label: j.label.clone(),
                candidate: j.decoded.canonical(),
            })
            .collect();
        let mut first_err = None;
        let stats = self
            .slurm
            .run(
                &dir,
                &tasks,
                &evomerge_eval::interrupt::requested,
                |t, s, _report| {
                    let failed = s.fitness.is_none();
                    let f = Finished {
                        index: t.index,
                        status: if failed { Status::Failed } else { Status::Ok },
                        scored: Scored {
                            fitness: s.fitness,
                            metrics: s.metrics,
                            error: s.error,
                        },
                        merge_ms: s.merge_ms,
                        eval_ms: s.eval_ms,
                    };
                    if first_err.is_none()
                        && let Err(e) = done(f)
                    {
                        first_err = Some(e);
                    }
                },
            )
            .map_err(exec_error)?;
        if stats.reattached_tasks > 0 || stats.collected > 0 {
            // What an earlier, stopped process of the run left (said also with --quiet, like
            // the removal of stale folders: it explains why fewer tasks were submitted).
            crate::progress::eprint_line(&format!(
                "{kind} generation {}: re-attached to {} task(s) still queued or running and collected {} score(s) already written, in {}",
                batch.generation,
                stats.reattached_tasks,
                stats.collected,
                dir.display()
            ));
        }
        first_err.map_or(Ok(()), Err)
    }
}
