//! `evomerge methods` lists the registry: a method added as one file (the test-only
//! `test_scale`, registered by the `test-method` feature this crate's tests enable) shows up
//! with its parameters without any list in the CLI naming it.

use std::process::Command;

#[test]
fn methods_lists_every_registered_method_including_a_new_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_evomerge"))
        .arg("methods")
        .output()
        .expect("run evomerge methods");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let block = text
        .split("\ntest_scale")
        .nth(1)
        .unwrap_or_else(|| panic!("test_scale not listed:\n{text}"));
    let block: String = block.lines().take(4).collect::<Vec<_>>().join("\n");
    assert!(block.contains("factor (required)"), "{block}");
    assert!(block.contains("searched:  factor"), "{block}");
    for m in [
        "ties",
        "sce",
        "nearswap",
        "arcee_fusion",
        "ram",
        "ramplus_tl",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{m} "))),
            "{m} missing:\n{text}"
        );
    }
}
