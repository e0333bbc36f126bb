//! `plot_run` on run folders: the fixture `ps+dfs` run, a data-flow run written here, runs in
//! progress and empty logs.

use evomerge_runner::plot::{PlotError, plot_run};
use std::fs;
use std::path::{Path, PathBuf};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect()
}

fn assert_png(path: &Path) {
    let bytes = fs::read(path).unwrap();
    assert!(
        bytes.len() > 1000,
        "{} is {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(&bytes[..8], PNG_SIGNATURE, "{}", path.display());
}

fn svg(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.contains("<svg"), "{}", path.display());
    text
}

const GENERATIONS_HEADER: &str = "stage,generation,evaluations,best,gen_best,mean,q25,median,q75,sigma,failed,elapsed_s,validation\n";
const FIXED: &str = "stage,generation,index,status,fitness,metrics,merge_ms,eval_ms,key,error";

#[test]
fn ps_dfs_fixture_gets_every_chart_as_png_and_svg() {
    let (_tmp, dir) = fixture("ps_dfs_run");
    let written = plot_run(&dir).unwrap();
    assert_eq!(
        names(&written),
        [
            "fitness.png",
            "fitness.svg",
            "genome.png",
            "genome.svg",
            "dfs_fitness.png",
            "dfs_fitness.svg",
            "dfs_path.png",
            "dfs_path.svg"
        ]
    );
    for p in &written {
        assert_eq!(p.parent().unwrap(), dir.join("plots"));
        if p.extension().unwrap() == "png" {
            assert_png(p);
        } else {
            svg(p);
        }
    }
    // No temporary files left behind.
    let left: Vec<_> = fs::read_dir(dir.join("plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 8, "{left:?}");

    // The DFS stage's models come from best_path.json (the PS result, then the partner).
    let path = svg(&dir.join("plots/dfs_path.svg"));
    assert!(path.contains("model 0 (ps_best_model)") && path.contains("model 1 (code-tuned)"));

    let fitness = svg(&dir.join("plots/fitness.svg"));
    for label in [
        "best so far",
        "generation median",
        "validation of best so far",
        "4 failed",
    ] {
        assert!(fitness.contains(label), "fitness chart lacks '{label}'");
    }
}

#[test]
fn genome_heatmap_has_filter_sets_an_embed_row_and_the_best_values() {
    let (_tmp, dir) = fixture("ps_dfs_run");
    plot_run(&dir).unwrap();
    let text = svg(&dir.join("plots/genome.svg"));
    // Rows g0, g1, embed; columns model × filter set × param.
    for label in [
        "g0",
        "g1",
        "embed",
        "model0",
        "model1",
        "self_attn",
        "mlp",
        "rest",
        "weight",
        "density",
    ] {
        assert!(text.contains(label), "heatmap lacks '{label}'");
    }
    // The best row of candidates.csv (fitness 0.834915, generation 5 #7) is the one drawn.
    assert!(text.contains("generation 5 #7"));
    assert!(text.contains("method ties"));
    let cands = fs::read_to_string(dir.join("candidates.csv")).unwrap();
    let header: Vec<&str> = cands.lines().next().unwrap().split(',').collect();
    let best = cands.lines().find(|l| l.contains(",0.834915,")).unwrap();
    let best: Vec<&str> = best.split(',').collect();
    // The metrics JSON holds no comma here, so fields line up with the header.
    for gene in [
        "g0.model0.self_attn.weight",
        "embed.model1.rest.density",
        "g1.model1.mlp.density",
    ] {
        let i = header.iter().position(|h| *h == gene).unwrap();
        let v: f64 = best[i].parse().unwrap();
        assert!(
            text.contains(&format!("{v:.3}")),
            "heatmap lacks {gene} = {v:.3}"
        );
    }
}

#[test]
fn path_plot_draws_the_best_path_with_its_scales() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(
        dir.join("run.toml"),
        "name = \"dfs-demo\"\nseed = 3\n[genome]\nkind = \"dfs\"\n[optimizer]\noptimizer = \"cma\"\n\
         [sources]\nmodels = [\"/m/A\", \"/m/B/\"]\n",
    )
    .unwrap();
    fs::write(
        dir.join("candidates.csv"),
        format!(
            "{FIXED},hops,path\n\
             dfs,0,0,ok,0.5,{{}},1,2,aa,,2,0:0*1.000 1:1*1.000\n\
             dfs,0,1,ok,0.75,{{}},1,2,bb,,2,0:0*1.000 1:3*0.900\n\
             dfs,0,2,failed,,{{}},1,2,cc,\"shape mismatch, layer 3\",1,0:1*1.000\n"
        ),
    )
    .unwrap();
    fs::write(
        dir.join("generations.csv"),
        format!("{GENERATIONS_HEADER}dfs,0,3,0.75,0.75,0.625,0.5,0.625,0.75,0.1,1,2.0,\n"),
    )
    .unwrap();
    let written = plot_run(dir).unwrap();
    assert_eq!(
        names(&written),
        ["fitness.png", "fitness.svg", "path.png", "path.svg"]
    );
    assert_png(&dir.join("plots/path.png"));
    let text = svg(&dir.join("plots/path.svg"));
    assert!(text.contains("model 0 (A)") && text.contains("model 1 (B)"));
    assert!(text.contains("×0.900"), "the 0.900 scale is written");
    assert!(!text.contains("×1.000"), "scales of 1 are not written");
    assert!(text.contains("2 hops") && text.contains("fitness 0.750"));
}

#[test]
fn a_run_in_progress_plots_what_it_has() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("run.toml"), "name = \"x\"\n").unwrap();
    // A failed row and a last line cut mid-write (no newline).
    fs::write(
        dir.join("candidates.csv"),
        format!(
            "{FIXED},g0.model0.weight,g0.model1.weight,method,x.0,x.1\n\
             ps,0,0,ok,0.4,{{}},1,2,aa,,0.3,0.7,linear,0.3,0.7\n\
             ps,0,1,failed,,{{}},1,2,bb,boom,0.9,0.1,linear,0.9,0.1\n\
             ps,0,2,ok,0.6,{{}},1,2,cc,,0.2,0.8,linear,0.2,0.8\n\
             ps,0,3,ok,0.9,{{}},1,2,dd,,0.55"
        ),
    )
    .unwrap();
    // generations.csv: only its header so far.
    fs::write(dir.join("generations.csv"), GENERATIONS_HEADER).unwrap();
    let written = plot_run(dir).unwrap();
    assert_eq!(
        names(&written),
        ["fitness.png", "fitness.svg", "genome.png", "genome.svg"]
    );
    let genome = svg(&dir.join("plots/genome.svg"));
    // The cut row (fitness 0.9) is ignored: the best is the 0.6 row.
    assert!(
        genome.contains("fitness 0.600"),
        "best is the complete 0.6 row"
    );
    assert!(genome.contains("0.800") && genome.contains("0.200"));
}

#[test]
fn empty_logs_write_nothing_and_a_folder_that_is_not_a_run_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("run.toml"), "name = \"x\"\n").unwrap();
    fs::write(dir.join("candidates.csv"), "").unwrap();
    fs::write(dir.join("generations.csv"), GENERATIONS_HEADER).unwrap();
    assert!(plot_run(dir).unwrap().is_empty());

    let not_run = dir.join("plots-only");
    fs::create_dir_all(&not_run).unwrap();
    let err = plot_run(&not_run).unwrap_err();
    assert!(matches!(err, PlotError::NotARun { .. }));
    assert!(err.to_string().contains("plots-only"), "{err}");
}

#[test]
fn a_log_without_the_expected_columns_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("run.toml"), "name = \"x\"\n").unwrap();
    fs::write(dir.join("generations.csv"), "generation,score\n0,1\n").unwrap();
    let err = plot_run(dir).unwrap_err().to_string();
    assert!(
        err.contains("generations.csv") && err.contains("evaluations"),
        "{err}"
    );
}
