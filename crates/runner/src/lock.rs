//! One process per run folder: `RUN_DIR/run.lock`, held with flock(2) for as long as a `run`
//! or `resume` works on the folder. The OS releases it when the process ends, however it
//! ends (a kill -9 included), so a stale lock never blocks a resume.

use crate::RunError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock on a run folder; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// The lock file's name inside a run folder.
    pub const FILE: &'static str = "run.lock";

    /// Take the run folder's lock, or fail at once naming the process that holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, RunError> {
        let path = dir.join(Self::FILE);
        let io = |source: std::io::Error| RunError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // A lock that is busy for a moment only is a child of this process between fork and
        // exec (it shares the open file until exec closes it): try again for a short while.
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let rc = loop {
            // SAFETY: flock(2) on a file descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            let busy = rc != 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK);
            if !busy || std::time::Instant::now() >= patience {
                break rc;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another evomerge process".to_string()
                } else {
                    format!("evomerge process PID {holder}")
                };
                return Err(RunError::Locked(format!(
                    "{} is in use by {who} (it holds {}); wait for it to finish or stop it, then `evomerge resume {}`",
                    dir.display(),
                    path.display(),
                    dir.display()
                )));
            }
            return Err(io(err));
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(RunLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
