//! Builds the dashboard (aggregator/web) with npm and esbuild into `OUT_DIR/web`, and writes
//! `OUT_DIR/web_assets.rs`: the bundle's files as `include_bytes!`, served by `http/ui.rs`.
//!
//! `npm ci` runs when `web/node_modules` is missing or older than `web/package-lock.json`.
//! `FLEETWATCH_WEB_DIST=DIR` embeds an already built bundle instead (for builds without npm).

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let web = manifest.join("web");
    println!("cargo:rerun-if-env-changed=FLEETWATCH_WEB_DIST");
    for input in [
        "src",
        "index.html",
        "build.mjs",
        "package.json",
        "package-lock.json",
    ] {
        println!("cargo:rerun-if-changed=web/{input}");
    }
    let dist = match std::env::var_os("FLEETWATCH_WEB_DIST") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let dist = out.join("web");
            build_dashboard(&web, &dist);
            dist
        }
    };
    write_asset_table(&dist, &out.join("web_assets.rs"));
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "{what}: cannot start {:?} ({e}). The dashboard is built with Node.js (18 or newer) \
             and npm: install them (apt-get install nodejs npm), or set FLEETWATCH_WEB_DIST to a \
             built bundle",
            cmd.get_program()
        )
    });
    assert!(status.success(), "{what} failed ({status})");
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

fn build_dashboard(web: &Path, dist: &Path) {
    // Builds of the same checkout into different target directories share web/node_modules.
    let lock = std::fs::File::create(web.join(".build.lock")).expect("create web/.build.lock");
    lock.lock().expect("lock web/.build.lock");
    let installed = modified(&web.join("node_modules/.package-lock.json"));
    let wanted = modified(&web.join("package-lock.json"));
    if installed.is_none() || installed < wanted {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(web),
            "npm ci (the dashboard's dependencies)",
        );
    }
    run(
        Command::new("node")
            .arg("build.mjs")
            .arg(dist)
            .current_dir(web),
        "node build.mjs (bundling the dashboard)",
    );
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn write_asset_table(dist: &Path, dest: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dist)
        .unwrap_or_else(|e| panic!("read the dashboard bundle {}: {e}", dist.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "index.html"),
        "the dashboard bundle {} has no index.html",
        dist.display()
    );
    let mut code =
        String::from("/// The dashboard's files: (name, content type, entity tag, bytes).\n");
    code.push_str("static ASSETS: &[(&str, &str, &str, &[u8])] = &[\n");
    for name in &names {
        let path = dist.join(name);
        let bytes = std::fs::read(&path).expect("read a bundle file");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        writeln!(
            code,
            "    ({name:?}, {:?}, \"\\\"{:016x}\\\"\", include_bytes!({:?})),",
            content_type(name),
            hasher.finish(),
            path.display().to_string()
        )
        .expect("write to a String");
    }
    code.push_str("];\n");
    std::fs::write(dest, code).expect("write web_assets.rs");
}
