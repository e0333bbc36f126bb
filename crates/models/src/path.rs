//! Layer paths: the data-flow-space (DFS) merge of the Sakana paper.

use serde::{Deserialize, Serialize};

/// One step of a layer path: run layer `layer` of model `model` on the hidden state scaled by
/// `scale` (the paper's `W[i][j]` for the edge into this hop; 1 keeps the input unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// Index into the decoder's model list; model 0 ("A") also provides the embeddings, the
    /// final norm and the LM head.
    pub model: usize,
    /// Decoder layer index inside that model.
    pub layer: usize,
    /// Factor applied to the whole hidden state before the layer.
    pub scale: f32,
}

/// The path every token takes through the layers of several models:
/// `h = embed_A(x); for hop in path { h = layers[hop.model][hop.layer](h * hop.scale) }; logits = head_A(norm_A(h))`.
///
/// Each hop has its own key-value cache slot, so a layer visited twice keeps two caches
/// (as in Sakana's EvoMistral, whose `input_layers` / `input_scales` are this list).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LayerPath {
    pub hops: Vec<Hop>,
}

impl LayerPath {
    /// Model `model`'s own layers `0..num_layers` in order, scale 1: the ordinary forward pass.
    pub fn plain(model: usize, num_layers: usize) -> LayerPath {
        LayerPath {
            hops: (0..num_layers)
                .map(|layer| Hop {
                    model,
                    layer,
                    scale: 1.0,
                })
                .collect(),
        }
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.hops.len()
    }

    /// Whether the path has no hops (embeddings straight into the head).
    pub fn is_empty(&self) -> bool {
        self.hops.is_empty()
    }

    /// EvoMistral's two config vectors, for a path whose hops all index one layer list:
    /// `input_layers` (the layer index of each hop in `layer_offsets[model] + layer` numbering)
    /// and `input_scales`.
    pub fn to_input_layers(&self, layer_offsets: &[usize]) -> (Vec<usize>, Vec<f32>) {
        self.hops
            .iter()
            .map(|h| (layer_offsets[h.model] + h.layer, h.scale))
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_round_trip_and_input_layers() {
        let p = LayerPath {
            hops: vec![
                Hop {
                    model: 0,
                    layer: 0,
                    scale: 1.0,
                },
                Hop {
                    model: 1,
                    layer: 2,
                    scale: 0.5,
                },
            ],
        };
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<LayerPath>(&j).unwrap(), p);
        assert_eq!(p.to_input_layers(&[0, 4]), (vec![0, 6], vec![1.0, 0.5]));
        assert_eq!(LayerPath::plain(0, 3).len(), 3);
    }
}
