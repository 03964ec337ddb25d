//! The test double of a host: records every invocation, answers from a script first and from
//! a model of the host's ruleset ([`FakeModel`], in `model.rs` and `xtables.rs`) otherwise.
//!
//! It is for tests only; production dry runs use [`DryRun`](super::DryRun), whose answers never
//! depend on a model or a script.

use std::sync::Mutex;

mod model;
mod xtables;

pub use model::{FakeModel, NftChain, NftModel, NftRule, NftTable};
pub use xtables::{XtChain, XtModel};

use super::{Executor, Invocation, Output};
use crate::error::ExecError;
use crate::transcript;
use model::Step;

/// How the fake answers a matching command.
#[derive(Debug, Clone)]
pub enum FakeResponse {
    /// Exit with this status and output.
    Output(Output),
    /// Behave as if the program did not exist.
    Missing,
}

impl FakeResponse {
    /// Exit status `status` with `stderr`.
    pub fn fail(status: i32, stderr: impl Into<String>) -> Self {
        FakeResponse::Output(Output {
            status,
            stdout: String::new(),
            stderr: stderr.into(),
        })
    }
    /// Success with `stdout`.
    pub fn stdout(stdout: impl Into<String>) -> Self {
        FakeResponse::Output(Output::ok(stdout))
    }
}

type Matcher = Box<dyn Fn(&[String]) -> bool + Send + Sync>;

struct State {
    log: Vec<(Vec<String>, Option<Vec<u8>>)>,
    model: FakeModel,
    script: Vec<(Matcher, FakeResponse)>,
    fixed_handle: Option<u64>,
    strict: bool,
    missing: Vec<String>,
    batching: bool,
}

/// An [`Executor`] that runs nothing.
///
/// Every invocation is recorded ([`FakeExecutor::commands`], [`FakeExecutor::invocations`],
/// [`FakeExecutor::transcript`]). Responses scripted with [`FakeExecutor::on`] come first: the
/// first matching entry answers and the model is not changed. Everything else is answered by
/// the model, which behaves like nft 1.0.6 and iptables 1.8.9 (nf_tables) as
/// `tests/fake_model.rs` compares them in namespaces:
///
/// * nft, one command or a batch read with `-f` (one transaction: all or nothing, every bad
///   line reported as `/dev/stdin:LINE:…`; `-c` keeps nothing): `add table` of an existing
///   table succeeds and echoes nothing, `add chain` of an existing chain echoes its *existing*
///   handle, `create` of an existing one fails "File exists"; a create echoes (with `-e`/`-ae`)
///   the command and `# handle N`, N counting up from 1 across all objects (or a fixed number,
///   as libvirt's harness does with 5309, see [`FakeExecutor::with_fixed_handle`]); `add`/
///   `insert rule` honour `position`/`handle`/`index`; `delete rule|chain|table` of something
///   missing fails "No such file or directory" (exit 1); `delete chain` takes its rules along
///   and fails "Device or resource busy" while a rule jumps to it; `flush chain|table|ruleset`;
///   `list table|ruleset|tables` (handles with `-a`) in nft's text format, `-j list tables` in
///   its JSON.
/// * The iptables family, in [`FakeExecutor::strict`] mode only: `-A`/`-I`/`-D`/`--check`/
///   `-N`/`-X`/`-F`/`-P`/`-S` on rules kept as their specification, and `*-restore
///   --noflush [--test]` committing section by section, a failing line rolling its section
///   back and named as the tools name it. Without `strict`, these programs succeed with empty
///   output, as the engine's scenario tests expect.
/// * Without `strict`, a chain or rule command on an nft table the model does not hold (and
///   `delete`/`flush` of such a table) succeeds, creates echoing a handle, without being
///   modelled, so tests that never create their tables keep working.
///
/// The model can be set up and compared: [`FakeExecutor::with_model`], [`FakeExecutor::load`],
/// [`FakeExecutor::model`], [`FakeExecutor::dump`] (serde JSON).
pub struct FakeExecutor {
    state: Mutex<State>,
}

impl Default for FakeExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeExecutor {
    /// A fake where everything succeeds.
    pub fn new() -> Self {
        FakeExecutor {
            state: Mutex::new(State {
                log: Vec::new(),
                model: FakeModel::default(),
                script: Vec::new(),
                fixed_handle: None,
                strict: false,
                missing: Vec::new(),
                batching: false,
            }),
        }
    }

    /// Answer every `-ae` create with this handle (libvirt's harness uses 5309).
    pub fn with_fixed_handle(self, handle: u64) -> Self {
        self.state.lock().unwrap().fixed_handle = Some(handle);
        self
    }

    /// Accept batches (`nft -f -`, `*tables-restore`), simulating the kernel's all-or-nothing
    /// transaction: each line of a batch is matched against the script as the argv it would have
    /// run as alone (`nft [-ae] WORDS…`, `iptables -w --table T WORDS…`); when a scripted failure
    /// matches any line the whole batch fails (nft: `/dev/stdin:LINE:1`, restore: `line N
    /// failed`) and echoes nothing. Without this the fake asks for the per-command path, so
    /// transcripts stay libvirt's.
    pub fn with_batching(self) -> Self {
        self.state.lock().unwrap().batching = true;
        self
    }

    /// Behave as if `program` were not installed: [`Executor::check_program`] refuses it (so
    /// `apply` fails before running anything, as with the real executor) and running it fails
    /// with [`ExecError::NotFound`].
    pub fn without_program(self, program: &str) -> Self {
        self.state.lock().unwrap().missing.push(program.to_string());
        self
    }

    /// Script the response for every argv (program included) that `matcher` accepts.
    pub fn on(
        self,
        matcher: impl Fn(&[String]) -> bool + Send + Sync + 'static,
        response: FakeResponse,
    ) -> Self {
        self.state
            .lock()
            .unwrap()
            .script
            .push((Box::new(matcher), response));
        self
    }

    /// A matcher: the argv contains all of `needles`, in this order (not necessarily adjacent).
    pub fn args_contain(needles: &[&str]) -> impl Fn(&[String]) -> bool + Send + Sync + 'static {
        let needles: Vec<String> = needles.iter().map(|s| s.to_string()).collect();
        move |argv: &[String]| {
            let mut it = argv.iter();
            needles.iter().all(|n| it.any(|a| a == n))
        }
    }

    /// Every argv run so far, in order.
    pub fn commands(&self) -> Vec<Vec<String>> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// Every argv with the standard input it was given.
    pub fn invocations(&self) -> Vec<(Vec<String>, Option<Vec<u8>>)> {
        self.state.lock().unwrap().log.clone()
    }

    /// The commands run so far, in libvirt's transcript format.
    pub fn transcript(&self) -> String {
        transcript::transcript(&self.commands())
    }

    /// Forget the recorded commands (the script stays).
    pub fn clear(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// Refuse, like the real tools, commands on tables, chains and rules the model does not
    /// hold. By default (for engine tests that never create what they touch) a chain or rule
    /// command on an nft table the model does not hold, and an iptables-family command on a
    /// chain or rule it does not hold, succeed without being modelled.
    pub fn strict(self) -> Self {
        self.state.lock().unwrap().strict = true;
        self
    }

    /// Start from this host state (see [`FakeExecutor::dump`]).
    pub fn with_model(self, model: FakeModel) -> Self {
        self.state.lock().unwrap().model = model;
        self
    }

    /// The modelled host state now.
    pub fn model(&self) -> FakeModel {
        self.state.lock().unwrap().model.clone()
    }

    /// The modelled host state as JSON, to store a host state or compare one after an apply.
    pub fn dump(&self) -> String {
        serde_json::to_string_pretty(&self.model()).expect("the model serialises")
    }

    /// Replace the modelled host state by one [`FakeExecutor::dump`] wrote.
    pub fn load(&self, json: &str) -> Result<(), serde_json::Error> {
        let model: FakeModel = serde_json::from_str(json)?;
        self.state.lock().unwrap().model = model;
        Ok(())
    }
}

/// The lines of a batch invocation as the argv each would run as alone, with the line number
/// the real program would blame; `None` when `argv` is not a batch.
fn batch_lines(argv: &[String], stdin: &[u8]) -> Option<Vec<(usize, Vec<String>)>> {
    let text = String::from_utf8_lossy(stdin);
    let program = argv.first()?.as_str();
    let split = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .map(|w| w.trim_matches('"').to_string())
            .collect()
    };
    if program == "nft" && argv.iter().any(|a| a == "-f") {
        let echo = is_echo(argv);
        return Some(
            text.lines()
                .enumerate()
                .map(|(n, line)| {
                    let words = split(line);
                    let mut one = vec!["nft".to_string()];
                    if echo && crate::nft::nft_create(&words).is_some() {
                        one.push("-ae".to_string());
                    }
                    one.extend(words);
                    (n + 1, one)
                })
                .collect(),
        );
    }
    let lead: &[&str] = match program {
        "iptables-restore" => &["iptables", "-w"],
        "ip6tables-restore" => &["ip6tables", "-w"],
        "ebtables-restore" => &["ebtables", "--concurrent"],
        _ => return None,
    };
    let mut table = "filter".to_string();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if !line.is_empty() && line != "COMMIT" && !line.starts_with('#') {
            let mut one: Vec<String> = lead.iter().map(|s| s.to_string()).collect();
            one.extend(["--table".to_string(), table.clone()]);
            one.extend(split(line));
            out.push((n + 1, one));
        }
    }
    Some(out)
}

fn is_echo(argv: &[String]) -> bool {
    argv.first().is_some_and(|p| p == "nft")
        && argv
            .iter()
            .skip(1)
            .take_while(|a| a.starts_with('-'))
            .any(|a| a == "-ae" || a == "-e" || a == "--echo")
}

impl Executor for FakeExecutor {
    fn run(&self, inv: Invocation<'_>) -> Result<Output, ExecError> {
        let mut state = self.state.lock().unwrap();
        state
            .log
            .push((inv.argv.to_vec(), inv.stdin.map(<[u8]>::to_vec)));
        if state.missing.iter().any(|m| Some(m) == inv.argv.first()) {
            return Err(ExecError::NotFound {
                program: inv.argv[0].clone(),
            });
        }
        if let Some(lines) = state
            .batching
            .then(|| inv.stdin.and_then(|input| batch_lines(inv.argv, input)))
            .flatten()
        {
            for (n, one) in &lines {
                let failure =
                    state
                        .script
                        .iter()
                        .find(|(m, _)| m(one))
                        .and_then(|(_, r)| match r {
                            FakeResponse::Output(o) if o.success() => None,
                            FakeResponse::Output(o) => Some(o.stderr.clone()),
                            FakeResponse::Missing => Some("not found".to_string()),
                        });
                if let Some(stderr) = failure {
                    let stderr = if inv.argv[0] == "nft" {
                        format!("/dev/stdin:{n}:1-1: Error: {}", stderr.trim_end())
                    } else {
                        format!("{}: line {n} failed: {}", inv.argv[0], stderr.trim_end())
                    };
                    return Ok(Output {
                        status: 1,
                        stdout: String::new(),
                        stderr,
                    });
                }
            }
        } else if let Some((_, response)) = state.script.iter().find(|(m, _)| m(inv.argv)) {
            return match response.clone() {
                FakeResponse::Output(out) => Ok(out),
                FakeResponse::Missing => Err(ExecError::NotFound {
                    program: inv.argv[0].clone(),
                }),
            };
        }
        let state = &mut *state;
        Ok(model_run(state, inv.argv, inv.stdin))
    }

    fn supports_batch(&self) -> bool {
        self.state.lock().unwrap().batching
    }

    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        if self
            .state
            .lock()
            .unwrap()
            .missing
            .iter()
            .any(|m| m == program)
        {
            return Err(ExecError::NotFound {
                program: program.to_string(),
            });
        }
        Ok(())
    }
}

/// The echo line of a created object: the command's words after its options and `# handle N`.
fn echo_line(words: &[String], handle: u64) -> String {
    let at = words
        .iter()
        .position(|w| !w.starts_with('-'))
        .unwrap_or(words.len());
    format!("{} # handle {handle}\n", words[at..].join(" "))
}

fn failed(status: i32, stderr: String) -> Output {
    Output {
        status,
        stdout: String::new(),
        stderr,
    }
}

/// The program's name without its directory.
fn program_of(argv: &[String]) -> &str {
    argv.first()
        .map(|p| p.rsplit('/').next().unwrap_or(p))
        .unwrap_or("")
}

/// Answer an invocation from the model.
fn model_run(state: &mut State, argv: &[String], stdin: Option<&[u8]>) -> Output {
    let lenient = !state.strict;
    let program = program_of(argv);
    let input = stdin.map(String::from_utf8_lossy);
    match program {
        "nft" => nft_run(state, argv, input.as_deref()),
        // The engine's own tests script the iptables family's answers; its model is used
        // only when asked for (strict).
        _ if lenient => Output::default(),
        "iptables" | "ip6tables" | "ebtables" => {
            match xtables::step(&mut state.model.xtables, program, &argv[1..], lenient) {
                Ok(out) => Output::ok(out),
                Err((status, msg)) => failed(status, format!("{program}: {msg}\n")),
            }
        }
        "iptables-restore" | "ip6tables-restore" | "ebtables-restore" => {
            let tool = program.trim_end_matches("-restore");
            let opts = &argv[1..];
            if tool == "ebtables" && opts.iter().any(|o| o == "--test" || o == "-t") {
                return failed(
                    1,
                    "ebtables-restore: unrecognized option '--test'\nUsage: ebtables-restore [ --verbose ] [ --noflush ]\n".to_string(),
                );
            }
            let test = opts.iter().any(|o| o == "--test" || o == "-t");
            let text = input.as_deref().unwrap_or("");
            match xtables::restore(&mut state.model.xtables, tool, text, test, lenient) {
                Ok(()) => Output::default(),
                Err((status, msg)) => failed(status, format!("{msg}\n")),
            }
        }
        _ => Output::default(),
    }
}

/// nft: one command from the argv, or a batch (`-f`) applied all or nothing; `-c` checks
/// without keeping anything.
fn nft_run(state: &mut State, argv: &[String], input: Option<&str>) -> Output {
    let options: Vec<&str> = argv[1..]
        .iter()
        .map(String::as_str)
        .take_while(|a| a.starts_with('-'))
        .collect();
    let echo = is_echo(argv);
    let handles = options
        .iter()
        .any(|o| o.contains('a') && !o.starts_with("--"));
    let json = options.contains(&"-j");
    let check = options.contains(&"-c") || options.contains(&"--check");
    let lenient = !state.strict;
    let fixed = state.fixed_handle;
    let batch = options.contains(&"-f");
    let lines: Vec<Vec<String>> = match (batch, input) {
        (true, Some(text)) => text
            .lines()
            .map(crate::nft::line_words)
            .filter(|w| !w.is_empty())
            .collect(),
        _ => vec![crate::nft::words(&argv[1 + options.len()..])],
    };
    if json && lines.len() == 1 && lines[0].iter().map(String::as_str).eq(["list", "tables"]) {
        return Output::ok(state.model.nft.tables_json());
    }
    let mut work = state.model.nft.clone();
    let mut stdout = String::new();
    let mut errors = String::new();
    for (n, words) in lines.iter().enumerate() {
        match work.step(words, fixed, lenient, handles) {
            Ok(Step::Echo(h)) if echo => stdout.push_str(&echo_line(words, h)),
            Ok(Step::Listed(text)) => stdout.push_str(&text),
            Ok(_) => {}
            Err(e) if batch => errors.push_str(&format!(
                "/dev/stdin:{}:1-1: {e}\n{}\n",
                n + 1,
                words.join(" ")
            )),
            Err(e) => errors.push_str(&format!("{e}\n{}\n", words.join(" "))),
        }
    }
    if !errors.is_empty() {
        // One kernel transaction: nothing of it stays, nothing is echoed.
        return failed(1, errors);
    }
    if !check {
        state.model.nft = work;
    }
    if echo && !batch && !stdout.is_empty() {
        stdout.push_str("# new generation 1 by process 1 (nft)\n");
    }
    Output::ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(fake: &FakeExecutor, cmd: &str) -> Output {
        let argv: Vec<String> = std::iter::once("nft".to_string())
            .chain(crate::nft::line_words(cmd))
            .collect();
        fake.run(Invocation {
            argv: &argv,
            stdin: None,
        })
        .unwrap()
    }

    fn batch(fake: &FakeExecutor, input: &str) -> Output {
        let argv: Vec<String> = ["nft", "-ae", "-f", "-"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        fake.run(Invocation {
            argv: &argv,
            stdin: Some(input.as_bytes()),
        })
        .unwrap()
    }

    /// The model behaves like nft 1.0.6 for existing tables and chains.
    #[test]
    fn model_echoes_like_nft_1_0_6() {
        let fake = FakeExecutor::new();
        assert_eq!(
            run(&fake, "-ae add table ip t").stdout.lines().next(),
            Some("add table ip t # handle 1")
        );
        // Existing table: success, no echo. Existing chain: its existing handle.
        assert_eq!(run(&fake, "-ae add table ip t"), Output::default());
        assert!(run(&fake, "-ae add chain ip t c")
            .stdout
            .starts_with("add chain ip t c # handle 2\n"));
        assert!(run(&fake, "-ae add chain ip t c")
            .stdout
            .starts_with("add chain ip t c # handle 2\n"));
        // `create` of an existing one: File exists.
        for cmd in ["-ae create table ip t", "-ae create chain ip t c"] {
            let out = run(&fake, cmd);
            assert_eq!(out.status, 1);
            assert!(out.stderr.contains("File exists"), "{}", out.stderr);
        }
        assert!(run(&fake, "-ae add rule ip t c accept")
            .stdout
            .starts_with("add rule ip t c accept # handle 3\n"));
        // The listing comes from the model; an unknown table is "No such file or directory".
        let listing = run(&fake, "-a list table ip t");
        assert_eq!(
            listing.stdout,
            "table ip t { # handle 1\n\tchain c { # handle 2\n\t\taccept # handle 3\n\t}\n}\n"
        );
        let parsed = crate::nft::parse_listing(&listing.stdout);
        assert_eq!((parsed.table, parsed.chains["c"]), (Some(1), 2));
        let absent = run(&fake, "-a list table ip6 t");
        assert_eq!(absent.status, 1);
        assert!(crate::nft::listing_says_absent(&absent.stderr));
        // Deletes by handle are applied.
        run(&fake, "delete rule ip t c handle 3");
        assert!(!run(&fake, "-a list table ip t").stdout.contains("handle 3"));
        run(&fake, "delete table ip handle 1");
        assert_eq!(run(&fake, "-a list table ip t").status, 1);
    }

    /// A batch is all or nothing against the model, and echoes per line like nft.
    #[test]
    fn model_batches_are_atomic() {
        let fake = FakeExecutor::new().with_batching();
        let out = batch(&fake, "add table ip t\nadd chain ip t c\n");
        assert_eq!(
            out.stdout,
            "add table ip t # handle 1\nadd chain ip t c # handle 2\n"
        );
        // The existing table is silent, the existing chain has its old handle.
        let out = batch(
            &fake,
            "add table ip t\nadd chain ip t c\nadd rule ip t c drop\n",
        );
        assert_eq!(
            out.stdout,
            "add chain ip t c # handle 2\nadd rule ip t c drop # handle 3\n"
        );
        // One failing line: nothing applied.
        let out = batch(&fake, "add chain ip t d\ncreate table ip t\n");
        assert_eq!(out.status, 1);
        assert!(out.stderr.starts_with("/dev/stdin:2:"), "{}", out.stderr);
        let listing = run(&fake, "-a list table ip t").stdout;
        assert!(!listing.contains("chain d"), "{listing}");
    }

    /// Scripted responses win over the model; fixed-handle mode is kept.
    #[test]
    fn script_wins_and_fixed_handles_stay() {
        let fake = FakeExecutor::new().with_fixed_handle(5309).on(
            FakeExecutor::args_contain(&["list"]),
            FakeResponse::stdout("scripted"),
        );
        assert_eq!(run(&fake, "-a list table ip t").stdout, "scripted");
        assert!(run(&fake, "-ae add table ip t")
            .stdout
            .starts_with("add table ip t # handle 5309\n"));
    }
}
