//! The mutation runner: seeds from the checked-in corpus, mutates them ([`crate::mutate`]) for
//! a time or run budget, and keeps every input that kills the target.
//!
//! A run is two processes. The *worker* executes the target; before each execution it writes
//! the input to `CRASHES/TARGET/running-PID` (a plain write into the page cache, so the bytes
//! survive the worker's death by abort or signal, which is what a stack overflow is). The
//! *supervisor* starts the worker, waits for it, and when it exits with anything but success
//! renames that file to `crash-HASH`, names the target and the file, and exits non-zero. A
//! panic (an invariant of a target) is caught in the worker and reported the same way, so one
//! path handles every kind of death. A worker that outlives its budget by [`HANG_GRACE`] is
//! killed and its input kept as a hang.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::mutate::Mutator;
use crate::targets::Target;

/// The stack a target runs on: the size of a main thread under Linux's default `ulimit -s`,
/// which is where the `virtfw` command parses its input. Fixed so that a depth that overflows
/// does so the same way in the runner, the replay test and the program.
pub const TARGET_STACK: usize = 8 << 20;

/// Inputs never grow past this many bytes (the deepest hostile documents are ~200 KiB).
pub const DEFAULT_MAX_LEN: usize = 1 << 20;

/// How long after its budget a worker may still run before it counts as hung.
pub const HANG_GRACE: Duration = Duration::from_secs(60);

/// Exit status of a worker whose target panicked (the input is in its running file).
const PANIC_EXIT: i32 = 86;

/// When a run stops.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub seconds: u64,
    /// Stop after this many executions (corpus replay included) even if time is left; with a
    /// fixed seed this makes a run exactly reproducible.
    pub runs: Option<u64>,
}

/// Everything a run needs.
#[derive(Clone)]
pub struct RunConfig {
    pub target: &'static Target,
    /// The target's corpus directory (every regular file in it is a seed).
    pub corpus: PathBuf,
    /// The crash directory root; this target's files go to `crashes/TARGET/`.
    pub crashes: PathBuf,
    pub seed: u64,
    pub budget: Budget,
    pub max_len: usize,
    /// Deepest nesting one mutation builds ([`crate::mutate::DEFAULT_MAX_NESTING`]).
    pub max_nesting: usize,
}

/// The directory of the checked-in corpus (`crates/virtfw-fuzz/corpus`).
pub fn default_corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Where crashing inputs go by default: `target/fuzz-crashes` of the workspace.
pub fn default_crash_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .join("target/fuzz-crashes")
}

/// A seed for a run that was not given one: different every run, printed so it can be given.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// The files of a corpus directory, sorted by name so every replay sees the same order.
pub fn corpus_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// FNV-1a of the input: names a crash file after its content, so the same crash found twice is
/// one file.
fn content_hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Run `f` on a thread with [`TARGET_STACK`] named `name` (Rust names the thread in its stack
/// overflow message, so an abort still says what it was running).
pub fn on_target_stack<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::Result<T> {
    std::thread::Builder::new()
        .name(name)
        .stack_size(TARGET_STACK)
        .spawn(f)
        .expect("spawn the target thread")
        .join()
}

/// What a worker did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStats {
    pub executions: u64,
    pub corpus_inputs: usize,
}

/// The worker: replay the corpus, then mutate until the budget is spent. Writes each input to
/// `running` before executing it. Returns `Err(executions)` when the target panicked, leaving
/// the input in `running`.
pub fn work(cfg: &RunConfig, running: &Path) -> io::Result<Result<WorkerStats, u64>> {
    let mut seeds: Vec<Vec<u8>> = corpus_files(&cfg.corpus)?
        .iter()
        .map(fs::read)
        .collect::<io::Result<_>>()?;
    let corpus_inputs = seeds.len();
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    let open = |path: &Path| {
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)
    };
    let file = open(running)?;
    let counter = open(&count_file(running))?;
    let run = cfg.target.run;
    let budget = cfg.budget;
    let max_len = cfg
        .max_len
        .max(seeds.iter().map(Vec::len).max().unwrap_or(0));
    let mut mutator =
        Mutator::new(cfg.seed, cfg.target.dictionary, max_len).with_max_nesting(cfg.max_nesting);
    let deadline = Instant::now() + Duration::from_secs(budget.seconds);
    let outcome = on_target_stack(
        cfg.target.name.to_string(),
        move || -> io::Result<Result<u64, u64>> {
            let mut executions: u64 = 0;
            let mut next = |executions: u64| -> Option<Vec<u8>> {
                if budget.runs.is_some_and(|r| executions >= r) {
                    return None;
                }
                if let Some(seed) = seeds
                    .get(executions as usize)
                    .filter(|_| (executions as usize) < corpus_inputs)
                {
                    return Some(seed.clone());
                }
                if Instant::now() >= deadline {
                    return None;
                }
                let base = mutator.below(seeds.len());
                let other = mutator.below(seeds.len());
                Some(mutator.mutate(&seeds[base], &seeds[other]))
            };
            while let Some(input) = next(executions) {
                record(&file, &input)?;
                executions += 1;
                counter.write_all_at(&executions.to_le_bytes(), 0)?;
                if std::panic::catch_unwind(|| run(&input)).is_err() {
                    return Ok(Err(executions));
                }
            }
            record(&file, &[])?;
            Ok(Ok(executions))
        },
    )
    .map_err(|_| io::Error::other("the worker thread died"))??;
    Ok(outcome.map(|executions| WorkerStats {
        executions,
        corpus_inputs,
    }))
}

/// The file beside `running` that holds the number of executions so far (8 bytes, little
/// endian), so a run that died by a signal can still be replayed with `--runs`.
fn count_file(running: &Path) -> PathBuf {
    running.with_extension("count")
}

fn read_count(running: &Path) -> Option<u64> {
    let bytes = fs::read(count_file(running)).ok()?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Leave `input` in the running file before it is executed.
fn record(file: &File, input: &[u8]) -> io::Result<()> {
    file.write_all_at(input, 0)?;
    file.set_len(input.len() as u64)
}

/// The worker's entry point in the child process: prints one summary line on success, exits
/// [`PANIC_EXIT`] when the target panicked.
pub fn worker_main(cfg: &RunConfig) -> i32 {
    let dir = cfg.crashes.join(cfg.target.name);
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("virtfw-fuzz: cannot create {}: {e}", dir.display());
        return 2;
    }
    let running = dir.join(format!("running-{}", std::process::id()));
    match work(cfg, &running) {
        Ok(Ok(stats)) => {
            let _ = fs::remove_file(&running);
            let _ = fs::remove_file(count_file(&running));
            println!(
                "executions={} corpus={}",
                stats.executions, stats.corpus_inputs
            );
            0
        }
        Ok(Err(executions)) => {
            println!("executions={executions} crashed");
            PANIC_EXIT
        }
        Err(e) => {
            eprintln!("virtfw-fuzz: {}: {e}", cfg.target.name);
            2
        }
    }
}

/// How a supervised run ended.
#[derive(Debug)]
pub enum RunResult {
    /// The budget was spent without a crash.
    Clean { executions: u64 },
    /// The target died; the input is in `file`.
    Crashed {
        file: PathBuf,
        reason: String,
        executions: Option<u64>,
    },
    /// The runner itself failed (corpus unreadable, …).
    Failed(String),
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(PANIC_EXIT), _) => "panicked (an invariant failed)".to_string(),
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!(
            "was killed by signal {sig}{}",
            if sig == libc::SIGABRT || sig == libc::SIGSEGV {
                " (abort: a stack overflow or another fatal error)"
            } else {
                ""
            }
        ),
        (None, None) => "ended for an unknown reason".to_string(),
    }
}

fn executions_of(stdout: &str) -> Option<u64> {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("executions="))
        .and_then(|n| n.parse().ok())
}

/// Run `cfg` under supervision: start the worker (`exe worker …`), wait for it (killing it
/// when it hangs), and turn its running file into a crash file when it died.
pub fn supervise(exe: &Path, cfg: &RunConfig) -> RunResult {
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .arg(cfg.target.name)
        .arg("--seed")
        .arg(cfg.seed.to_string())
        .arg("--seconds")
        .arg(cfg.budget.seconds.to_string())
        .arg("--corpus")
        .arg(&cfg.corpus)
        .arg("--crashes")
        .arg(&cfg.crashes)
        .arg("--max-len")
        .arg(cfg.max_len.to_string())
        .arg("--max-nesting")
        .arg(cfg.max_nesting.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(runs) = cfg.budget.runs {
        cmd.arg("--runs").arg(runs.to_string());
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return RunResult::Failed(format!("cannot start the worker: {e}")),
    };
    let pid = child.id();
    let running = cfg
        .crashes
        .join(cfg.target.name)
        .join(format!("running-{pid}"));
    let limit = Duration::from_secs(cfg.budget.seconds) + HANG_GRACE;
    let (status, stdout, stderr, hung) = match wait_with_limit(child, limit) {
        Ok(v) => v,
        Err(e) => return RunResult::Failed(format!("waiting for the worker: {e}")),
    };
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    if status.success() {
        return match executions_of(&stdout) {
            Some(executions) => RunResult::Clean { executions },
            None => RunResult::Failed(format!("the worker printed no summary: {stdout}")),
        };
    }
    let reason = if hung {
        format!(
            "hung (still running {}s after its budget)",
            HANG_GRACE.as_secs()
        )
    } else {
        describe(status)
    };
    let executions = executions_of(&stdout).or_else(|| read_count(&running));
    let _ = fs::remove_file(count_file(&running));
    match fs::read(&running) {
        Ok(data) => {
            let file = running.with_file_name(format!("crash-{:016x}", content_hash(&data)));
            if let Err(e) = fs::rename(&running, &file) {
                return RunResult::Failed(format!(
                    "the worker {reason}; its input is {} (rename failed: {e})\n{stderr}",
                    running.display()
                ));
            }
            RunResult::Crashed {
                file,
                reason: format!("{reason}\n{}", tail(&stderr, 20)),
                executions,
            }
        }
        Err(_) => RunResult::Failed(format!(
            "the worker {reason} before it ran any input\n{stderr}"
        )),
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wait for `child`, collecting its output; kill it after `limit`.
fn wait_with_limit(
    mut child: std::process::Child,
    limit: Duration,
) -> io::Result<(ExitStatus, Vec<u8>, Vec<u8>, bool)> {
    use std::io::Read;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > limit {
            hung = true;
            child.kill()?;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    Ok((status, out, err, hung))
}

/// Run `target` over `files` in this process, each on a fresh target-stack thread named
/// `TARGET FILE`. Returns the files whose run panicked (a stack overflow aborts the process,
/// and the abort message names the thread, hence the file).
pub fn replay(target: &'static Target, files: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut failed = Vec::new();
    for file in files {
        let data = fs::read(file)?;
        let run = target.run;
        let name = format!("{} {}", target.name, file.display());
        if on_target_stack(name, move || run(&data)).is_err() {
            failed.push(file.clone());
        }
    }
    Ok(failed)
}
