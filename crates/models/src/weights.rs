//! Where a model's parameters come from: a checkpoint folder on disk or tensors already on the
//! device (the merge engine's in-memory output). Both go through [`WeightSource`].

use crate::ModelError;
use burn::tensor::Tensor;
use evomerge_checkpoint::Checkpoint;
use evomerge_kernels::{Device, FloatDType, tensor_from_vec};
use std::collections::HashMap;

/// A provider of named tensors (Hugging Face names) as 2-D views `[prod(leading dims), last]`
/// (a 1-D tensor of `n` values is `[1, n]`), the convention of `evomerge-kernels`.
pub trait WeightSource {
    /// Where the tensors come from, for error messages (a folder, "merged candidate", ...).
    fn source_name(&self) -> String;
    /// The tensor on `device`, or `None` when the source does not have it.
    fn tensor(&self, name: &str, device: &Device) -> Result<Option<Tensor<2>>, ModelError>;
    /// Every tensor name (for "did you mean" hints).
    fn names(&self) -> Vec<String>;
}

impl WeightSource for Checkpoint {
    fn source_name(&self) -> String {
        self.dir().display().to_string()
    }

    fn tensor(&self, name: &str, device: &Device) -> Result<Option<Tensor<2>>, ModelError> {
        let Some(info) = self.info(name) else {
            return Ok(None);
        };
        let shape = info.shape.clone();
        let values = self.read_f32(name)?;
        self.release(name);
        Ok(Some(tensor_from_vec(values, &shape, device)))
    }

    fn names(&self) -> Vec<String> {
        Checkpoint::names(self).map(str::to_string).collect()
    }
}

/// Another source's tensors cast to `dtype` as they are read, so a model loaded in a reduced
/// precision never exists whole in f32 (one tensor at a time does).
pub(crate) struct CastSource<'a> {
    pub source: &'a dyn WeightSource,
    pub dtype: FloatDType,
}

impl WeightSource for CastSource<'_> {
    fn source_name(&self) -> String {
        self.source.source_name()
    }

    fn tensor(&self, name: &str, device: &Device) -> Result<Option<Tensor<2>>, ModelError> {
        Ok(self.source.tensor(name, device)?.map(|t| {
            if self.dtype == FloatDType::F32 {
                t
            } else {
                t.cast(self.dtype)
            }
        }))
    }

    fn names(&self) -> Vec<String> {
        self.source.names()
    }
}

/// Named device tensors held in memory: what [`evomerge_merge::merge_in_memory`] returns,
/// ready to become a model without touching the disk. Cloning is cheap (tensor handles).
///
/// [`evomerge_merge::merge_in_memory`]: https://docs.rs/evomerge-merge
#[derive(Debug, Clone, Default)]
pub struct TensorMap {
    name: String,
    tensors: HashMap<String, Tensor<2>>,
}

impl TensorMap {
    /// An empty map; `name` appears in error messages.
    pub fn new(name: impl Into<String>) -> TensorMap {
        TensorMap {
            name: name.into(),
            tensors: HashMap::new(),
        }
    }

    /// From `(name, 2-D view)` pairs, e.g. the output of `merge_in_memory`.
    pub fn from_views(name: impl Into<String>, tensors: Vec<(String, Tensor<2>)>) -> TensorMap {
        TensorMap {
            name: name.into(),
            tensors: tensors.into_iter().collect(),
        }
    }

    /// Add (or replace) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor<2>) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Add tensors from another source for every name this map lacks (e.g. tensors the merge
    /// copied rather than computed).
    pub fn fill_from(
        &mut self,
        other: &dyn WeightSource,
        names: &[String],
        device: &Device,
    ) -> Result<(), ModelError> {
        for n in names {
            if !self.tensors.contains_key(n)
                && let Some(t) = other.tensor(n, device)?
            {
                self.tensors.insert(n.clone(), t);
            }
        }
        Ok(())
    }

    /// Read every tensor of a checkpoint onto `device`.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<TensorMap, ModelError> {
        let mut map = TensorMap::new(ckpt.dir().display().to_string());
        for name in ckpt.names() {
            if let Some(t) = WeightSource::tensor(ckpt, name, device)? {
                map.insert(name, t);
            }
        }
        Ok(map)
    }

    /// The tensor under `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor<2>> {
        self.tensors.get(name)
    }

    /// Take the tensor under `name` out of the map.
    pub fn remove(&mut self, name: &str) -> Option<Tensor<2>> {
        self.tensors.remove(name)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// `(name, tensor)` pairs in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<2>)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl WeightSource for TensorMap {
    fn source_name(&self) -> String {
        self.name.clone()
    }

    fn tensor(&self, name: &str, device: &Device) -> Result<Option<Tensor<2>>, ModelError> {
        Ok(self.tensors.get(name).map(|t| {
            if &t.device() == device {
                t.clone()
            } else {
                t.clone().to_device(device)
            }
        }))
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// A [`TensorMap`] that hands each tensor out once, removing it ([`crate::Llama::load_taking`]).
pub(crate) struct Taking<'a> {
    map: std::cell::RefCell<&'a mut TensorMap>,
}

impl<'a> Taking<'a> {
    pub(crate) fn new(map: &'a mut TensorMap) -> Taking<'a> {
        Taking {
            map: std::cell::RefCell::new(map),
        }
    }
}

impl WeightSource for Taking<'_> {
    fn source_name(&self) -> String {
        self.map.borrow().name.clone()
    }

    fn tensor(&self, name: &str, device: &Device) -> Result<Option<Tensor<2>>, ModelError> {
        Ok(self.map.borrow_mut().tensors.remove(name).map(|t| {
            if &t.device() == device {
                t
            } else {
                t.to_device(device)
            }
        }))
    }

    fn names(&self) -> Vec<String> {
        self.map.borrow().names()
    }
}
