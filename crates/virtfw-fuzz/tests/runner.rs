//! The runner's own behaviour, with the self-test targets that fail on purpose: a panicking
//! and a stack-overflowing input are kept in the crash directory, named in the report, and make
//! the run fail; a seed replays a run exactly; a clean run reports its executions.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fuzz(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_virtfw-fuzz"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("VIRTFW_FUZZ_SECONDS")
        .output()
        .expect("run virtfw-fuzz")
}

fn corpus(dir: &Path, input: &[u8]) -> PathBuf {
    let c = dir.join("corpus");
    fs::create_dir_all(&c).unwrap();
    fs::write(c.join("seed"), input).unwrap();
    c
}

/// The crash file the report names (`input saved as PATH`).
fn saved_file(stderr: &str) -> PathBuf {
    let line = stderr
        .lines()
        .find_map(|l| l.split("input saved as ").nth(1))
        .unwrap_or_else(|| panic!("no saved input in the report:\n{stderr}"));
    PathBuf::from(line.trim())
}

fn run_target(target: &str, dir: &Path, input: &[u8], extra: &[&str]) -> Output {
    let corpus = corpus(dir, input);
    let crashes = dir.join("crashes");
    let mut args = vec![
        "run",
        target,
        "--corpus",
        corpus.to_str().unwrap(),
        "--crashes",
        crashes.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    fuzz(&args)
}

/// Run `target` from a one-file corpus holding `input`; the run must fail with a crash report
/// naming the target and a saved file under the crash directory. Returns the report and the
/// file.
fn expect_crash(target: &str, dir: &Path, input: &[u8], extra: &[&str]) -> (String, PathBuf) {
    let out = run_target(target, dir, input, extra);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "no crash:\n{stderr}");
    assert!(stderr.contains(&format!("{target}: CRASH")), "{stderr}");
    let file = saved_file(&stderr);
    assert!(
        file.starts_with(dir.join("crashes").join(target)),
        "{stderr}"
    );
    (stderr, file)
}

#[test]
fn a_panicking_input_is_saved_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let (stderr, file) = expect_crash(
        "selftest_panic",
        dir.path(),
        b"xxPANICxx",
        &["--seconds", "30", "--seed", "1"],
    );
    assert!(stderr.contains("panicked"), "{stderr}");
    assert_eq!(fs::read(&file).unwrap(), b"xxPANICxx");
    // Nothing else is left behind: the running file became the crash file.
    let left: Vec<_> = fs::read_dir(dir.path().join("crashes/selftest_panic"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, vec![file.clone()]);
    // And the crash replays.
    let replay = fuzz(&["replay", "selftest_panic", file.to_str().unwrap()]);
    assert!(!replay.status.success());
    assert!(String::from_utf8_lossy(&replay.stderr).contains("FAILED on"));
}

#[test]
fn a_stack_overflow_leaves_its_input_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (stderr, file) = expect_crash(
        "selftest_overflow",
        dir.path(),
        b"go DEEP",
        &["--seconds", "30", "--seed", "2"],
    );
    assert!(stderr.contains("killed by signal"), "{stderr}");
    assert!(stderr.contains("overflowed its stack"), "{stderr}");
    assert!(stderr.contains("after 1 executions"), "{stderr}");
    assert_eq!(fs::read(&file).unwrap(), b"go DEEP");
}

#[test]
fn mutation_finds_a_dictionary_word_and_the_seed_replays_it() {
    let found = |dir: &Path| {
        let (stderr, file) = expect_crash(
            "selftest_panic",
            dir,
            b"hello world",
            &["--seconds", "60", "--runs", "100000", "--seed", "42"],
        );
        let data = fs::read(&file).unwrap();
        assert!(data.windows(5).any(|w| w == b"PANIC"));
        (file.file_name().unwrap().to_owned(), stderr)
    };
    let (a, report_a) = found(tempfile::tempdir().unwrap().path());
    let (b, report_b) = found(tempfile::tempdir().unwrap().path());
    assert_eq!(a, b, "the same seed found different inputs");
    let after = |r: &str| {
        r.lines()
            .find_map(|l| l.split(": after ").nth(1))
            .map(str::to_string)
    };
    assert!(after(&report_a).is_some(), "{report_a}");
    assert_eq!(after(&report_a), after(&report_b));
}

#[test]
fn a_clean_run_reports_its_executions() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_target(
        "command_args",
        dir.path(),
        b"add\nrule\nip\nt\nc\ncounter",
        &["--seconds", "60", "--runs", "500", "--seed", "7"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("command_args: ok, 500 executions"),
        "{stdout}"
    );
    assert!(stdout.contains("seed 7"), "{stdout}");
}

#[test]
fn unknown_target_is_a_usage_error() {
    let out = fuzz(&["run", "no_such_target", "--seconds", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("transaction_xml"));
}
