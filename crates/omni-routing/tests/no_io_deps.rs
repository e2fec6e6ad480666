#![allow(missing_docs)]
// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The routing core is pure: no async runtime, no Kafka client, no HTTP stack, no clock.
//! These tests ask cargo for omni-routing's own normal (non-dev) dependency tree, so feature
//! unification with the rest of the workspace does not blur the answer (`-p omni-routing`
//! resolves only what building omni-routing alone would build).

use std::process::Command;

/// Runs `cargo tree -p omni-routing <args>` and returns its output.
fn cargo_tree(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tree", "-p", "omni-routing"])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo tree prints UTF-8")
}

/// The package name of a `cargo tree --prefix none|depth` line (`1tokio v1.0 (...)` → `tokio`).
fn package_name(line: &str) -> &str {
    line.trim_start_matches(|c: char| c.is_ascii_digit())
        .split_whitespace()
        .next()
        .unwrap_or("")
}

#[test]
fn no_runtime_network_or_kafka_dependencies() {
    let tree = cargo_tree(&["-e", "normal", "--prefix", "none"]);
    let packages: Vec<&str> = tree.lines().map(package_name).collect();
    assert!(
        packages.contains(&"omni-routing") && packages.contains(&"chrono"),
        "unexpected cargo tree output:\n{tree}"
    );
    for banned in ["tokio", "rdkafka", "axum", "hyper", "reqwest", "mio"] {
        assert!(
            !packages.contains(&banned),
            "omni-routing depends on {banned}; the routing core must stay free of I/O:\n{tree}"
        );
    }
}

/// Which packages enable chrono's `clock` feature (which reads the system time).
///
/// Known and accepted: omni-core enables it (through the workspace `chrono` dependency, for the
/// envelope's timestamps), and omni-routing depends on omni-core for ids and channel kinds — so
/// chrono *is* built with `clock` when omni-routing is built, and a test that chrono is built
/// without it cannot pass until omni-core drops the feature. What holds, and is asserted:
/// omni-routing itself never asks for `clock` (its Cargo.toml sets `default-features = false`
/// with `std` and `serde` only), and no package other than omni-core turns it on. Purity against
/// the clock is therefore a matter of code (time is always an input), checked below by
/// `source_never_reads_the_clock`.
#[test]
fn omni_routing_does_not_enable_chrono_clock() {
    // Inverted tree with depths: under the first (non-`(*)`) `chrono feature "clock"` line,
    // the lines one level deeper are what enables the feature.
    let tree = cargo_tree(&["-e", "normal,features", "-i", "chrono", "--prefix", "depth"]);
    let depth = |line: &str| -> Option<usize> {
        let digits: String = line.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let lines: Vec<&str> = tree.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.contains("chrono v0.4")),
        "unexpected cargo tree output:\n{tree}"
    );
    let mut enablers: Vec<String> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(d) = depth(line) else { continue };
        let body = line.trim_start_matches(|c: char| c.is_ascii_digit());
        if body.starts_with("chrono feature \"clock\"") && !body.ends_with("(*)") {
            for child in &lines[i + 1..] {
                match depth(child) {
                    Some(cd) if cd == d + 1 => enablers.push(package_name(child).to_owned()),
                    Some(cd) if cd <= d => break,
                    _ => {}
                }
            }
        }
    }
    assert!(
        !enablers.iter().any(|p| p == "omni-routing"),
        "omni-routing enables chrono's clock feature itself:\n{tree}"
    );
    for p in &enablers {
        assert!(
            p == "omni-core" || p == "chrono",
            "{p} enables chrono's clock feature in omni-routing's build (only omni-core is \
             known to):\n{tree}"
        );
    }
}

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &std::path::Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
}

/// No clock reads or I/O in the engine's code: time only ever comes in as `now`.
#[test]
fn source_never_reads_the_clock() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("engine.rs")),
        "no engine sources in {}",
        src.display()
    );
    for file in files {
        // Unit tests may do what they like.
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        // A trailing `#[cfg(test)] mod tests` is test-only.
        let code = text
            .find("#[cfg(test)]\nmod tests")
            .map_or(text.as_str(), |end| &text[..end]);
        for banned in [
            "SystemTime",
            "Instant::now",
            "Utc::now",
            "Local::now",
            "chrono::Utc",
            "std::thread",
            "std::net",
            "std::fs",
        ] {
            assert!(
                !code.contains(banned),
                "{} uses {banned}: the routing core takes time as an input and does no I/O",
                file.display()
            );
        }
    }
}
