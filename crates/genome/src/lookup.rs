//! Reading a parameter's value out of a recipe without opening any checkpoint (for encoding
//! hand-written recipes into vectors).

use evomerge_merge::{ParamValue, Params, Recipe};

/// Whether the recipe refers to `model` anywhere.
pub fn mentions_model(recipe: &Recipe, model: &str) -> bool {
    recipe
        .base_model
        .as_ref()
        .is_some_and(|b| b.name() == model)
        || recipe
            .models
            .iter()
            .flatten()
            .any(|m| m.model.name() == model)
        || recipe
            .slices
            .iter()
            .flatten()
            .any(|s| s.sources.iter().any(|src| src.model.name() == model))
}

fn from(params: &Params, name: &str, tensor: &str, t: f64) -> Option<ParamValue> {
    params.get(name).and_then(|p| p.evaluate(tensor, t))
}

fn t_of(idx: usize, len: usize) -> f64 {
    if len > 1 {
        idx as f64 / (len - 1) as f64
    } else {
        1.0
    }
}

/// The value of parameter `name` for `model` on `tensor` at output layer `layer` (`None` for
/// embeddings, evaluated at t = 0 in the first slice), with mergekit's precedence: the source's
/// parameters, the slice's, the top level's.
pub fn parameter(
    recipe: &Recipe,
    name: &str,
    model: &str,
    tensor: &str,
    layer: Option<usize>,
    num_layers: usize,
) -> Option<ParamValue> {
    if let Some(models) = &recipe.models {
        let t = layer.map_or(0.0, |l| t_of(l, num_layers));
        return models
            .iter()
            .find(|m| m.model.name() == model)
            .and_then(|m| from(&m.parameters, name, tensor, t))
            .or_else(|| from(&recipe.parameters, name, tensor, t));
    }
    let slices = recipe.slices.as_ref()?;
    let mut start = 0usize;
    for (i, s) in slices.iter().enumerate() {
        let len = s
            .sources
            .first()
            .and_then(|src| src.layer_range)
            .map_or(num_layers, |r| r[1] - r[0]);
        let hit = match layer {
            None => i == 0,
            Some(l) => l >= start && l < start + len,
        };
        if hit {
            let t = layer.map_or(0.0, |l| t_of(l - start, len));
            return s
                .sources
                .iter()
                .find(|src| src.model.name() == model)
                .and_then(|src| from(&src.parameters, name, tensor, t))
                .or_else(|| from(&s.parameters, name, tensor, t))
                .or_else(|| from(&recipe.parameters, name, tensor, t));
        }
        start += len;
    }
    None
}
