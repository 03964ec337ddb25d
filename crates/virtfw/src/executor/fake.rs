//! A scripted executor for tests: records every argv, answers from a script.

use std::sync::Mutex;

use super::{Executor, Invocation, Output};
use crate::error::ExecError;
use crate::transcript;

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
    script: Vec<(Matcher, FakeResponse)>,
    next_handle: u64,
    fixed_handle: Option<u64>,
    missing: Vec<String>,
    batching: bool,
}

/// An [`Executor`] that runs nothing.
///
/// By default every command succeeds with empty output, except nft creates run with `-ae` (one
/// command, or a batch read with `-f`), which are answered with `# handle N` like the real `nft`,
/// N counting up from 1 (or a fixed number, as libvirt's own test harness does with 5309).
/// Responses for particular commands are scripted with [`FakeExecutor::on`]; the first matching
/// entry wins.
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
                script: Vec::new(),
                next_handle: 1,
                fixed_handle: None,
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

    fn handle(state: &mut State) -> u64 {
        match state.fixed_handle {
            Some(h) => h,
            None => {
                state.next_handle += 1;
                state.next_handle - 1
            }
        }
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
                    if echo && crate::rollback::nft_create(&words).is_some() {
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
        if !is_echo(inv.argv) {
            return Ok(Output::default());
        }
        let mut stdout = String::new();
        match inv.stdin {
            Some(input) => {
                for line in String::from_utf8_lossy(input).lines() {
                    let words: Vec<String> = line.split_whitespace().map(String::from).collect();
                    if crate::rollback::nft_create(&words).is_some() {
                        let h = Self::handle(&mut state);
                        stdout.push_str(&format!("{} # handle {h}\n", line.trim()));
                    }
                }
            }
            None => {
                let h = Self::handle(&mut state);
                stdout.push_str(&format!("# handle {h}"));
            }
        }
        Ok(Output::ok(stdout))
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
