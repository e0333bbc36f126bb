//! Parameter-space genome: dimensions, presets, round trips, merges, bad input.

use evomerge_checkpoint::{Checkpoint, Dtype};
use evomerge_genome::{GenomeError, MethodGene, PsGenome, PsSpec};
use evomerge_merge::{MergeOptions, Plan, PlanOptions, Recipe, Sources, merge_to_disk};
use evomerge_zoo::TinyLlama;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

#[test]
fn dimension_counts() {
    let spec = PsSpec {
        merge_method: MethodGene::Fixed("ties".into()),
        layer_granularity: 8,
        filters: vec!["self_attn".into(), "mlp".into()],
        ..PsSpec::default()
    };
    let g = PsGenome::new(spec, names(3), Some("base".into()), 32).unwrap();
    assert_eq!(g.dim(), 4 * 3 * 3 * 2);
    assert_eq!(g.names()[0], "g0.model0.self_attn.weight");
    assert_eq!(g.names()[5], "g0.model0.rest.density");
    // granularity that does not divide: 30 layers by 8 -> 8, 8, 8, 6
    let g = PsGenome::new(
        PsSpec {
            layer_granularity: 8,
            ..PsSpec::default()
        },
        names(2),
        Some("b".into()),
        30,
    )
    .unwrap();
    assert_eq!(g.groups(), &[(0, 8), (8, 16), (16, 24), (24, 30)]);
    assert_eq!(g.dim(), 4 * 2 * 2);
    // the embedding group and a categorical method gene
    let g = PsGenome::new(
        PsSpec {
            separate_embeddings: true,
            merge_method: MethodGene::Choice(vec!["ties".into(), "task_arithmetic".into()]),
            ..PsSpec::default()
        },
        names(2),
        Some("b".into()),
        4,
    )
    .unwrap();
    assert_eq!(g.dim(), 2 * 2 * 2 + 1);
    assert_eq!(g.names().last().unwrap(), "method");
}

#[test]
fn presets() {
    let g = PsGenome::new(PsSpec::sakana(), names(3), Some("base".into()), 32).unwrap();
    assert_eq!(g.dim(), 6);
    assert_eq!(g.initial(), vec![0.5; 6]);
    assert!((g.sigma0() - 1.0 / 6.0).abs() < 1e-12);
    assert_eq!(g.bounds(), (vec![0.0; 6], vec![1.0; 6]));
    let g = PsGenome::new(
        PsSpec::mergekit_evolve("dare_ties", 8),
        names(4),
        Some("base".into()),
        32,
    )
    .unwrap();
    let x = g.initial();
    for (gene, v) in g.genes().iter().zip(&x) {
        let want = if gene.param == "weight" { 0.25 } else { 1.0 };
        assert_eq!(*v, want, "{}", gene.name);
    }
}

fn specs() -> Vec<PsSpec> {
    vec![
        PsSpec::sakana(),
        PsSpec::mergekit_evolve("ties", 2),
        PsSpec {
            filters: vec!["self_attn".into(), "mlp".into()],
            layer_granularity: 1,
            ..PsSpec::mergekit_evolve("dare_ties", 1)
        },
        PsSpec {
            smooth: true,
            layer_granularity: 1,
            filters: vec!["mlp".into()],
            ..PsSpec::sakana()
        },
        PsSpec {
            separate_embeddings: true,
            layer_granularity: 2,
            ..PsSpec::sakana()
        },
        PsSpec {
            separate_embeddings: true,
            smooth: true,
            layer_granularity: 1,
            ..PsSpec::sakana()
        },
        PsSpec {
            merge_method: MethodGene::Choice(vec![
                "ties".into(),
                "dare_linear".into(),
                "task_arithmetic".into(),
            ]),
            ..PsSpec::sakana()
        },
        PsSpec {
            allow_negative_weights: true,
            weight_bounds: evomerge_genome::GeneBounds::new(-1.0, 1.0),
            merge_method: MethodGene::Fixed("task_arithmetic".into()),
            layer_granularity: 3,
            ..PsSpec::default()
        },
    ]
}

#[test]
fn decode_encode_round_trip() {
    for spec in specs() {
        let g = PsGenome::new(spec.clone(), names(3), Some("base".into()), 4).unwrap();
        let (lo, hi) = g.bounds();
        // a deterministic interior point
        let x: Vec<f64> = (0..g.dim())
            .map(|i| lo[i] + (hi[i] - lo[i]) * (0.13 + 0.71 * ((i * 37 % 11) as f64 / 11.0)))
            .collect();
        let r = g.decode(&x).unwrap();
        let back = g.decode(&g.encode(&r).unwrap()).unwrap();
        assert_eq!(r, back, "spec {spec:?}\n{}", r.to_yaml());
        // and the printed forms parse back to the same recipe
        assert_eq!(Recipe::from_toml(&r.to_toml()).unwrap(), r);
        assert_eq!(Recipe::from_yaml(&r.to_yaml()).unwrap(), r);
    }
}

#[test]
fn bad_vectors_and_specs() {
    let g = PsGenome::new(PsSpec::sakana(), names(3), Some("base".into()), 4).unwrap();
    assert_eq!(
        g.decode(&[0.5; 5]).unwrap_err(),
        GenomeError::WrongLength {
            expected: 6,
            got: 5
        }
    );
    let mut x = vec![0.5; 6];
    x[3] = f64::NAN;
    let e = g.decode(&x).unwrap_err();
    assert!(e.to_string().contains("model1.density"), "{e}");
    let e = PsGenome::new(
        PsSpec {
            merge_method: MethodGene::Fixed("tie".into()),
            ..PsSpec::default()
        },
        names(2),
        Some("b".into()),
        4,
    )
    .unwrap_err();
    assert!(e.to_string().contains("did you mean 'ties'"), "{e}");
    let e = PsGenome::new(
        PsSpec {
            merge_method: MethodGene::Fixed("slerp".into()),
            ..PsSpec::default()
        },
        names(2),
        Some("b".into()),
        4,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no per-model weights"), "{e}");
    let g = PsGenome::new(
        PsSpec {
            filters: vec!["self_atn".into()],
            ..PsSpec::default()
        },
        names(2),
        Some("b".into()),
        2,
    )
    .unwrap();
    let tensors = [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
    ];
    let e = g.validate_filters(tensors.iter().copied()).unwrap_err();
    assert!(e.to_string().contains("did you mean 'self_attn'"), "{e}");
}

#[test]
fn decoded_recipe_merges_like_the_hand_written_one() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinyLlama {
        layers: 4,
        ..Default::default()
    };
    let base = spec.random(0);
    let root = tmp.path();
    base.save(root.join("base"), Dtype::F32, u64::MAX).unwrap();
    base.perturbed(1, 0.02)
        .save(root.join("a"), Dtype::F32, u64::MAX)
        .unwrap();
    base.perturbed(2, 0.02)
        .save(root.join("b"), Dtype::F32, u64::MAX)
        .unwrap();
    let p = |n: &str| root.join(n).to_str().unwrap().to_string();
    let g = PsGenome::new(
        PsSpec {
            layer_granularity: 2,
            filters: vec!["mlp".into()],
            merge_method: MethodGene::Fixed("ties".into()),
            ..PsSpec::default()
        },
        vec![p("a"), p("b")],
        Some(p("base")),
        4,
    )
    .unwrap();
    // genes: g{0,1} x model{0,1} x {mlp, rest} x {weight, density}
    let x: Vec<f64> = g
        .genes()
        .iter()
        .map(
            |gene| match (gene.group, gene.model, gene.set, gene.param) {
                (_, 0, 0, "weight") => 0.9,
                (_, 1, 0, "weight") => 0.2,
                (0, _, 1, "weight") => 0.5,
                (1, _, 1, "weight") => 0.7,
                (_, _, _, "density") => 0.6,
                _ => unreachable!(),
            },
        )
        .collect();
    let decoded = g.decode(&x).unwrap();
    let hand = Recipe::from_yaml(&format!(
        r#"
merge_method: ties
base_model: {base}
slices:
  - sources:
      - model: {a}
        layer_range: [0, 2]
        parameters:
          weight: [{{filter: mlp, value: 0.9}}, {{value: 0.5}}]
          density: 0.6
      - model: {b}
        layer_range: [0, 2]
        parameters:
          weight: [{{filter: mlp, value: 0.2}}, {{value: 0.5}}]
          density: 0.6
      - model: {base}
        layer_range: [0, 2]
  - sources:
      - model: {a}
        layer_range: [2, 4]
        parameters:
          weight: [{{filter: mlp, value: 0.9}}, {{value: 0.7}}]
          density: 0.6
      - model: {b}
        layer_range: [2, 4]
        parameters:
          weight: [{{filter: mlp, value: 0.2}}, {{value: 0.7}}]
          density: 0.6
      - model: {base}
        layer_range: [2, 4]
"#,
        base = p("base"),
        a = p("a"),
        b = p("b")
    ))
    .unwrap();
    let run = |r: &Recipe, out: &str| {
        let s = Sources::open(r, None).unwrap();
        let plan = Plan::build(r, &s, &PlanOptions::default()).unwrap();
        merge_to_disk(&plan, &s, &root.join(out), &MergeOptions::default(), &[]).unwrap();
        let c = Checkpoint::open(root.join(out)).unwrap();
        c.names()
            .map(|n| (n.to_string(), c.read_f32(n).unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(&decoded, "decoded"), run(&hand, "hand"));
}

/// A method added as one file (`test_scale`, the merge crate's test-only method, enabled by
/// this crate's dev-dependency) is searchable: its declared evolvable parameter becomes genes
/// with its declared bounds and decodes into the recipe, with no list in the genome naming it.
#[test]
fn a_new_methods_declared_parameters_are_evolved() {
    let spec = PsSpec {
        merge_method: MethodGene::Fixed("test_scale".into()),
        ..PsSpec::default()
    };
    let g = PsGenome::new(spec, names(2), None, 4).unwrap();
    assert_eq!(g.names(), vec!["g0.model0.factor", "g0.model1.factor"]);
    assert_eq!(g.bounds(), (vec![0.0, 0.0], vec![2.0, 2.0]));
    let r = g.decode(&[0.25, 1.75]).unwrap();
    let yaml = r.to_yaml();
    assert!(
        yaml.contains("factor: 0.25") && yaml.contains("factor: 1.75"),
        "{yaml}"
    );
    assert_eq!(g.decode(&g.encode(&r).unwrap()).unwrap(), r);
}
