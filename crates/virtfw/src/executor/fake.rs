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

/// One table of the fake's nft model.
#[derive(Debug, Clone, Default)]
struct FakeTable {
    handle: u64,
    /// Chains in creation order: (name, handle).
    chains: Vec<(String, u64)>,
    /// Rules: (chain, handle).
    rules: Vec<(String, u64)>,
}

/// The fake's nft ruleset: tables by (family, name), in creation order.
type Model = Vec<((String, String), FakeTable)>;

struct State {
    log: Vec<(Vec<String>, Option<Vec<u8>>)>,
    model: Model,
    script: Vec<(Matcher, FakeResponse)>,
    next_handle: u64,
    fixed_handle: Option<u64>,
    missing: Vec<String>,
    batching: bool,
}

/// An [`Executor`] that runs nothing.
///
/// By default every command succeeds with empty output. nft commands (one command, or a batch
/// read with `-f`, applied all or nothing) go through a small model of nft tables, chains and
/// rules with handles, per family, that behaves like nft 1.0.6:
///
/// * `add table` of an existing table succeeds and echoes nothing; `add chain` of an existing
///   chain succeeds and echoes `add chain … # handle N` with the chain's *existing* handle;
///   `create table`/`create chain` of an existing one fails with exit 1, "File exists".
/// * A create of a new object echoes (with `-e`/`-ae`) the command followed by `# handle N`,
///   N counting up from 1 across all objects (or a fixed number, as libvirt's own test harness
///   does with 5309, see [`FakeExecutor::with_fixed_handle`]).
/// * `nft -a list table F T` is answered from the model in nft's text format, or with exit 1
///   "No such file or directory" for a table the model does not hold. (`nft list …` without
///   `-a`, as libvirt's queries run it, keeps the default empty answer.)
/// * `delete table|chain|rule … handle N` and `delete table F T` remove the object when the
///   model holds it, and succeed either way.
/// * A chain or rule in a table the model does not hold is accepted (and echoed) without being
///   modelled, so tests that never create their tables keep working.
///
/// Responses for particular commands are scripted with [`FakeExecutor::on`]; the first matching
/// entry wins over the model (and does not change it).
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
                model: Vec::new(),
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

/// The words after a command's leading options, and whether it asked for echo.
fn nft_command(words: &[String]) -> &[String] {
    let at = words
        .iter()
        .position(|w| !w.starts_with('-'))
        .unwrap_or(words.len());
    &words[at..]
}

fn unquote(w: &str) -> String {
    w.trim_matches('"').to_string()
}

/// The (family, rest) of the words after an object keyword.
fn family_and_names(rest: &[String]) -> (String, &[String]) {
    match rest.first() {
        Some(f) if crate::nft::FAMILIES.contains(&f.as_str()) => (f.clone(), &rest[1..]),
        _ => ("ip".to_string(), rest),
    }
}

fn table_mut<'m>(model: &'m mut Model, key: &(String, String)) -> Option<&'m mut FakeTable> {
    model.iter_mut().find(|(k, _)| k == key).map(|(_, t)| t)
}

/// A failure the way nft reports it.
fn nft_error(message: &str) -> Result<Option<u64>, String> {
    Err(format!("Error: Could not process rule: {message}"))
}

/// Apply one nft command (its words, options first) to `model`. `Ok(Some(h))`: it created an
/// object with handle `h` (or echoes an existing chain's handle), to be echoed; `Ok(None)`:
/// nothing to echo.
fn model_step(
    model: &mut Model,
    words: &[String],
    handle: &mut dyn FnMut() -> u64,
) -> Result<Option<u64>, String> {
    let cmd = nft_command(words);
    let (Some(verb), Some(object)) = (cmd.first(), cmd.get(1)) else {
        return Ok(None);
    };
    let (family, names) = family_and_names(&cmd[2..]);
    let Some(table) = names.first().map(|t| unquote(t)) else {
        return Ok(None);
    };
    let key = (family, table);
    match (verb.as_str(), object.as_str()) {
        ("add" | "create", "table") => {
            if table_mut(model, &key).is_some() {
                return if verb == "create" {
                    nft_error("File exists")
                } else {
                    Ok(None)
                };
            }
            let h = handle();
            model.push((
                key,
                FakeTable {
                    handle: h,
                    ..Default::default()
                },
            ));
            Ok(Some(h))
        }
        ("add" | "create", "chain") => {
            let Some(chain) = names.get(1).map(|c| unquote(c)) else {
                return Ok(None);
            };
            let Some(t) = table_mut(model, &key) else {
                return Ok(Some(handle()));
            };
            if let Some(&(_, old)) = t.chains.iter().find(|(c, _)| *c == chain) {
                return if verb == "create" {
                    nft_error("File exists")
                } else {
                    Ok(Some(old))
                };
            }
            let h = handle();
            t.chains.push((chain, h));
            Ok(Some(h))
        }
        ("add" | "insert", "rule") => {
            let Some(chain) = names.get(1).map(|c| unquote(c)) else {
                return Ok(None);
            };
            let h = handle();
            if let Some(t) = table_mut(model, &key) {
                t.rules.push((chain, h));
            }
            Ok(Some(h))
        }
        ("delete", "table") => {
            let by_handle = (cmd.get(3).map(String::as_str) == Some("handle"))
                .then(|| cmd.get(4).and_then(|h| h.parse::<u64>().ok()))
                .flatten();
            model.retain(|((f, name), t)| match by_handle {
                Some(h) => !(*f == key.0 && t.handle == h),
                None => !(*f == key.0 && *name == key.1),
            });
            Ok(None)
        }
        ("delete", "chain" | "rule") => {
            let n = cmd.len();
            let h = (n >= 2 && cmd[n - 2] == "handle")
                .then(|| cmd[n - 1].parse::<u64>().ok())
                .flatten();
            if let (Some(h), Some(t)) = (h, table_mut(model, &key)) {
                if object == "chain" {
                    if let Some(name) = t.chains.iter().find(|c| c.1 == h).map(|c| c.0.clone()) {
                        t.rules.retain(|r| r.0 != name);
                    }
                    t.chains.retain(|c| c.1 != h);
                } else {
                    t.rules.retain(|r| r.1 != h);
                }
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// `nft -a list table F T` from the model, in nft's text format.
fn model_listing(model: &Model, family: &str, table: &str) -> Output {
    let Some((_, t)) = model.iter().find(|((f, n), _)| f == family && n == table) else {
        return Output {
            status: 1,
            stdout: String::new(),
            stderr: format!("Error: No such file or directory\nlist table {family} {table}\n"),
        };
    };
    let mut out = format!("table {family} {table} {{ # handle {}\n", t.handle);
    let mut chains: Vec<String> = t.chains.iter().map(|c| c.0.clone()).collect();
    for (c, _) in &t.rules {
        if !chains.contains(c) {
            chains.push(c.clone());
        }
    }
    for name in chains {
        let h = t.chains.iter().find(|c| c.0 == name).map_or(0, |c| c.1);
        out.push_str(&format!("\tchain {name} {{ # handle {h}\n"));
        for (_, rh) in t.rules.iter().filter(|r| r.0 == name) {
            out.push_str(&format!("\t\tcounter packets 0 bytes 0 # handle {rh}\n"));
        }
        out.push_str("\t}\n");
    }
    out.push_str("}\n");
    Output::ok(out)
}

/// The echo line of a created object: the command's words after its options and `# handle N`.
fn echo_line(words: &[String], handle: u64) -> String {
    format!("{} # handle {handle}\n", nft_command(words).join(" "))
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
        if !matches!(inv.argv.first(), Some(p) if p == "nft") {
            return Ok(Output::default());
        }
        let echo = is_echo(inv.argv);
        let state = &mut *state;
        let mut next = || match state.fixed_handle {
            Some(h) => h,
            None => {
                state.next_handle += 1;
                state.next_handle - 1
            }
        };
        match inv.stdin {
            Some(input) if inv.argv.iter().any(|a| a == "-f") => {
                // All or nothing, like one kernel transaction.
                let mut model = state.model.clone();
                let mut stdout = String::new();
                for (n, line) in String::from_utf8_lossy(input).lines().enumerate() {
                    let words = crate::nft::line_words(line);
                    match model_step(&mut model, &words, &mut next) {
                        Ok(Some(h)) if echo => stdout.push_str(&echo_line(&words, h)),
                        Ok(_) => {}
                        Err(e) => {
                            return Ok(Output {
                                status: 1,
                                stdout: String::new(),
                                stderr: format!("/dev/stdin:{}:1-1: {e}\n", n + 1),
                            })
                        }
                    }
                }
                state.model = model;
                Ok(Output::ok(stdout))
            }
            _ => {
                if let Some((family, table)) = crate::nft::listing_of(inv.argv) {
                    return Ok(model_listing(&state.model, &family, &table));
                }
                let words = crate::nft::words(&inv.argv[1..]);
                match model_step(&mut state.model, &words, &mut next) {
                    Ok(Some(h)) if echo => Ok(Output::ok(format!(
                        "{}# new generation 1 by process 1 (nft)\n",
                        echo_line(&words, h)
                    ))),
                    Ok(_) => Ok(Output::default()),
                    Err(e) => Ok(Output {
                        status: 1,
                        stdout: String::new(),
                        stderr: format!("{e}\n"),
                    }),
                }
            }
        }
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
            "table ip t { # handle 1\n\tchain c { # handle 2\n\t\tcounter packets 0 bytes 0 # handle 3\n\t}\n}\n"
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
