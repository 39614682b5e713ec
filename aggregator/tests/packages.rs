//! The deb and rpm packages, end to end: `packaging/test-packages.sh` builds the four packages,
//! installs the debs into a fresh Debian root made with debootstrap, runs the installed
//! binaries there, upgrades and purges (see the script's header). It needs root; without it the
//! test is skipped, unless `FLEETWATCH_REQUIRE_PEERS=1` (as in CI) makes that a failure.

use std::process::Command;

#[test]
fn packages_install_run_upgrade_and_purge_in_a_fresh_debian_root() {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let msg = "the package test needs root (debootstrap, chroot, dpkg)";
        if std::env::var("FLEETWATCH_REQUIRE_PEERS").is_ok_and(|v| v == "1") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let log = repo.join("target/pkgtest-output.log");
    std::fs::create_dir_all(repo.join("target")).unwrap();
    let out = std::fs::File::create(&log).unwrap();
    let status = Command::new("bash")
        .arg(repo.join("packaging/test-packages.sh"))
        .current_dir(&repo)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .expect("running packaging/test-packages.sh");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let failures: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL")).collect();
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("packages:"))
        .unwrap_or("no summary");
    eprintln!("{summary} (full output: {})", log.display());
    let tail: Vec<&str> = text
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert!(
        status.success(),
        "package test failed: {summary}\n{}\n--- last lines:\n{}",
        failures.join("\n"),
        tail.join("\n")
    );
}
