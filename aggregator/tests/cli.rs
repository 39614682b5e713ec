//! Command-line behaviour users and scripts rely on: check-config exit codes and messages,
//! unknown flags refused, pki commands.

mod support;

use std::process::Command;

fn run(bin: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn agg() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_fleetwatch-aggregator").into()
}

#[test]
fn check_config_accepts_shipped_files_and_names_problems() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = root.join("configs/aggregator.toml");
    assert_eq!(
        run(&agg(), &["check-config", "-c", shipped.to_str().unwrap()]).0,
        0
    );
    let agent_cfg = root.join("configs/agent.toml");
    assert_eq!(
        run(
            &support::agent_bin(),
            &["check-config", "-c", agent_cfg.to_str().unwrap()]
        )
        .0,
        0
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[fleet]\nstale_after_seconds = 100\ndown_after_seconds = 10\n",
    )
    .unwrap();
    let (code, text) = run(&agg(), &["check-config", "-c", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        text.contains("bad.toml") && text.contains("fleet.down_after_seconds"),
        "{text}"
    );

    std::fs::write(&bad, "[aggregator]\naddresses = 5\n").unwrap();
    let (code, text) = run(
        &support::agent_bin(),
        &["check-config", "-c", bad.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(
        text.contains("bad.toml") && text.contains("addresses"),
        "{text}"
    );
}

#[test]
fn unknown_flags_are_refused() {
    let (code, text) = run(&agg(), &["run", "--no-such-flag"]);
    assert_ne!(code, 0);
    assert!(text.contains("--no-such-flag"), "{text}");
}

#[test]
fn pki_commands_make_a_working_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("pki");
    let d = d.to_str().unwrap();
    assert_eq!(run(&agg(), &["pki", "init", "--dir", d]).0, 0);
    let (code, text) = run(&agg(), &["pki", "init", "--dir", d]);
    assert_ne!(code, 0);
    assert!(text.contains("already exists"), "{text}");
    assert_eq!(
        run(
            &agg(),
            &["pki", "issue", "--dir", d, "--server", "agg.example"]
        )
        .0,
        0
    );
    let (code, text) = run(&agg(), &["pki", "issue", "--dir", d, "--agent", "web-01"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0600"));
    let (code, text) = run(&agg(), &["pki", "issue", "--dir", d, "--agent", "bad/name"]);
    assert_ne!(code, 0);
    assert!(text.contains("invalid name"), "{text}");
    assert_eq!(run(&agg(), &["pki", "revoke", "--dir", d, "web-01"]).0, 0);
    let (code, text) = run(&agg(), &["pki", "revoke", "--dir", d, "nobody"]);
    assert_ne!(code, 0);
    assert!(text.contains("nobody"), "{text}");
}
