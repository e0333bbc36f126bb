//! Writing a checkpoint: shards planned up front, tensors written in any order at their offsets,
//! the folder renamed into place only when complete.

use crate::read::read_json;
use crate::{CheckpointError, Dtype, Result, TOKENIZER_FILES, special_tokens};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// One tensor of the output: its name, storage dtype and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl OutputTensor {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: Vec<usize>) -> Self {
        OutputTensor {
            name: name.into(),
            dtype,
            shape,
        }
    }

    fn nbytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// How to write.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Largest shard in bytes of tensor data (a single larger tensor gets a shard of its own).
    /// Default 5 GB, like mergekit's `--out-shard-size 5B`.
    pub max_shard_bytes: u64,
    /// Replace an existing output folder instead of refusing.
    pub force: bool,
    /// Write the 4 KiB-aligned body of each large tensor with `O_DIRECT` (Linux), bypassing the
    /// page cache: a buffered write allocates a page-cache page per 4 KiB and the final fsync
    /// writes them back, which on a VM costs more CPU than the merge itself (1 GiB: 2.3 s of
    /// system time buffered + fsync, 0.2 s direct). Falls back to buffered writes where the
    /// filesystem refuses `O_DIRECT` (tmpfs, some network filesystems).
    pub direct_io: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_shard_bytes: 5_000_000_000,
            force: false,
            direct_io: true,
        }
    }
}

/// Alignment of `O_DIRECT` offsets, lengths and buffers (the largest common logical block).
const DIRECT_ALIGN: usize = 4096;
/// Bytes copied into the aligned buffer and written per `O_DIRECT` call.
const DIRECT_CHUNK: usize = 4 << 20;
/// Tensors smaller than this are written buffered (their pages are few).
const DIRECT_MIN: usize = 256 << 10;

thread_local! {
    /// Each writing thread's aligned bounce buffer for `O_DIRECT` writes (allocated on first use).
    static DIRECT_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Open `path` again for `O_DIRECT` writes; `None` where the OS or filesystem has none.
fn open_direct(path: &Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

struct Slot {
    shard: usize,
    offset: u64,
    dtype: Dtype,
    numel: usize,
    written: AtomicBool,
}

struct ShardFile {
    file_name: String,
    file: File,
    /// The same file opened with `O_DIRECT`, when direct writes are on and possible.
    direct: Option<File>,
}

/// Writes a checkpoint folder. Every shard's header is written when the writer is created (the
/// plan fixes every tensor's offset), so tensors can then be written from several threads in any
/// order and memory holds only the tensors being written. Everything goes into a hidden temporary
/// folder next to the destination; [`CheckpointWriter::finish`] renames it into place, and dropping
/// an unfinished writer deletes it.
pub struct CheckpointWriter {
    final_dir: PathBuf,
    tmp_dir: PathBuf,
    force: bool,
    shards: Vec<ShardFile>,
    slots: HashMap<String, Slot>,
    order: Vec<String>,
    total_bytes: u64,
    finished: bool,
    /// Cleared when a direct write is refused: the rest is written buffered.
    direct_ok: AtomicBool,
}

impl std::fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("final_dir", &self.final_dir)
            .field("shards", &self.shards.len())
            .field("tensors", &self.order.len())
            .finish()
    }
}

/// Assign tensors to shards in plan order: a new shard starts when the next tensor would push
/// the current one over the limit (mergekit's rule). Returns the shard index of each tensor.
fn assign_shards(plan: &[OutputTensor], max_bytes: u64) -> (Vec<usize>, usize) {
    let mut shard_of = Vec::with_capacity(plan.len());
    let mut shard = 0;
    let mut size = 0u64;
    for t in plan {
        let n = t.nbytes();
        if size > 0 && size + n > max_bytes {
            shard += 1;
            size = 0;
        }
        size += n;
        shard_of.push(shard);
    }
    (shard_of, if plan.is_empty() { 1 } else { shard + 1 })
}

fn shard_file_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
    }
}

/// Removes `.{base}.partial-{pid}` folders left by writers that were killed (`kill -9`, a power
/// cut) before they could clean up: those whose process no longer exists.
fn remove_stale_partials(parent: &Path, base: &str) {
    let prefix = format!(".{base}.partial-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether process `pid` still runs: on Linux, it has a `/proc` entry that is not a zombie (a
/// writer killed with `kill -9` stays a zombie until its parent reaps it, and a zombie writes
/// nothing more).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
            // "pid (comm) S ...": the state follows the last ')' (comm may hold parentheses)
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z' | 'X')
            ),
            Err(_) => false,
        }
    } else {
        true // unknown: keep the folder
    }
}

impl CheckpointWriter {
    /// Plan the shards and write their headers. Fails if `dir` exists and `options.force` is off.
    pub fn create(
        dir: impl AsRef<Path>,
        plan: Vec<OutputTensor>,
        options: WriterOptions,
    ) -> Result<CheckpointWriter> {
        let final_dir = dir.as_ref().to_path_buf();
        if final_dir.exists() && !options.force {
            return Err(CheckpointError::OutputExists(final_dir));
        }
        let parent = match final_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| CheckpointError::io(&parent, e))?;
        let base = final_dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        remove_stale_partials(&parent, &base);
        let tmp_dir = parent.join(format!(".{base}.partial-{}", std::process::id()));
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir).map_err(|e| CheckpointError::io(&tmp_dir, e))?;
        }
        std::fs::create_dir(&tmp_dir).map_err(|e| CheckpointError::io(&tmp_dir, e))?;

        let mut writer = CheckpointWriter {
            final_dir,
            tmp_dir,
            force: options.force,
            shards: Vec::new(),
            slots: HashMap::new(),
            order: Vec::new(),
            total_bytes: 0,
            finished: false,
            direct_ok: AtomicBool::new(options.direct_io),
        };
        // From here on, an error drops `writer`, which removes the temporary folder.
        writer.plan(plan, options.max_shard_bytes)?;
        Ok(writer)
    }

    fn plan(&mut self, plan: Vec<OutputTensor>, max_bytes: u64) -> Result<()> {
        let (shard_of, n_shards) = assign_shards(&plan, max_bytes);
        let mut headers: Vec<Map<String, Value>> = vec![Map::new(); n_shards];
        let mut sizes = vec![0u64; n_shards];
        for h in headers.iter_mut() {
            h.insert("__metadata__".into(), json!({"format": "pt"}));
        }
        let mut offsets = Vec::with_capacity(plan.len());
        for (t, &s) in plan.iter().zip(&shard_of) {
            let start = sizes[s];
            let end = start + t.nbytes();
            sizes[s] = end;
            headers[s].insert(
                t.name.clone(),
                json!({"dtype": t.dtype.safetensors_name(), "shape": t.shape, "data_offsets": [start, end]}),
            );
            offsets.push(start);
        }
        let mut header_lens = Vec::with_capacity(n_shards);
        for (i, header) in headers.into_iter().enumerate() {
            let file_name = shard_file_name(i, n_shards);
            let path = self.tmp_dir.join(&file_name);
            let mut text = serde_json::to_vec(&Value::Object(header)).expect("header serializes");
            while !text.len().is_multiple_of(8) {
                text.push(b' ');
            }
            let mut file = File::create(&path).map_err(|e| CheckpointError::io(&path, e))?;
            file.write_all(&(text.len() as u64).to_le_bytes())
                .and_then(|_| file.write_all(&text))
                .and_then(|_| file.set_len(8 + text.len() as u64 + sizes[i]))
                .map_err(|e| CheckpointError::io(&path, e))?;
            header_lens.push(8 + text.len() as u64);
            let direct = if self.direct_ok.load(Ordering::Relaxed) {
                open_direct(&path)
            } else {
                None
            };
            self.shards.push(ShardFile {
                file_name,
                file,
                direct,
            });
        }
        for ((t, s), start) in plan.into_iter().zip(shard_of).zip(offsets) {
            let slot = Slot {
                shard: s,
                offset: header_lens[s] + start,
                dtype: t.dtype,
                numel: t.shape.iter().product(),
                written: AtomicBool::new(false),
            };
            self.total_bytes += t.nbytes();
            if self.slots.insert(t.name.clone(), slot).is_some() {
                return Err(CheckpointError::DuplicateOutput(t.name));
            }
            self.order.push(t.name);
        }
        Ok(())
    }

    fn slot(&self, name: &str) -> Result<&Slot> {
        self.slots
            .get(name)
            .ok_or_else(|| CheckpointError::NotPlanned(name.to_string()))
    }

    /// The planned storage dtype of an output tensor.
    pub fn dtype_of(&self, name: &str) -> Option<Dtype> {
        self.slots.get(name).map(|s| s.dtype)
    }

    /// Write a tensor's stored bytes (already in its planned dtype). Safe to call from several
    /// threads at once for different tensors.
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let slot = self.slot(name)?;
        let expected = slot.numel * slot.dtype.size();
        if bytes.len() != expected {
            return Err(CheckpointError::WrongLength {
                tensor: name.to_string(),
                expected: slot.numel,
                got: bytes.len() / slot.dtype.size().max(1),
            });
        }
        let shard = &self.shards[slot.shard];
        self.write_at(shard, bytes, slot.offset)
            .map_err(|e| CheckpointError::io(self.tmp_dir.join(&shard.file_name), e))?;
        slot.written.store(true, Ordering::Release);
        Ok(())
    }

    /// Write `bytes` at `offset` of a shard: the unaligned head and tail through the page
    /// cache, the 4 KiB-aligned body (of a tensor of at least `DIRECT_MIN` bytes) with
    /// `O_DIRECT` in `DIRECT_CHUNK` pieces copied into an aligned buffer. No page is written
    /// both ways: the body's pages hold nothing else. A refused direct write (`EINVAL`: the
    /// filesystem takes no `O_DIRECT`) turns direct writes off and writes the rest buffered.
    fn write_at(&self, shard: &ShardFile, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        let direct = shard
            .direct
            .as_ref()
            .filter(|_| bytes.len() >= DIRECT_MIN && self.direct_ok.load(Ordering::Relaxed));
        let Some(direct) = direct else {
            return shard.file.write_all_at(bytes, offset);
        };
        let align = DIRECT_ALIGN as u64;
        let body_start = offset.next_multiple_of(align);
        let body_end = (offset + bytes.len() as u64) / align * align;
        if body_end <= body_start {
            return shard.file.write_all_at(bytes, offset);
        }
        let head = (body_start - offset) as usize;
        let tail = (body_end - offset) as usize;
        shard.file.write_all_at(&bytes[..head], offset)?;
        shard.file.write_all_at(&bytes[tail..], body_end)?;
        DIRECT_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < DIRECT_CHUNK + DIRECT_ALIGN {
                *buf = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
            }
            let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
            let aligned = &mut buf[start..start + DIRECT_CHUNK];
            let mut pos = head;
            while pos < tail {
                let n = (tail - pos).min(DIRECT_CHUNK);
                aligned[..n].copy_from_slice(&bytes[pos..pos + n]);
                let mut done = 0;
                while done < n {
                    match direct.write_at(&aligned[done..n], offset + (pos + done) as u64) {
                        Ok(0) => {
                            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
                        }
                        // A short direct write can leave an unaligned rest: write it buffered.
                        Ok(w) if (done + w) % DIRECT_ALIGN != 0 => {
                            let from = pos + done + w;
                            return shard
                                .file
                                .write_all_at(&bytes[from..tail], offset + from as u64);
                        }
                        Ok(w) => done += w,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            self.direct_ok.store(false, Ordering::Relaxed);
                            let from = pos + done;
                            return shard
                                .file
                                .write_all_at(&bytes[from..tail], offset + from as u64);
                        }
                        Err(e) => return Err(e),
                    }
                }
                pos += n;
            }
            Ok(())
        })
    }

    /// Write a tensor given as `f32` values, cast to its planned dtype on the way (in chunks, so
    /// the cast needs little extra memory).
    pub fn write_f32(&self, name: &str, values: &[f32]) -> Result<()> {
        let slot = self.slot(name)?;
        if values.len() != slot.numel {
            return Err(CheckpointError::WrongLength {
                tensor: name.to_string(),
                expected: slot.numel,
                got: values.len(),
            });
        }
        if !slot.dtype.is_float() {
            return Err(CheckpointError::NotFloat {
                dir: self.final_dir.clone(),
                tensor: name.to_string(),
                dtype: slot.dtype.to_string(),
            });
        }
        const CHUNK: usize = 1 << 20;
        let shard = &self.shards[slot.shard];
        let mut buf = Vec::with_capacity(CHUNK.min(values.len()) * slot.dtype.size());
        let mut offset = slot.offset;
        for chunk in values.chunks(CHUNK) {
            buf.clear();
            slot.dtype.encode_f32(chunk, &mut buf);
            self.write_at(shard, &buf, offset)
                .map_err(|e| CheckpointError::io(self.tmp_dir.join(&shard.file_name), e))?;
            offset += buf.len() as u64;
        }
        slot.written.store(true, Ordering::Release);
        Ok(())
    }

    /// Write an extra file (a model card, the recipe) into the output folder.
    pub fn write_file(&self, file_name: &str, contents: &[u8]) -> Result<()> {
        let path = self.tmp_dir.join(file_name);
        std::fs::write(&path, contents).map_err(|e| CheckpointError::io(&path, e))
    }

    /// Add the files transformers expects next to a `tokenizer.json` that the folder lacks
    /// (`tokenizer_config.json`, `special_tokens_map.json`, `generation_config.json`; see
    /// [`crate::special_tokens`]), derived from the tokenizer and `config`.
    fn add_side_files(&self, config: Option<&Value>) -> Result<()> {
        let tok_path = self.tmp_dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Ok(());
        }
        let tokenizer = read_json(&tok_path)?;
        let has_config = self.tmp_dir.join("tokenizer_config.json").exists();
        for (name, value) in special_tokens::side_files(Some(&tokenizer), config, has_config) {
            if !self.tmp_dir.join(name).exists() {
                self.write_file(
                    name,
                    &serde_json::to_vec_pretty(&value).expect("json serializes"),
                )?;
            }
        }
        Ok(())
    }

    /// Number of shard files.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    /// Check that every planned tensor was written, write the index (for more than one shard),
    /// `config.json` and the tokenizer files copied from `copy_from` (with a `tokenizer_config.json`,
    /// `special_tokens_map.json` and `generation_config.json` derived from `tokenizer.json` and
    /// `config` when neither the source nor the caller gave them), flush everything to disk and
    /// move the folder into place. Returns the final path.
    pub fn finish(mut self, config: Option<Value>, copy_from: Option<&Path>) -> Result<PathBuf> {
        for name in &self.order {
            if !self.slots[name].written.load(Ordering::Acquire) {
                return Err(CheckpointError::NotWritten(name.clone()));
            }
        }
        if self.shards.len() > 1 {
            let weight_map: BTreeMap<&str, &str> = self
                .order
                .iter()
                .map(|n| {
                    (
                        n.as_str(),
                        self.shards[self.slots[n].shard].file_name.as_str(),
                    )
                })
                .collect();
            let index = json!({
                "metadata": {"total_size": self.total_bytes, "format": "pt", "writer": concat!("evomerge ", env!("CARGO_PKG_VERSION"))},
                "weight_map": weight_map,
            });
            self.write_file(
                "model.safetensors.index.json",
                &serde_json::to_vec_pretty(&index).expect("index serializes"),
            )?;
        }
        if let Some(config) = &config {
            self.write_file(
                "config.json",
                &serde_json::to_vec_pretty(config).expect("config serializes"),
            )?;
        }
        if let Some(src) = copy_from {
            for f in TOKENIZER_FILES {
                let from = src.join(f);
                let to = self.tmp_dir.join(f);
                if from.exists() && !to.exists() {
                    if f.ends_with(".json") {
                        // Validate JSON files on the way so a broken tokenizer is caught here.
                        read_json(&from)?;
                    }
                    std::fs::copy(&from, &to).map_err(|e| CheckpointError::io(&from, e))?;
                }
            }
        }
        self.add_side_files(config.as_ref())?;
        for shard in &self.shards {
            shard
                .file
                .sync_all()
                .map_err(|e| CheckpointError::io(self.tmp_dir.join(&shard.file_name), e))?;
        }
        for entry in
            std::fs::read_dir(&self.tmp_dir).map_err(|e| CheckpointError::io(&self.tmp_dir, e))?
        {
            let path = entry
                .map_err(|e| CheckpointError::io(&self.tmp_dir, e))?
                .path();
            if path.extension().is_none_or(|e| e != "safetensors") {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| CheckpointError::io(&path, e))?;
            }
        }
        if self.final_dir.exists() {
            if !self.force {
                return Err(CheckpointError::OutputExists(self.final_dir.clone()));
            }
            std::fs::remove_dir_all(&self.final_dir)
                .map_err(|e| CheckpointError::io(&self.final_dir, e))?;
        }
        std::fs::rename(&self.tmp_dir, &self.final_dir)
            .map_err(|e| CheckpointError::io(&self.final_dir, e))?;
        if let Some(parent) = self.final_dir.parent()
            && let Ok(d) = File::open(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })
        {
            let _ = d.sync_all();
        }
        self.finished = true;
        Ok(self.final_dir.clone())
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Checkpoint;

    fn plan3() -> Vec<OutputTensor> {
        vec![
            OutputTensor::new("a", Dtype::F32, vec![2, 3]),
            OutputTensor::new("b", Dtype::BF16, vec![4]),
            OutputTensor::new("c", Dtype::F16, vec![3, 1]),
        ]
    }

    #[test]
    fn shard_assignment_follows_mergekit_rule() {
        // 24 + 8 + 6 bytes; limit 30: a | b c
        let (s, n) = assign_shards(&plan3(), 30);
        assert_eq!((s, n), (vec![0, 1, 1], 2));
        // limit 1: every tensor alone
        assert_eq!(assign_shards(&plan3(), 1), (vec![0, 1, 2], 3));
        assert_eq!(assign_shards(&plan3(), u64::MAX), (vec![0, 0, 0], 1));
    }

    #[test]
    fn out_of_order_writes_round_trip_single_and_sharded() {
        for max in [u64::MAX, 1] {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("m");
            let w = CheckpointWriter::create(
                &out,
                plan3(),
                WriterOptions {
                    max_shard_bytes: max,
                    force: false,
                    ..WriterOptions::default()
                },
            )
            .unwrap();
            w.write_f32("c", &[7.0, 8.0, 9.0]).unwrap();
            w.write_f32("a", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
            w.write_f32("b", &[0.5, -0.5, 1.5, 2.0]).unwrap();
            w.finish(Some(json!({"num_hidden_layers": 1})), None)
                .unwrap();
            let c = Checkpoint::open(&out).unwrap();
            assert_eq!(c.read_f32("a").unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
            assert_eq!(c.read_f32("b").unwrap(), vec![0.5, -0.5, 1.5, 2.0]);
            assert_eq!(c.read_f32("c").unwrap(), vec![7.0, 8.0, 9.0]);
            assert_eq!(c.info("c").unwrap().shape, vec![3, 1]);
            assert_eq!(c.info("b").unwrap().dtype, Dtype::BF16);
            let sharded = max == 1;
            assert_eq!(out.join("model.safetensors.index.json").exists(), sharded);
            assert_eq!(
                out.join("model-00002-of-00003.safetensors").exists(),
                sharded
            );
            assert_eq!(out.join("model.safetensors").exists(), !sharded);
            // nothing else left next to the output
            assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        }
    }

    /// Large tensors at unaligned offsets, written from several threads out of order, in
    /// several direct chunks and through `write_f32`'s chunks: the files are byte-identical
    /// with and without `O_DIRECT`, and the values read back.
    #[test]
    fn direct_and_buffered_writes_give_identical_files() {
        let plan = vec![
            OutputTensor::new("small", Dtype::BF16, vec![3]),
            OutputTensor::new("big", Dtype::BF16, vec![5_000_003]),
            OutputTensor::new("f32", Dtype::F32, vec![1_500_001]),
            OutputTensor::new("mid", Dtype::F16, vec![131_075]),
            OutputTensor::new("tail", Dtype::BF16, vec![5]),
        ];
        let big: Vec<u8> = (0..5_000_003 * 2).map(|i| (i * 7 % 251) as u8).collect();
        let f32s: Vec<f32> = (0..1_500_001).map(|i| i as f32 * 0.25 - 7.0).collect();
        let mid: Vec<u8> = (0..131_075 * 2).map(|i| (i * 13 % 241) as u8).collect();
        let tmp = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for direct_io in [true, false] {
            let out = tmp.path().join(format!("m{direct_io}"));
            let w = CheckpointWriter::create(
                &out,
                plan.clone(),
                WriterOptions {
                    direct_io,
                    ..WriterOptions::default()
                },
            )
            .unwrap();
            std::thread::scope(|s| {
                s.spawn(|| w.write_f32("f32", &f32s).unwrap());
                s.spawn(|| w.write_bytes("big", &big).unwrap());
                s.spawn(|| {
                    w.write_bytes("tail", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
                        .unwrap()
                });
                s.spawn(|| w.write_bytes("mid", &mid).unwrap());
                s.spawn(|| w.write_bytes("small", &[9, 8, 7, 6, 5, 4]).unwrap());
            });
            // where the filesystem takes O_DIRECT, the writer kept using it
            let probe = open_direct(&w.tmp_dir.join("model.safetensors")).is_some();
            assert_eq!(w.direct_ok.load(Ordering::Relaxed), direct_io && probe);
            w.finish(None, None).unwrap();
            let c = Checkpoint::open(&out).unwrap();
            assert_eq!(c.bytes("big").unwrap(), &big[..]);
            assert_eq!(c.bytes("mid").unwrap(), &mid[..]);
            assert_eq!(c.read_f32("f32").unwrap(), f32s);
            assert_eq!(c.bytes("tail").unwrap(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
            files.push(std::fs::read(out.join("model.safetensors")).unwrap());
        }
        assert!(files[0] == files[1], "direct and buffered files differ");
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m");
        {
            let w = CheckpointWriter::create(&out, plan3(), WriterOptions::default()).unwrap();
            w.write_f32("a", &[0.0; 6]).unwrap();
            let err = w.finish(None, None).unwrap_err();
            assert!(
                matches!(err, CheckpointError::NotWritten(ref n) if n == "b"),
                "{err}"
            );
        }
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn killed_writers_leftovers_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m");
        // A partial folder of a process that no longer exists (above Linux's pid_max), one of a
        // live process (this one's parent stands in), and another output's.
        let dead = tmp.path().join(".m.partial-999999999");
        let live = tmp.path().join(format!(
            ".m.partial-{}",
            std::os::unix::process::parent_id()
        ));
        let other = tmp.path().join(".n.partial-999999999");
        for d in [&dead, &live, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("model.safetensors"), b"half").unwrap();
        }
        let w = CheckpointWriter::create(&out, plan3(), WriterOptions::default()).unwrap();
        drop(w);
        assert!(!dead.exists() || !cfg!(target_os = "linux"));
        assert!(live.exists() && other.exists());
    }

    /// A writer killed with `kill -9` whose parent has not reaped it yet (a zombie) counts as
    /// dead: its partial folder is removed by the next writer.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_killed_writer_not_yet_reaped_is_dead() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(process_alive(pid));
        child.kill().unwrap();
        // not waited for: a zombie until `wait`
        let zombie = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !process_alive(pid)
        });
        assert!(zombie, "a killed, unreaped process still counts as alive");
        let tmp = tempfile::tempdir().unwrap();
        let left = tmp.path().join(format!(".m.partial-{pid}"));
        std::fs::create_dir(&left).unwrap();
        drop(
            CheckpointWriter::create(tmp.path().join("m"), plan3(), WriterOptions::default())
                .unwrap(),
        );
        assert!(!left.exists());
        child.wait().unwrap();
    }

    #[test]
    fn refuses_existing_output_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("m");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("keep"), b"x").unwrap();
        let err = CheckpointWriter::create(&out, plan3(), WriterOptions::default()).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(out.join("keep").exists());
        let w = CheckpointWriter::create(
            &out,
            vec![OutputTensor::new("x", Dtype::F32, vec![1])],
            WriterOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        w.write_f32("x", &[1.0]).unwrap();
        w.finish(None, None).unwrap();
        assert!(!out.join("keep").exists());
        assert!(out.join("model.safetensors").exists());
    }

    #[test]
    fn rejects_wrong_lengths_and_unplanned() {
        let tmp = tempfile::tempdir().unwrap();
        let w = CheckpointWriter::create(tmp.path().join("m"), plan3(), WriterOptions::default())
            .unwrap();
        assert!(matches!(
            w.write_f32("a", &[1.0]),
            Err(CheckpointError::WrongLength { .. })
        ));
        assert!(matches!(
            w.write_f32("zzz", &[1.0]),
            Err(CheckpointError::NotPlanned(_))
        ));
    }

    #[test]
    fn a_tokenizer_json_gets_its_side_files_and_copied_ones_win() {
        let tmp = tempfile::tempdir().unwrap();
        let tokenizer = json!({
            "added_tokens": [{"id": 0, "content": "<unk>", "special": true}],
            "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2}, "unk_token": "<unk>"}
        });
        let config = json!({"bos_token_id": 1, "eos_token_id": 2});
        let write = |out: &Path, copy_from: Option<&Path>| {
            let w = CheckpointWriter::create(
                out,
                vec![OutputTensor::new("a", Dtype::F32, vec![1])],
                WriterOptions::default(),
            )
            .unwrap();
            w.write_f32("a", &[1.0]).unwrap();
            if copy_from.is_none() {
                w.write_file("tokenizer.json", tokenizer.to_string().as_bytes())
                    .unwrap();
            }
            w.finish(Some(config.clone()), copy_from).unwrap()
        };
        let derived = write(&tmp.path().join("derived"), None);
        let tc = read_json(&derived.join("tokenizer_config.json")).unwrap();
        assert_eq!(
            (
                &tc["bos_token"],
                &tc["eos_token"],
                &tc["unk_token"],
                &tc["pad_token"]
            ),
            (
                &json!("<s>"),
                &json!("</s>"),
                &json!("<unk>"),
                &json!("<unk>")
            )
        );
        let map = read_json(&derived.join("special_tokens_map.json")).unwrap();
        assert_eq!(map["bos_token"]["content"], "<s>");
        let gen_config = read_json(&derived.join("generation_config.json")).unwrap();
        assert_eq!(gen_config["eos_token_id"], 2);
        // a source's own tokenizer_config.json is copied, not replaced
        std::fs::write(
            derived.join("tokenizer_config.json"),
            r#"{"bos_token": "<s>", "custom": 1}"#,
        )
        .unwrap();
        std::fs::remove_file(derived.join("special_tokens_map.json")).unwrap();
        let copied = write(&tmp.path().join("copied"), Some(&derived));
        assert_eq!(
            read_json(&copied.join("tokenizer_config.json")).unwrap()["custom"],
            1
        );
        assert!(!copied.join("special_tokens_map.json").exists());
        // no tokenizer, no side files
        let w = CheckpointWriter::create(
            tmp.path().join("bare"),
            vec![OutputTensor::new("a", Dtype::F32, vec![1])],
            WriterOptions::default(),
        )
        .unwrap();
        w.write_f32("a", &[1.0]).unwrap();
        let bare = w.finish(Some(config.clone()), None).unwrap();
        assert!(!bare.join("tokenizer_config.json").exists());
        assert!(!bare.join("generation_config.json").exists());
    }
}
