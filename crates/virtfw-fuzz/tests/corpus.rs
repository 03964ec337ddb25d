//! Every target over every file of its checked-in corpus, as part of `cargo test`: the corpus
//! holds the hostile inputs of issue 8, so this is their regression test.
//!
//! Each file runs in its own `virtfw-fuzz replay` process, so an input that overflows the stack
//! (which aborts the process) fails this test by name instead of killing the test binary, and
//! the inputs after it still run.

use std::path::Path;
use std::process::Command;

use virtfw_fuzz::runner::{corpus_files, default_corpus_root};
use virtfw_fuzz::TARGETS;

#[test]
fn every_target_passes_its_whole_corpus() {
    let exe = env!("CARGO_BIN_EXE_virtfw-fuzz");
    let mut failures = Vec::new();
    let mut runs = 0;
    for target in TARGETS {
        let dir = default_corpus_root().join(target.name);
        let files = corpus_files(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(!files.is_empty(), "{}: empty corpus", dir.display());
        for file in files {
            runs += 1;
            let out = Command::new(exe)
                .arg("replay")
                .arg(target.name)
                .arg(&file)
                .env("RUST_BACKTRACE", "0")
                .output()
                .expect("run virtfw-fuzz replay");
            if !out.status.success() {
                failures.push(format!(
                    "{} {}: {}\n{}",
                    target.name,
                    relative(&file),
                    out.status,
                    first_lines(&String::from_utf8_lossy(&out.stderr), 4)
                ));
            }
        }
    }
    assert!(runs > 0);
    assert!(
        failures.is_empty(),
        "{} of {runs} corpus inputs fail:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Every directory under corpus/ belongs to a target (a misspelt one would never run).
#[test]
fn every_corpus_directory_is_a_target() {
    for entry in std::fs::read_dir(default_corpus_root()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(
                TARGETS.iter().any(|t| t.name == name),
                "corpus/{name} is no target's corpus"
            );
        }
    }
}

fn relative(file: &Path) -> String {
    file.strip_prefix(default_corpus_root())
        .unwrap_or(file)
        .display()
        .to_string()
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("note:"))
        .take(n)
        .collect::<Vec<_>>()
        .join("\n")
}
