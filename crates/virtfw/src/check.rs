//! Ask the kernel whether a firewall would apply, without committing anything
//! (`virtfw apply --check`).
//!
//! [`kernel_check`] sends the commands of every group to the tools' own dry-run modes, one
//! process per group and program, and reports per command what was refused:
//!
//! * **nft**: `nft -c -f -` of the commands joined one per line, as the batch path joins them.
//!   `-c` builds the whole transaction, hands it to the kernel and aborts it, so the kernel's
//!   own checks run (a missing table or chain, "File exists", a handle that is not there) and
//!   the ruleset stays exactly as it was. Groups run one after another in an apply, so group
//!   `k` is checked *after* the accepted commands of groups `0..k` in the same transaction: a
//!   group may add rules to a table an earlier group creates. The kernel reports every refused
//!   message of a batch (`/dev/stdin:LINE:…`), which names the command.
//! * **iptables / ip6tables**: `iptables-restore --test --noflush` of the group's commands as
//!   restore sections. With the nf_tables flavour (iptables 1.8.9) `--test` parses every line
//!   and loads its matches and targets but aborts before the batch is sent, so it catches bad
//!   options and unknown extensions, **not** a missing chain or a missing rule to delete (a
//!   namespace test pins this down). The program stops at the first bad line ("Error occurred
//!   at line: N"); the check drops that line and asks again, so every bad line is found.
//! * **ebtables**: `ebtables-restore` has no `--test` option (it knows only `--noflush` and
//!   `--verbose`), and `ebtables` has no check-only mode, so ethernet commands are reported
//!   [`Verdict::NotCheckable`] rather than run.
//!
//! What cannot be checked is said so, never guessed: query commands (`list`, `-L`, `-S`,
//! `--check`, commands with query callbacks, whose added commands exist only at apply time),
//! the `tc` layer, nft commands with leading options. Rollback lists are not checked (they run
//! only after a failure, with errors ignored).
//!
//! A refused command in a group that does not ignore errors fails the apply there: the later
//! groups are reported [`Verdict::NotReached`], because an apply would never run them and
//! their check would depend on what the failed group should have created. A refused command
//! whose errors are ignored is a [`Verdict::IgnoredFailure`]; it is left out and the rest of
//! its group checked without it, as the apply would go on.

use std::collections::BTreeSet;

use crate::error::Error;
use crate::executor::{Executor, Invocation};
use crate::firewall::Firewall;
use crate::model::{Backend, Command, Layer};
use crate::transcript::command_line;

/// What the kernel (or the tool's dry run) said about one command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Verdict {
    /// Checked and accepted.
    Accepted,
    /// Refused; the apply would fail at this command.
    Refused {
        /// The tool's message.
        message: String,
    },
    /// Refused, but the command ignores errors: the apply would go on without it.
    IgnoredFailure {
        /// The tool's message.
        message: String,
    },
    /// Not sent to any dry run, for this reason.
    NotCheckable {
        /// Why.
        reason: String,
    },
    /// An earlier group is refused, so an apply never gets here.
    NotReached,
}

/// The check of one command of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CommandCheck {
    /// Index among its group's actions.
    pub index: usize,
    /// The command as one line (program and quoted arguments).
    pub command: String,
    /// What the dry run said.
    pub verdict: Verdict,
}

/// The check of one group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct GroupCheck {
    /// Index of the group in the firewall.
    pub group: usize,
    /// One entry per action of the group, in order.
    pub commands: Vec<CommandCheck>,
    /// A refusal the tool did not tie to one of the group's commands (it named no line, or
    /// one outside the group), with the tool's message.
    pub error: Option<String>,
}

impl GroupCheck {
    /// Whether the apply would fail in this group.
    pub fn is_refused(&self) -> bool {
        self.error.is_some()
            || self
                .commands
                .iter()
                .any(|c| matches!(c.verdict, Verdict::Refused { .. }))
    }
}

/// What [`kernel_check`] found, group by group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CheckReport {
    /// One entry per group of the firewall, in order.
    pub groups: Vec<GroupCheck>,
}

impl CheckReport {
    /// No group refused (commands that could not be checked do not count).
    pub fn is_clean(&self) -> bool {
        !self.groups.iter().any(GroupCheck::is_refused)
    }

    /// The first group the apply would fail in, if any.
    pub fn first_refused(&self) -> Option<&GroupCheck> {
        self.groups.iter().find(|g| g.is_refused())
    }

    /// Every refused command as (group, command).
    pub fn refused(&self) -> impl Iterator<Item = (usize, &CommandCheck)> {
        self.groups.iter().flat_map(|g| {
            g.commands
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Refused { .. }))
                .map(move |c| (g.group, c))
        })
    }
}

/// Check every group of `fw` with the tools' dry-run modes through `exec`, changing nothing.
///
/// Refused like an apply would refuse them, before anything runs: a builder error, an argument
/// that would change meaning when joined ([`crate::validate`]), an empty command, backend
/// `none`, a program `exec` cannot run. The executor's own failure is [`Error::Exec`]. A
/// command the kernel refuses is not an error: it is in the report.
pub fn kernel_check(fw: &Firewall, exec: &dyn Executor) -> Result<CheckReport, Error> {
    preflight(fw, exec)?;
    let mut groups: Vec<GroupCheck> = Vec::with_capacity(fw.groups().len());
    // nft: the accepted lines of earlier groups, which group k's check runs after.
    let mut before: Vec<String> = Vec::new();
    let mut failed = false;
    for (gi, group) in fw.groups().iter().enumerate() {
        let mut check = GroupCheck {
            group: gi,
            commands: group
                .actions()
                .iter()
                .enumerate()
                .map(|(i, c)| CommandCheck {
                    index: i,
                    command: command_line(&full_argv(fw.backend(), c)),
                    verdict: Verdict::Accepted,
                })
                .collect(),
            error: None,
        };
        if failed {
            for c in &mut check.commands {
                c.verdict = Verdict::NotReached;
            }
            groups.push(check);
            continue;
        }
        let mut lines: Vec<(usize, Layer, String)> = Vec::new();
        for (i, cmd) in group.actions().iter().enumerate() {
            match checkable(fw.backend(), cmd) {
                Ok(line) => lines.push((i, cmd.layer(), line)),
                Err(reason) => {
                    check.commands[i].verdict = Verdict::NotCheckable {
                        reason: reason.to_string(),
                    }
                }
            }
        }
        let accepted = match fw.backend() {
            Backend::Nftables => {
                let lines: Vec<(usize, String)> =
                    lines.into_iter().map(|(i, _, l)| (i, l)).collect();
                settle(group.actions(), &mut check, lines, |ls| {
                    nft_check(exec, &before, ls)
                })?
            }
            _ => {
                // The iptables family's dry run does not reach the kernel, so nothing of
                // earlier groups is replayed.
                for layer in [Layer::Ipv4, Layer::Ipv6] {
                    let of_layer: Vec<(usize, String)> = lines
                        .iter()
                        .filter(|(_, l, _)| *l == layer)
                        .map(|(i, _, l)| (*i, l.clone()))
                        .collect();
                    settle(group.actions(), &mut check, of_layer, |ls| {
                        restore_check(exec, layer, ls)
                    })?;
                }
                Vec::new()
            }
        };
        failed = check.is_refused();
        if !failed {
            before.extend(accepted);
        }
        groups.push(check);
    }
    Ok(CheckReport { groups })
}

/// One dry run's answer: success, or the refused lines (index into the lines sent) with their
/// messages, or a refusal naming none of them.
enum Answer {
    Clean,
    Refused(Vec<(usize, String)>),
    Unattributed(String),
}

/// Run `dry` on `lines` (action index, line) until it is clean: each refused line is recorded
/// (refused, or an ignored failure) and left out of the next run, so every bad line is found
/// and the rest is checked as the apply would run it. Returns the accepted lines.
fn settle(
    actions: &[Command],
    check: &mut GroupCheck,
    mut lines: Vec<(usize, String)>,
    mut dry: impl FnMut(&[String]) -> Result<Answer, Error>,
) -> Result<Vec<String>, Error> {
    while !lines.is_empty() {
        let text: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
        match dry(&text)? {
            Answer::Clean => break,
            Answer::Unattributed(message) => {
                check.error = Some(message);
                break;
            }
            Answer::Refused(bad) => {
                let bad_set: BTreeSet<usize> = bad.iter().map(|(k, _)| *k).collect();
                for (k, message) in bad {
                    let i = lines[k].0;
                    let c = &mut check.commands[i];
                    // A line blamed twice keeps its first message.
                    if matches!(c.verdict, Verdict::Accepted) {
                        c.verdict = if actions[i].ignore_errors() {
                            Verdict::IgnoredFailure { message }
                        } else {
                            Verdict::Refused { message }
                        };
                    }
                }
                lines = lines
                    .into_iter()
                    .enumerate()
                    .filter(|(k, _)| !bad_set.contains(k))
                    .map(|(_, l)| l)
                    .collect();
            }
        }
    }
    Ok(lines
        .into_iter()
        .filter(|(i, _)| matches!(check.commands[*i].verdict, Verdict::Accepted))
        .map(|(_, l)| l)
        .collect())
}

/// The program, its fixed options and the command's arguments, as an apply would run it
/// (without `-ae`, which the check does not use).
fn full_argv(backend: Backend, cmd: &Command) -> Vec<String> {
    let (program, lead) = cmd.layer().program(backend);
    std::iter::once(program)
        .chain(lead.iter().copied())
        .map(str::to_string)
        .chain(cmd.args().iter().cloned())
        .collect()
}

/// The line a command contributes to its dry run, or why it cannot be checked.
fn checkable(backend: Backend, cmd: &Command) -> Result<String, &'static str> {
    if cmd.is_query() {
        return Err("a query with a callback: the commands it adds exist only at apply time");
    }
    match (backend, cmd.layer()) {
        (_, Layer::Tc) => Err("the tc layer has no dry run"),
        (Backend::Nftables, _) => {
            let words = crate::nft::words(cmd.args());
            match words.first().map(String::as_str) {
                Some(w) if w.starts_with('-') => {
                    Err("nft options before the command cannot be part of a checked batch")
                }
                Some("list") => Err("a listing changes nothing"),
                _ => Ok(cmd.args().join(" ")),
            }
        }
        (Backend::Iptables, Layer::Ethernet) => {
            Err("ebtables-restore has no --test option and ebtables no check-only mode")
        }
        (Backend::Iptables, layer) => crate::xtables::restore_line(layer, cmd.args())
            .map(|l| format!("{}\t{}", l.table, l.line))
            .ok_or(
                "not a line the batch path would send through a restore file (a query, \
                 not exactly one command option, or an argument its tokenizer cannot carry)",
            ),
        (Backend::None, _) => Err("backend none runs nothing"),
    }
}

/// The run of one dry-run process. The executor's own failure is an error.
fn run(
    exec: &dyn Executor,
    argv: &[String],
    input: &str,
) -> Result<crate::executor::Output, Error> {
    exec.run(invocation(argv, Some(input.as_bytes())))
        .map_err(|source| Error::Exec {
            cmdline: command_line(argv),
            source,
        })
}

/// The only place this module builds an [`Invocation`].
fn invocation<'a>(argv: &'a [String], stdin: Option<&'a [u8]>) -> Invocation<'a> {
    Invocation { argv, stdin }
}

/// `nft -c -f -` of the accepted lines of earlier groups followed by `lines`.
fn nft_check(exec: &dyn Executor, before: &[String], lines: &[String]) -> Result<Answer, Error> {
    let argv: Vec<String> = ["nft", "-c", "-f", "-"].map(String::from).to_vec();
    let mut input = String::new();
    for l in before.iter().chain(lines) {
        input.push_str(l);
        input.push('\n');
    }
    let out = run(exec, &argv, &input)?;
    if out.success() {
        return Ok(Answer::Clean);
    }
    let mut bad = Vec::new();
    for l in out.stderr.lines() {
        let Some(rest) = l.strip_prefix("/dev/stdin:") else {
            continue;
        };
        let Some(n) = rest.split(':').next().and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        let message = rest
            .split_once(": ")
            .map_or(rest, |(_, m)| m)
            .trim_start_matches("Error: ")
            .to_string();
        match n.checked_sub(before.len() + 1) {
            Some(k) if k < lines.len() => bad.push((k, message)),
            _ => return Ok(Answer::Unattributed(l.to_string())),
        }
    }
    Ok(if bad.is_empty() {
        Answer::Unattributed(stderr_or_status(&out))
    } else {
        Answer::Refused(bad)
    })
}

fn stderr_or_status(out: &crate::executor::Output) -> String {
    let s = out.stderr.trim_end();
    if s.is_empty() {
        format!("exit status {}", out.status)
    } else {
        s.to_string()
    }
}

/// `iptables-restore --test --noflush` (or ip6tables') of `lines` (each `TABLE\tLINE`), one
/// section per table in order of first use, written and blamed as the batch path does it
/// ([`crate::xtables::family_input`], [`crate::xtables::blamed`]).
fn restore_check(exec: &dyn Executor, layer: Layer, lines: &[String]) -> Result<Answer, Error> {
    let (program, lead) = crate::xtables::restore_program(layer).expect("a restore layer");
    let mut argv: Vec<String> = std::iter::once(program)
        .chain(lead.iter().copied())
        .map(String::from)
        .collect();
    argv.push("--test".to_string());
    // (table, indices into `lines`), in order of first use.
    let mut sections: Vec<(&str, Vec<usize>)> = Vec::new();
    for (k, l) in lines.iter().enumerate() {
        let t = l.split_once('\t').map_or("filter", |(t, _)| t);
        match sections.iter_mut().find(|(st, _)| *st == t) {
            Some((_, ks)) => ks.push(k),
            None => sections.push((t, vec![k])),
        }
    }
    let rule = |k: usize| {
        lines[k]
            .split_once('\t')
            .map_or(lines[k].as_str(), |(_, r)| r)
    };
    let parts: Vec<(&str, Vec<&str>)> = sections
        .iter()
        .map(|(t, ks)| (*t, ks.iter().map(|&k| rule(k)).collect()))
        .collect();
    let (input, spans) = crate::xtables::family_input(&parts);
    let out = run(exec, &argv, &input)?;
    if out.success() {
        return Ok(Answer::Clean);
    }
    let message = stderr_or_status(&out);
    let blamed = crate::xtables::blamed(&spans, &out.stderr)
        .and_then(|(section, offset)| Some(sections[section].1[offset?]));
    Ok(match blamed {
        Some(k) => Answer::Refused(vec![(k, first_line(&message))]),
        None => Answer::Unattributed(message),
    })
}

/// The tool's first line of complaint.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).to_string()
}

/// What an apply refuses before running anything (see `Firewall::apply`), refused the same
/// way here.
fn preflight(fw: &Firewall, exec: &dyn Executor) -> Result<(), Error> {
    if let Some(err) = fw.build_error() {
        return Err(Error::Build(err.clone()));
    }
    crate::validate::check_firewall(fw)?;
    let mut programs = BTreeSet::new();
    for (gi, group) in fw.groups().iter().enumerate() {
        for (ci, cmd) in group.actions().iter().enumerate() {
            if cmd.args().is_empty() {
                return Err(Error::EmptyCommand {
                    group: gi,
                    index: ci,
                });
            }
            if fw.backend() == Backend::None {
                return Err(Error::BackendNotImplemented {
                    cmdline: command_line(cmd.args()),
                });
            }
            if checkable(fw.backend(), cmd).is_ok() {
                programs.insert(match (fw.backend(), cmd.layer()) {
                    (Backend::Nftables, _) => "nft",
                    (_, Layer::Ipv6) => "ip6tables-restore",
                    _ => "iptables-restore",
                });
            }
        }
    }
    for program in programs {
        exec.check_program(program).map_err(|source| Error::Exec {
            cmdline: program.to_string(),
            source,
        })?;
    }
    Ok(())
}
