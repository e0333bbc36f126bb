//! Data-flow genome: sizes, decoding rules, export and reload.

use evomerge_checkpoint::{Checkpoint, Dtype};
use evomerge_genome::{DfsGenome, DfsSpec, export_path, export_plain, load_path_checkpoint};
use evomerge_kernels::Device;
use evomerge_models::{Decoder, Hop, LayerPath, Llama};
use evomerge_zoo::TinyLlama;
use std::sync::Arc;

#[test]
fn paper_sizes() {
    let g = DfsGenome::new(DfsSpec::default(), vec![32, 32]).unwrap();
    assert_eq!(g.total_layers(), 64);
    assert_eq!(g.slots(), 192);
    assert_eq!(g.dim(), 4288);
    let no_w = DfsGenome::new(
        DfsSpec {
            scales: false,
            ..DfsSpec::default()
        },
        vec![32, 32],
    )
    .unwrap();
    assert_eq!(no_w.dim(), 192);
}

fn hops(p: &LayerPath) -> Vec<(usize, usize)> {
    p.hops.iter().map(|h| (h.model, h.layer)).collect()
}

#[test]
fn decoding_rules() {
    let g = DfsGenome::new(DfsSpec::default(), vec![3, 2]).unwrap();
    // the initial vector is A itself
    let p = g.decode(&g.initial()).unwrap();
    assert_eq!(hops(&p), vec![(0, 0), (0, 1), (0, 2)]);
    assert!(p.hops.iter().all(|h| h.scale == 1.0));
    // all off: the minimal path, A's first and last layers
    let mut x = vec![-0.5; g.dim()];
    x[g.slots()..].iter_mut().for_each(|v| *v = 0.0);
    assert_eq!(hops(&g.decode(&x).unwrap()), vec![(0, 0), (0, 2)]);
    // B's layer 1 in the second repeat, A's layer 1 in the third; W scales the hop inputs
    let m = g.total_layers();
    x[m + 4] = 0.3; // second repeat, global 4 = B layer 1
    x[2 * m + 1] = 0.9; // third repeat, A layer 1
    let w = |i: usize, j: usize| g.slots() + i * m + j;
    x[w(0, 4)] = -0.5; // A0 -> B1
    x[w(4, 1)] = 0.25; // B1 -> A1
    let p = g.decode(&x).unwrap();
    assert_eq!(hops(&p), vec![(0, 0), (1, 1), (0, 1), (0, 2)]);
    let scales: Vec<f32> = p.hops.iter().map(|h| h.scale).collect();
    assert_eq!(scales, vec![1.0, 0.5, 1.25, 1.0]);
    // decoded paths always start and end with A's first and last layers
    for seed in 0..50u64 {
        let x: Vec<f64> = (0..g.dim())
            .map(|i| (((i as u64 + 1) * (seed + 7) * 2654435761) % 1000) as f64 / 500.0 - 1.0)
            .collect();
        let p = g.decode(&x).unwrap();
        assert_eq!(hops(&p)[0], (0, 0));
        assert_eq!(*hops(&p).last().unwrap(), (0, 2));
    }
    assert!(g.decode(&x[1..]).is_err());
    let mut bad = g.initial();
    bad[3] = f64::NAN;
    assert!(g.decode(&bad).unwrap_err().to_string().contains("I3.m1.l0"));
}

#[test]
fn off_start_moves_the_other_indicators_and_is_checked() {
    let spec = DfsSpec {
        off_start: -0.2,
        ..DfsSpec::default()
    };
    let g = DfsGenome::new(spec.clone(), vec![3, 2]).unwrap();
    let x = g.initial();
    // A's first-repeat layers at 2 sigma, every other slot at off_start, theta 0
    assert_eq!(&x[..3], &[0.2, 0.2, 0.2]);
    assert!(x[3..g.slots()].iter().all(|v| *v == -0.2));
    assert!(x[g.slots()..].iter().all(|v| *v == 0.0));
    assert_eq!(hops(&g.decode(&x).unwrap()), vec![(0, 0), (0, 1), (0, 2)]);
    // the paper's start leaves the other slots at 0
    let paper = DfsGenome::new(DfsSpec::default(), vec![3, 2]).unwrap();
    assert!(paper.initial()[3..paper.slots()].iter().all(|v| *v == 0.0));
    let e = DfsGenome::new(
        DfsSpec {
            off_start: -1.5,
            ..spec
        },
        vec![3, 2],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("off_start -1.5") && e.contains("indicator_bounds"),
        "{e}"
    );
}

#[test]
fn exported_paths_reload_to_identical_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TinyLlama {
        layers: 3,
        ..Default::default()
    };
    let a = spec.random(1);
    a.save(tmp.path().join("a"), Dtype::F32, u64::MAX).unwrap();
    a.perturbed(2, 0.05)
        .save(tmp.path().join("b"), Dtype::F32, u64::MAX)
        .unwrap();
    let device = Device::flex();
    let la = Arc::new(Llama::from_dir(tmp.path().join("a"), &device).unwrap());
    let lb = Arc::new(Llama::from_dir(tmp.path().join("b"), &device).unwrap());
    let ca = Checkpoint::open(tmp.path().join("a")).unwrap();
    let cb = Checkpoint::open(tmp.path().join("b")).unwrap();
    let ids = [1u32, 5, 9, 33, 7];
    let h = |model, layer, scale| Hop {
        model,
        layer,
        scale,
    };
    let scaled = LayerPath {
        hops: vec![
            h(0, 0, 1.0),
            h(1, 1, 0.8),
            h(0, 1, 1.1),
            h(1, 1, 1.0),
            h(0, 2, 1.0),
        ],
    };
    let reference = Decoder::new(vec![la.clone(), lb.clone()], &scaled)
        .unwrap()
        .logits(&ids)
        .unwrap();
    let out = export_path(&scaled, &[&ca, &cb], &tmp.path().join("path"), false).unwrap();
    let reloaded = load_path_checkpoint(&out, &device)
        .unwrap()
        .logits(&ids)
        .unwrap();
    assert_eq!(reference, reloaded);
    let c = Checkpoint::open(&out).unwrap();
    assert_eq!(c.num_layers(), Some(4)); // A0, B1, A1, A2
    assert_eq!(
        c.config().unwrap()["input_layers"],
        serde_json::json!([0, 1, 2, 1, 3])
    );
    // a scaled path has no plain form; an unscaled one loads as an ordinary model
    assert!(export_plain(&scaled, &[&ca, &cb], &tmp.path().join("plain0"), false).is_err());
    let unscaled = LayerPath {
        hops: scaled
            .hops
            .iter()
            .map(|x| h(x.model, x.layer, 1.0))
            .collect(),
    };
    let want = Decoder::new(vec![la, lb], &unscaled)
        .unwrap()
        .logits(&ids)
        .unwrap();
    let plain = export_plain(&unscaled, &[&ca, &cb], &tmp.path().join("plain"), false).unwrap();
    let got = Decoder::plain(Arc::new(Llama::from_dir(&plain, &device).unwrap()))
        .logits(&ids)
        .unwrap();
    assert_eq!(want, got);
    assert_eq!(Checkpoint::open(&plain).unwrap().num_layers(), Some(5));
}
