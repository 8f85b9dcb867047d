//! Builds the browser console the relay embeds (`relay/web`), so that a deployed
//! relay stays one file:
//! - its npm packages (xterm.js and its addons, asciinema-player), installed with
//!   `npm ci` from `relay/web/package-lock.json` into `OUT_DIR` (the registry is the
//!   only network it needs, and npm's cache makes a rebuild offline);
//! - the page's protocol client (`relay/web/client`: agent-core's `Client` for
//!   `wasm32-unknown-unknown`), built by a nested cargo into its own target dir;
//! - a table of every file served under `/assets/`, with its type and ETag
//!   (`assets.rs`, included by `src/web/assets.rs`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Files of npm packages the page loads: (served name, path under node_modules).
const VENDOR: &[(&str, &str)] = &[
    ("xterm.mjs", "@xterm/xterm/lib/xterm.mjs"),
    ("xterm.css", "@xterm/xterm/css/xterm.css"),
    ("addon-fit.mjs", "@xterm/addon-fit/lib/addon-fit.mjs"),
    ("addon-webgl.mjs", "@xterm/addon-webgl/lib/addon-webgl.mjs"),
    (
        "addon-unicode-graphemes.mjs",
        "@xterm/addon-unicode-graphemes/lib/addon-unicode-graphemes.mjs",
    ),
    (
        "addon-search.mjs",
        "@xterm/addon-search/lib/addon-search.mjs",
    ),
    (
        "addon-serialize.mjs",
        "@xterm/addon-serialize/lib/addon-serialize.mjs",
    ),
    (
        "addon-clipboard.mjs",
        "@xterm/addon-clipboard/lib/addon-clipboard.mjs",
    ),
    (
        "asciinema-player.min.js",
        "asciinema-player/dist/bundle/asciinema-player.min.js",
    ),
    (
        "asciinema-player.css",
        "asciinema-player/dist/bundle/asciinema-player.css",
    ),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let web = manifest.join("web");
    for p in [
        "web/src",
        "web/package.json",
        "web/package-lock.json",
        "web/client",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    // The WebAssembly client's sources, dependencies and profile.
    for p in [
        "../agent-core/src",
        "../agent-core/Cargo.toml",
        "../Cargo.toml",
        "../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }

    let modules = npm(&web, &out.join("npm"));
    let wasm = wasm(&manifest, &out.join("wasm"));

    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for (name, rel) in VENDOR {
        files.push((name.to_string(), modules.join(rel)));
    }
    files.push(("client.wasm".into(), wasm));
    for entry in std::fs::read_dir(web.join("src")).expect("relay/web/src") {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.push((name, path));
        }
    }
    files.sort();

    let gz = out.join("gz");
    std::fs::create_dir_all(&gz).unwrap();
    let mut table = String::from("&[\n");
    for (name, path) in &files {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("the console's file {} is missing: {e}", path.display()));
        let zipped = gz.join(format!("{name}.gz"));
        std::fs::write(&zipped, gzip(&bytes)).unwrap();
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("js" | "mjs") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("wasm") => "application/wasm",
            Some("svg") => "image/svg+xml",
            Some("png") => "image/png",
            _ => "application/octet-stream",
        };
        let h = fnv(&bytes);
        writeln!(
            table,
            "    Asset {{ name: {name:?}, kind: {kind:?}, etag: \"\\\"{h:016x}\\\"\", etag_gzip: \"\\\"{h:016x}-gz\\\"\", body: include_bytes!({:?}), gzip: include_bytes!({:?}) }},",
            path.display().to_string(),
            zipped.display().to_string()
        )
        .unwrap();
    }
    table.push(']');
    std::fs::write(out.join("assets.rs"), table).unwrap();
}

/// `npm ci` into `dir` when the lock file differs from the one installed there.
fn npm(web: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let lock = std::fs::read(web.join("package-lock.json")).expect("relay/web/package-lock.json");
    let stamp = dir.join("installed-lock.json");
    let modules = dir.join("node_modules");
    if std::fs::read(&stamp).ok().as_deref() == Some(&lock[..]) && modules.is_dir() {
        return modules;
    }
    std::fs::copy(web.join("package.json"), dir.join("package.json")).unwrap();
    std::fs::write(dir.join("package-lock.json"), &lock).unwrap();
    let mut npm = Command::new("npm");
    npm.args([
        "ci",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ])
    .current_dir(dir);
    let status = quiet(&mut npm).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "error: `npm ci` for the relay's browser console failed ({s}); it needs the npm \
             registry or npm's cache"
        ),
        Err(e) => panic!(
            "error: the relay embeds its browser console, built with npm, and npm cannot run \
             ({e}): install it (`apt-get install nodejs npm`; tests/run-all.sh does)"
        ),
    }
    std::fs::write(&stamp, &lock).unwrap();
    modules
}

/// The page's protocol client for `wasm32-unknown-unknown`, built by a nested cargo
/// into its own target dir (the outer build holds its own).
fn wasm(manifest: &Path, dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "web-client",
        "--manifest-path",
    ])
    .arg(manifest.join("web/client/Cargo.toml"))
    .arg("--target-dir")
    .arg(dir);
    // What the outer build sets for itself must not leak in: its wrappers (clippy),
    // its flags (a sanitizer's), its target dir.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    // (CARGO_MAKEFLAGS stays: the nested build shares the outer one's job slots.)
    let status = quiet(&mut cmd).status().expect("cargo runs");
    if !status.success() {
        panic!(
            "error: building the console's WebAssembly client failed; if the target is \
             missing: `rustup target add wasm32-unknown-unknown` (tests/run-all.sh does)"
        );
    }
    dir.join("wasm32-unknown-unknown/release/web_client.wasm")
}

/// A child's standard output goes to standard error: on a build script's own
/// output a line it printed could read as a directive to cargo.
fn quiet(cmd: &mut Command) -> &mut Command {
    use std::os::fd::AsFd;
    let err = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .expect("stderr");
    cmd.stdout(std::process::Stdio::from(err))
}

/// `bytes` gzipped, at the best compression (done once, at build time).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(bytes).unwrap();
    z.finish().unwrap()
}

/// FNV-1a, 64 bits: an ETag that changes with the file.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
