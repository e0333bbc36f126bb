//! Reading a model folder through memory maps.

use crate::role::tied_embedding_name;
use crate::{CheckpointError, Dtype, Result};
use memmap2::Mmap;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where one tensor lives: which shard, its byte range inside the shard, dtype and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Index into the checkpoint's shard list.
    pub shard: usize,
    /// Absolute byte range inside the shard file.
    pub start: usize,
    pub end: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of stored bytes.
    pub fn nbytes(&self) -> usize {
        self.end - self.start
    }
}

struct Shard {
    path: PathBuf,
    map: Mmap,
}

/// A Hugging Face model folder opened for reading. Tensors stay on disk (memory-mapped) until
/// [`Checkpoint::read_f32`] or [`Checkpoint::bytes`] asks for one.
pub struct Checkpoint {
    dir: PathBuf,
    config: Option<Value>,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::BadJson {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Checkpoint {
    /// Open a model folder: `config.json` (optional here; a merge needs it) and the weights from
    /// `model.safetensors.index.json`, `model.safetensors`, or any `*.safetensors` files.
    pub fn open(dir: impl AsRef<Path>) -> Result<Checkpoint> {
        let dir = dir.as_ref().to_path_buf();
        let meta = std::fs::metadata(&dir).map_err(|e| CheckpointError::io(&dir, e))?;
        if !meta.is_dir() {
            return Err(CheckpointError::io(
                &dir,
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        let config_path = dir.join("config.json");
        let config = if config_path.exists() {
            Some(read_json(&config_path)?)
        } else {
            None
        };

        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut ckpt = Checkpoint {
            dir: dir.clone(),
            config,
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        if index_path.exists() {
            ckpt.load_index(&index_path)?;
        } else if single.exists() {
            ckpt.add_shard(&single)?;
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| CheckpointError::io(&dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            if files.is_empty() {
                return Err(CheckpointError::NoWeights { dir });
            }
            files.sort();
            for f in files {
                ckpt.add_shard(&f)?;
            }
        }
        Ok(ckpt)
    }

    fn load_index(&mut self, index_path: &Path) -> Result<()> {
        let index = read_json(index_path)?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| CheckpointError::BadJson {
                path: index_path.to_path_buf(),
                reason: "no \"weight_map\" object".into(),
            })?;
        // Shard file -> tensors the index says it holds.
        let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| CheckpointError::BadJson {
                path: index_path.to_path_buf(),
                reason: format!("weight_map entry for '{tensor}' is not a file name"),
            })?;
            by_shard
                .entry(shard.to_string())
                .or_default()
                .push(tensor.clone());
        }
        for (shard, names) in by_shard {
            let path = self.dir.join(&shard);
            if !path.exists() {
                return Err(CheckpointError::MissingShard {
                    index: index_path.to_path_buf(),
                    shard,
                    tensor: names[0].clone(),
                });
            }
            self.add_shard(&path)?;
            for name in names {
                let found = self
                    .tensors
                    .get(&name)
                    .is_some_and(|t| self.shards[t.shard].path == path);
                if !found {
                    return Err(CheckpointError::IndexMismatch {
                        index: index_path.to_path_buf(),
                        shard,
                        tensor: name,
                    });
                }
            }
        }
        Ok(())
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap-based loader (safetensors, candle) we
        // assume the file is not truncated by another process while the checkpoint is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))?;
        let bad = |reason: String| CheckpointError::BadSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&map).map_err(|e| bad(format!("{e:?}")))?;
        let data_start = 8 + header_len;
        let shard = self.shards.len();
        for (name, info) in metadata.tensors() {
            let dtype = Dtype::from_safetensors(info.dtype).ok_or_else(|| {
                bad(format!(
                    "tensor '{name}' has unsupported dtype {:?}",
                    info.dtype
                ))
            })?;
            let (s, e) = info.data_offsets;
            let entry = TensorInfo {
                dtype,
                shape: info.shape.clone(),
                shard,
                start: data_start + s,
                end: data_start + e,
            };
            if let Some(prev) = self.tensors.insert(name.clone(), entry) {
                return Err(CheckpointError::DuplicateTensor {
                    dir: self.dir.clone(),
                    tensor: name,
                    first: self.shards[prev.shard].path.display().to_string(),
                    second: path.display().to_string(),
                });
            }
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            map,
        });
        Ok(())
    }

    /// The model folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.json`, if the folder has one.
    pub fn config(&self) -> Option<&Value> {
        self.config.as_ref()
    }

    /// `config.architectures[0]`, e.g. `LlamaForCausalLM`.
    pub fn architecture(&self) -> Option<&str> {
        self.config.as_ref()?.get("architectures")?.get(0)?.as_str()
    }

    /// The decoder layer count from `config.json`, or else from the tensor names.
    pub fn num_layers(&self) -> Option<usize> {
        if let Some(n) = self.config.as_ref().and_then(crate::num_layers) {
            return Some(n);
        }
        self.tensors
            .keys()
            .filter_map(|n| crate::TensorRole::of(n).layer())
            .max()
            .map(|m| m + 1)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint has no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.nbytes() as u64).sum()
    }

    /// Dtype, shape and location of a stored tensor.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// Whether the tensor is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The stored name that provides `name`: itself, or for an LM head that a tied model does not
    /// store, its embedding matrix.
    pub fn resolve<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        if self.tensors.contains_key(name) {
            return Some(name);
        }
        tied_embedding_name(name)
            .iter()
            .copied()
            .find(|alt| self.tensors.contains_key(*alt))
    }

    fn require(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors.get(name).ok_or_else(|| {
            let hint = nearest(name, self.tensors.keys().map(String::as_str))
                .map(|n| format!(" (did you mean '{n}'?)"))
                .unwrap_or_default();
            CheckpointError::MissingTensor {
                dir: self.dir.clone(),
                tensor: name.to_string(),
                hint,
            }
        })
    }

    /// The raw little-endian bytes of a tensor, straight from the memory map.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.require(name)?;
        Ok(&self.shards[t.shard].map[t.start..t.end])
    }

    /// A tensor converted to `f32` (row-major, shape from [`Checkpoint::info`]).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let n = self.require(name)?.numel();
        let mut out = vec![0f32; n];
        self.read_f32_into(name, &mut out)?;
        Ok(out)
    }

    /// Convert a tensor to `f32` into a caller-owned buffer of exactly its element count.
    pub fn read_f32_into(&self, name: &str, out: &mut [f32]) -> Result<()> {
        let t = self.require(name)?;
        if !t.dtype.is_float() {
            return Err(CheckpointError::NotFloat {
                dir: self.dir.clone(),
                tensor: name.to_string(),
                dtype: t.dtype.to_string(),
            });
        }
        if out.len() != t.numel() {
            return Err(CheckpointError::WrongLength {
                tensor: name.to_string(),
                expected: t.numel(),
                got: out.len(),
            });
        }
        t.dtype
            .decode_f32(&self.shards[t.shard].map[t.start..t.end], out);
        Ok(())
    }

    /// Drop a tensor's pages from this process's memory map after it has been read (they stay
    /// in the page cache). Streaming merges call this so resident memory stays near one tensor
    /// per input instead of growing to the size of every input file.
    pub fn release(&self, name: &str) {
        if let Some(t) = self.tensors.get(name) {
            // SAFETY: the mapping is a read-only shared file mapping: after MADV_DONTNEED the
            // pages read back from the file with the same contents, so no reader can observe a
            // change, whatever other thread touches the same pages.
            let _ = unsafe {
                self.shards[t.shard].map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    t.start,
                    t.end - t.start,
                )
            };
        }
    }

    /// The shard file a tensor is stored in.
    pub fn shard_path(&self, name: &str) -> Option<&Path> {
        self.tensors
            .get(name)
            .map(|t| self.shards[t.shard].path.as_path())
    }
}

/// The closest candidate by edit distance, if it is reasonably close.
pub(crate) fn nearest<'a>(
    target: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::levenshtein(target, c), c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= target.len().max(4) / 3)
        .map(|(_, c)| c)
}
