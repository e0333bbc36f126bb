//! Writing a file a user keeps so that a crash leaves either the old file or the new one, never
//! a torn one: write a temporary sibling, fsync it, rename it over the file, fsync the folder.
//!
//! Every such file in evomerge (run.toml, state.json, best.*, results.*, plots, optimizer
//! states, generated data) goes through [`write_atomic`] or, for a file some library writes by
//! path (a PNG encoder), [`temp_path`] + [`commit`]. The temporary name is always
//! [`temp_path`]'s: `.NAME.PID.tmp.EXT` in the same folder (hidden; the process id keeps two
//! processes writing the same file, e.g. a Slurm task and its resubmission, apart; and it keeps
//! the extension, which encoders pick the format by).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary sibling a file is written to before it is renamed into place:
/// `dir/.state.PID.tmp.json` for `dir/state.json`, `dir/.NAME.PID.tmp` for a name without
/// extension (PID: this process's id).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let pid = std::process::id();
    let temp = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!(".{stem}.{pid}.tmp.{ext}"),
        _ => format!(".{name}.{pid}.tmp"),
    };
    path.with_file_name(temp)
}

/// An I/O error with the file it happened to.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct AtomicWriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> AtomicWriteError + '_ {
    move |source| AtomicWriteError {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `bytes` to `path` atomically (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    write_atomic_then(path, bytes, || {})
}

/// As [`write_atomic`], calling `before_rename` once the temporary file is written and synced
/// (a test hook: a crash there must leave the previous file).
pub fn write_atomic_then(
    path: &Path,
    bytes: &[u8],
    before_rename: impl FnOnce(),
) -> Result<(), AtomicWriteError> {
    let tmp = temp_path(path);
    {
        let mut f = File::create(&tmp).map_err(at(&tmp))?;
        f.write_all(bytes).map_err(at(&tmp))?;
        f.sync_all().map_err(at(&tmp))?;
    }
    before_rename();
    rename_and_sync(&tmp, path)
}

/// Move a finished temporary file (written by path, e.g. by an encoder, to [`temp_path`]) into
/// place: fsync it, rename it, fsync the folder.
pub fn commit(tmp: &Path, path: &Path) -> Result<(), AtomicWriteError> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(at(tmp))?;
    rename_and_sync(tmp, path)
}

fn rename_and_sync(tmp: &Path, path: &Path) -> Result<(), AtomicWriteError> {
    std::fs::rename(tmp, path).map_err(at(path))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Makes the rename itself durable; not every platform can open a folder: best effort.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_hidden_siblings_that_keep_the_extension() {
        let pid = std::process::id();
        let t = |p: &str| temp_path(Path::new(p)).display().to_string();
        assert_eq!(t("/r/state.json"), format!("/r/.state.{pid}.tmp.json"));
        assert_eq!(t("p/fitness.png"), format!("p/.fitness.{pid}.tmp.png"));
        assert_eq!(t("LOCK"), format!(".LOCK.{pid}.tmp"));
        assert_eq!(t("d/.hidden"), format!("d/..hidden.{pid}.tmp"));
    }

    #[test]
    fn writes_replace_the_file_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("best.toml");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!temp_path(&path).exists());
        let mut seen = false;
        write_atomic_then(&path, b"three", || {
            // Before the rename the old content is still in place.
            seen = std::fs::read(&path).unwrap() == b"two" && temp_path(&path).exists();
        })
        .unwrap();
        assert!(seen);
        let err = write_atomic(&dir.path().join("no/such/file"), b"x").unwrap_err();
        assert!(err.to_string().contains("no/such/.file."), "{err}");
    }
}
