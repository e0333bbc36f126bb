//! `evomerge demo`, run as a user does: it writes its toy models, recipes, merges and search
//! run, and a second run replaces only what the demo itself wrote — runs and files a user added
//! under its folder survive.

use std::path::Path;
use std::process::Command;

fn demo(out: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_evomerge"))
        .args(["demo", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "evomerge demo failed:\n{so}\n{se}");
    so
}

#[test]
fn demo_reruns_without_deleting_what_the_user_added() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let table = demo(&out);
    for recipe in ["ties.yml", "dare_ties.toml", "frankenmerge.yml"] {
        assert!(table.contains(recipe), "{recipe} missing:\n{table}");
    }
    let run = out.join("search/results/toy/seed3");
    assert!(run.join("candidates.csv").exists());
    assert!(run.join("best.toml").exists());

    // The user's own things beside the demo's.
    let mine = out.join("search/results/toy/my-run");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep me").unwrap();
    std::fs::write(out.join("search/my-experiment.toml"), "name = \"mine\"").unwrap();
    std::fs::write(run.join("stale.txt"), "the demo's own run is replaced").unwrap();

    demo(&out);
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
        "keep me"
    );
    assert!(out.join("search/my-experiment.toml").exists());
    assert!(
        run.join("candidates.csv").exists(),
        "the demo's run was not redone"
    );
    assert!(
        !run.join("stale.txt").exists(),
        "the demo's old run was kept"
    );
}
