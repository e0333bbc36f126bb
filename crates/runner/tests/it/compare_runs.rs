//! `compare_runs` on run folders written here: two strategies × two seeds.

use evomerge_runner::compare::compare_runs;
use evomerge_runner::plot::PlotError;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

struct Fake<'a> {
    name: &'a str,
    optimizer: &'a str,
    kind: &'a str,
    seed: i64,
    /// (evaluations, best, validation)
    gens: &'a [(u32, f64, Option<f64>)],
    test: Option<f64>,
}

fn write_run(root: &Path, id: &str, f: &Fake) -> PathBuf {
    let dir = root.join(id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("run.toml"),
        format!(
            "name = \"{}\"\nseed = {}\n\n[genome]\nkind = \"{}\"\n\n[optimizer]\noptimizer = \"{}\"\n\n[run]\nid = \"{id}\"\n",
            f.name, f.seed, f.kind, f.optimizer
        ),
    )
    .unwrap();
    let mut g = String::from(
        "stage,generation,evaluations,best,gen_best,mean,q25,median,q75,sigma,failed,elapsed_s,validation\n",
    );
    for (i, (e, b, v)) in f.gens.iter().enumerate() {
        let v = v.map(|v| v.to_string()).unwrap_or_default();
        g.push_str(&format!("ps,{i},{e},{b},{b},{b},{b},{b},{b},,0,1.0,{v}\n"));
    }
    fs::write(dir.join("generations.csv"), g).unwrap();
    if let Some(t) = f.test {
        fs::write(
            dir.join("results.csv"),
            format!(
                "name,kind,split,fitness,metrics\nbest,best,validation,0.99,{{}}\nbest,best,test,{t},\"{{\"\"acc\"\": {t}}}\"\nsrc,source,test,0.1,{{}}\n\"dare (untuned)\",baseline,test,{},{{}}\nsrc,source,validation,0.3,{{}}\n",
                0.2 + 0.01 * f.seed as f64
            ),
        )
        .unwrap();
    }
    dir
}

fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let headers: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect()
        })
        .collect()
}

fn num(row: &HashMap<String, String>, col: &str) -> f64 {
    row[col]
        .parse()
        .unwrap_or_else(|_| panic!("{col} = '{}'", row[col]))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn four_runs(root: &Path) -> Vec<PathBuf> {
    let base = Fake {
        name: "demo",
        optimizer: "cma",
        kind: "ps",
        seed: 1,
        gens: &[],
        test: None,
    };
    vec![
        write_run(
            root,
            "cma-1",
            &Fake {
                gens: &[
                    (10, 0.5, None),
                    (20, 0.6, Some(0.55)),
                    (30, 0.7, Some(0.65)),
                ],
                test: Some(0.68),
                ..base
            },
        ),
        write_run(
            root,
            "ga-1",
            &Fake {
                optimizer: "ga",
                gens: &[(10, 0.3, None), (20, 0.5, None)],
                test: Some(0.45),
                ..base
            },
        ),
        write_run(
            root,
            "cma-2",
            &Fake {
                seed: 2,
                gens: &[(10, 0.4, None), (20, 0.6, None), (30, 0.8, Some(0.75))],
                test: Some(0.72),
                ..base
            },
        ),
        write_run(
            root,
            "ga-2",
            &Fake {
                optimizer: "ga",
                seed: 2,
                gens: &[
                    (10, 0.2, None),
                    (20, 0.3, None),
                    (30, 0.4, None),
                    (40, 0.6, None),
                ],
                test: None,
                ..base
            },
        ),
    ]
}

#[test]
fn two_strategies_two_seeds_give_the_right_means() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = four_runs(tmp.path());
    let out = tmp.path().join("cmp");
    let summary = compare_runs(&runs, &out).unwrap();

    let labels: Vec<&str> = summary
        .strategies
        .iter()
        .map(|s| s.label.as_str())
        .collect();
    assert_eq!(labels, ["cma", "ga"]);
    assert_eq!(summary.strategies[0].seeds, [1, 2]);
    assert_eq!(summary.runs.len(), 4);

    let png = fs::read(out.join("compare.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        fs::read_to_string(out.join("compare.svg"))
            .unwrap()
            .contains("<svg")
    );

    let rows = read_csv(&out.join("compare.csv"));
    assert_eq!(rows.len(), 2);
    let cma = &rows[0];
    assert_eq!(cma["strategy"], "cma");
    assert_eq!(cma["runs"], "2");
    assert_eq!(cma["seeds"], "1 2");
    assert!(close(num(cma, "evaluations_mean"), 30.0));
    assert!(close(num(cma, "search_best_mean"), 0.75));
    assert!(close(num(cma, "search_best_sd"), (0.005f64).sqrt()));
    assert!(close(num(cma, "validation_mean"), 0.70));
    assert!(close(num(cma, "test_mean"), 0.70));
    assert!(close(num(cma, "test_sd"), (0.0008f64).sqrt()));

    let ga = &rows[1];
    assert_eq!(ga["strategy"], "ga");
    assert!(close(num(ga, "evaluations_mean"), 30.0));
    assert!(close(num(ga, "search_best_mean"), 0.55));
    assert_eq!(ga["validation_mean"], "", "no ga run logged a validation");
    assert_eq!(ga["validation_runs"], "0");
    assert!(close(num(ga, "test_mean"), 0.45));
    assert_eq!(ga["test_sd"], "", "one test value has no sd");
    assert_eq!(ga["test_runs"], "1");

    let per_run = read_csv(&out.join("compare_runs.csv"));
    assert_eq!(per_run.len(), 4);
    let ga2 = per_run.iter().find(|r| r["run"] == "ga-2").unwrap();
    assert_eq!(
        (ga2["strategy"].as_str(), ga2["seed"].as_str()),
        ("ga", "2")
    );
    assert!(close(num(ga2, "search_best"), 0.6));
    assert_eq!(ga2["test"], "");

    let md = fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(
        md.contains("| cma | 2 | 1 2 | 30 | 0.7500 ± 0.0707 | 0.7000 ± 0.0707 | 0.7000 ± 0.0283 |"),
        "{md}"
    );
    assert!(md.contains("0.4500 (1 of 2 runs)"), "{md}");
    assert!(md.contains("| ga | ga-2 | 2 | 40 | 0.6000 |"), "{md}");

    // the sources and baselines of the three runs with a results.csv (test rows only)
    let refs: Vec<(&str, &str, usize)> = summary
        .references
        .iter()
        .map(|r| (r.name.as_str(), r.kind.as_str(), r.test.n))
        .collect();
    assert_eq!(
        refs,
        [("src", "source", 3), ("dare (untuned)", "baseline", 3)]
    );
    let dare = &summary.references[1].test;
    assert!(close(dare.mean, 0.64 / 3.0), "{dare:?}");
    assert!(
        close(dare.sd.unwrap(), (0.0001f64 / 3.0).sqrt()),
        "{dare:?}"
    );
    let ref_rows = read_csv(&out.join("compare_references.csv"));
    assert_eq!(ref_rows.len(), 2);
    assert_eq!(ref_rows[0]["name"], "src");
    assert!(close(num(&ref_rows[0], "test_mean"), 0.1));
    assert!(close(num(&ref_rows[0], "test_sd"), 0.0));
    assert_eq!(ref_rows[1]["test_runs"], "3");
    assert!(
        md.contains("| src | source | 3 | 0.1000 ± 0.0000 |"),
        "{md}"
    );
    assert!(
        md.contains("| dare (untuned) | baseline | 3 | 0.2133 ± 0.0058 |"),
        "{md}"
    );
}

#[test]
fn labels_add_the_genome_kind_and_experiment_name_only_when_runs_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let gens: &[(u32, f64, Option<f64>)] = &[(5, 0.1, None)];
    let a = Fake {
        name: "exp-a",
        optimizer: "cma",
        kind: "ps",
        seed: 1,
        gens,
        test: None,
    };
    let runs = vec![
        write_run(tmp.path(), "a", &a),
        write_run(tmp.path(), "b", &Fake { kind: "dfs", ..a }),
    ];
    let s = compare_runs(&runs, &tmp.path().join("out1")).unwrap();
    let labels: Vec<&str> = s.strategies.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["cma (ps)", "cma (dfs)"]);

    let runs = vec![
        write_run(tmp.path(), "c", &a),
        write_run(tmp.path(), "d", &Fake { name: "exp-b", ..a }),
    ];
    let s = compare_runs(&runs, &tmp.path().join("out2")).unwrap();
    let labels: Vec<&str> = s.strategies.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["exp-a: cma", "exp-b: cma"]);
}

#[test]
fn a_folder_that_is_not_a_run_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut runs = four_runs(tmp.path());
    let stray = tmp.path().join("not-a-run");
    fs::create_dir_all(&stray).unwrap();
    runs.push(stray);
    let err = compare_runs(&runs, &tmp.path().join("out")).unwrap_err();
    assert!(matches!(err, PlotError::NotARun { .. }));
    assert!(err.to_string().contains("not-a-run"), "{err}");
}

#[test]
fn runs_without_generations_are_listed_but_not_drawn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fresh");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("run.toml"),
        "name = \"x\"\nseed = 4\n[optimizer]\noptimizer = \"random\"\n",
    )
    .unwrap();
    let s = compare_runs(std::slice::from_ref(&dir), &tmp.path().join("out")).unwrap();
    assert_eq!(s.strategies[0].label, "random");
    assert_eq!(s.strategies[0].search_best, None);
    assert!(!tmp.path().join("out/compare.png").exists());
    assert!(tmp.path().join("out/compare.md").exists());

    fs::write(
        dir.join("run.toml"),
        "name = \"x\"\n[optimizer]\nsigma = 0.3\n",
    )
    .unwrap();
    let err = compare_runs(&[dir], &tmp.path().join("out"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run.toml") && err.contains("optimizer"),
        "{err}"
    );
}
