//! `virtfw-fuzz`: run, replay and list the fuzz targets (docs/fuzzing.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Args, Parser, Subcommand};
use virtfw_fuzz::runner::{self, Budget, RunConfig, RunResult};
use virtfw_fuzz::{find, Target, TARGETS};

#[derive(Parser)]
#[command(
    name = "virtfw-fuzz",
    about = "Mutation fuzzing of virtfw's parsers (stable toolchain)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Time budget per target, in seconds [default: $VIRTFW_FUZZ_SECONDS, else 60].
    #[arg(long)]
    seconds: Option<u64>,
    /// Stop after this many executions (corpus replay included): with --seed, an exact replay.
    #[arg(long)]
    runs: Option<u64>,
    /// The generator's seed (printed by every run; `all` adds the target's index).
    #[arg(long)]
    seed: Option<u64>,
    /// Crash directory root (inputs go to CRASHES/TARGET/).
    #[arg(long)]
    crashes: Option<PathBuf>,
    /// Largest input the mutator builds, in bytes.
    #[arg(long, default_value_t = runner::DEFAULT_MAX_LEN)]
    max_len: usize,
    /// Deepest nesting one mutation builds (lower it to look past a known deep-input bug).
    #[arg(long, default_value_t = virtfw_fuzz::mutate::DEFAULT_MAX_NESTING)]
    max_nesting: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the targets.
    List,
    /// Fuzz one target.
    Run {
        target: String,
        /// Corpus directory (default: the checked-in corpus/TARGET).
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Fuzz every target, JOBS at a time.
    All {
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Corpus root (default: the checked-in corpus/).
        #[arg(long)]
        corpus_root: Option<PathBuf>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Run a target once over files or directories (a crash file, a corpus), in this process.
    Replay { target: String, paths: Vec<PathBuf> },
    /// Internal: the process that executes a target for `run`.
    #[command(hide = true)]
    Worker {
        target: String,
        #[arg(long)]
        corpus: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
}

fn target(name: &str) -> Result<&'static Target, String> {
    find(name).ok_or_else(|| {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!("unknown target '{name}' (targets: {})", names.join(", "))
    })
}

impl RunArgs {
    fn seconds(&self) -> u64 {
        self.seconds
            .or_else(|| std::env::var("VIRTFW_FUZZ_SECONDS").ok()?.parse().ok())
            .unwrap_or(60)
    }
}

fn config(target: &'static Target, corpus: PathBuf, args: &RunArgs, seed: u64) -> RunConfig {
    RunConfig {
        target,
        corpus,
        crashes: args
            .crashes
            .clone()
            .unwrap_or_else(runner::default_crash_root),
        seed,
        budget: Budget {
            seconds: args.seconds(),
            runs: args.runs,
        },
        max_len: args.max_len,
        max_nesting: args.max_nesting,
    }
}

/// One line per finished run; true when it was clean.
fn report(cfg: &RunConfig, result: &RunResult) -> bool {
    let name = cfg.target.name;
    match result {
        RunResult::Clean { executions } => {
            println!(
                "{name}: ok, {executions} executions in {}s, seed {}",
                cfg.budget.seconds, cfg.seed
            );
            true
        }
        RunResult::Crashed {
            file,
            reason,
            executions,
        } => {
            let runs = executions.map_or("?".to_string(), |e| e.to_string());
            eprintln!(
                "{name}: CRASH: the target {reason}\n{name}: input saved as {file}\n{name}: after {runs} executions, seed {seed}\n{name}: replay the input: virtfw-fuzz replay {name} {file}\n{name}: replay the run: virtfw-fuzz run {name} --seed {seed} --runs {runs}",
                file = file.display(),
                seed = cfg.seed,
            );
            false
        }
        RunResult::Failed(why) => {
            eprintln!("{name}: runner failure: {why}");
            false
        }
    }
}

fn exe() -> PathBuf {
    std::env::current_exe().expect("the path of virtfw-fuzz")
}

fn run_all(jobs: usize, root: PathBuf, args: &RunArgs) -> bool {
    let base = args.seed.unwrap_or_else(runner::fresh_seed);
    println!(
        "virtfw-fuzz: {} targets, {}s each, {jobs} at a time, base seed {base}",
        TARGETS.len(),
        args.seconds()
    );
    let queue: Arc<Mutex<Vec<RunConfig>>> = Arc::new(Mutex::new(
        TARGETS
            .iter()
            .enumerate()
            .rev()
            .map(|(i, t)| config(t, root.join(t.name), args, base.wrapping_add(i as u64)))
            .collect(),
    ));
    let exe = exe();
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let queue = Arc::clone(&queue);
            let exe = exe.clone();
            std::thread::spawn(move || {
                let (mut passed, mut failed) = (0, 0);
                loop {
                    let Some(cfg) = queue.lock().expect("queue").pop() else {
                        return (passed, failed);
                    };
                    if report(&cfg, &runner::supervise(&exe, &cfg)) {
                        passed += 1;
                    } else {
                        failed += 1;
                    }
                }
            })
        })
        .collect();
    let results: Vec<(usize, usize)> = workers
        .into_iter()
        .map(|w| w.join().unwrap_or((0, 1)))
        .collect();
    let passed: usize = results.iter().map(|r| r.0).sum();
    let failed: usize = results.iter().map(|r| r.1).sum();
    println!("fuzz: {passed} passed, {failed} failed");
    failed == 0
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ok = match cli.command {
        Cmd::List => {
            for t in TARGETS {
                println!("{}", t.name);
            }
            true
        }
        Cmd::Run {
            target: name,
            corpus,
            args,
        } => match target(&name) {
            Ok(t) => {
                let seed = args.seed.unwrap_or_else(runner::fresh_seed);
                let corpus = corpus.unwrap_or_else(|| runner::default_corpus_root().join(t.name));
                let cfg = config(t, corpus, &args, seed);
                println!("{}: seed {seed}, {}s", t.name, args.seconds());
                report(&cfg, &runner::supervise(&exe(), &cfg))
            }
            Err(e) => {
                eprintln!("virtfw-fuzz: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::All {
            jobs,
            corpus_root,
            args,
        } => run_all(
            jobs,
            corpus_root.unwrap_or_else(runner::default_corpus_root),
            &args,
        ),
        Cmd::Replay {
            target: name,
            paths,
        } => match target(&name).map(|t| (t, expand(&paths))) {
            Ok((t, Ok(files))) => match runner::replay(t, &files) {
                Ok(failed) => {
                    for f in &failed {
                        eprintln!("{}: FAILED on {}", t.name, f.display());
                    }
                    println!("{}: {} files, {} failed", t.name, files.len(), failed.len());
                    failed.is_empty()
                }
                Err(e) => {
                    eprintln!("virtfw-fuzz: {e}");
                    false
                }
            },
            Ok((_, Err(e))) | Err(e) => {
                eprintln!("virtfw-fuzz: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::Worker {
            target: name,
            corpus,
            args,
        } => {
            let Ok(t) = target(&name) else {
                return ExitCode::from(2);
            };
            let seed = args.seed.unwrap_or_else(runner::fresh_seed);
            let code = runner::worker_main(&config(t, corpus, &args, seed));
            return ExitCode::from(code as u8);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Files of the given paths; a directory stands for its files.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            files.extend(runner::corpus_files(p).map_err(|e| format!("{}: {e}", p.display()))?);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}
