//! The whole-model (data-using) methods, registered by `evomerge-datamerge`
//! ([`evomerge_datamerge::METHODS`]): each becomes a [`MethodSpec`] whose parameters, defaults
//! and words come from that registry and its typed [`evomerge_datamerge::DataParams`]; the
//! executor hands them to `crate::whole_model`.

use crate::method::{MethodSpec, ParamSpec, flag, num, word};
use evomerge_datamerge::{DataParams, METHODS, registry::choices};
use serde_json::Value;

/// The entries of every data-using method, in `evomerge-datamerge`'s order.
pub(crate) fn specs() -> impl Iterator<Item = MethodSpec> {
    METHODS.iter().map(|m| {
        let params = m.params.iter().map(|&name| param(name)).collect::<Vec<_>>();
        MethodSpec::whole_model(m.name, params, m.summary)
    })
}

fn param(name: &'static str) -> ParamSpec {
    match DataParams::default_value(name) {
        Some(Value::Bool(b)) => flag(name, b),
        Some(Value::Number(n)) => num(name, n.as_f64().unwrap_or(0.0)),
        Some(Value::String(s)) => word(name, &s, choices(name)),
        other => panic!("data method parameter {name} has no default ({other:?})"),
    }
}
