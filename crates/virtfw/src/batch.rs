//! The fast path: a group, or a run of consecutive groups, as one kernel transaction.
//!
//! libvirt runs one process per command. Each `nft -ae add rule` reloads the whole ruleset (nft
//! 1.0.6 needs a full cache to echo) and each deleting process waits out an RCU grace period at
//! exit, so one process per command costs milliseconds per rule and grows with the ruleset. The
//! kernel's own unit of work is a transaction: `nft -f -` (all or nothing) and one
//! `iptables-restore --noflush` table section (all or nothing per `*table … COMMIT`).
//!
//! This module runs a group that way whenever doing so **cannot change what a caller observes**:
//!
//! * A batch that succeeds has the same effect as the commands run one by one (the commands are
//!   the same lines nft's argv mode would parse: nft joins its arguments with spaces), and the
//!   inverses recorded are the ones the per-command path would record, in the same order.
//! * A batch that fails leaves nothing behind before the engine re-runs the same groups command
//!   by command: an nft batch is one kernel transaction, rejected whole; an iptables-family
//!   program of several sections may have committed some, and those are deleted again first
//!   (see the iptables-restore paragraph below). The per-command path then finds the failing
//!   command, reports it in libvirt's words and runs libvirt's rollback exactly.
//! * Groups whose meaning depends on running command by command stay on that path: query
//!   callbacks, `list` commands, commands with leading nft options, the `tc` layer, groups mixing
//!   ignored and checked commands.
//! * Removal plans (ignore-errors groups of `delete … handle N` / `--delete`) run as one batch;
//!   only when it fails are the touched tables listed, vanished objects dropped (reported to
//!   [`ApplyObserver::ignored_failure`] with
//!   `missing = true`) and the rest retried, falling back to command-by-command as a last resort.
//!   As on the per-command path, the executor's own failure (a program that cannot start, a
//!   journal that cannot be written) is not ignored: it fails the removal.
//!
//! iptables-restore is atomic per table section only (`*table … COMMIT`: each `COMMIT` is one
//! kernel transaction; a failing line rolls its section back and the program exits, so the
//! sections before it stay committed and the ones after never run). All sections of one program
//! run in ONE process (each deleting process waits for the kernel at exit, so a process per
//! table cost that wait six times for a network); the programs (iptables, ip6tables, ebtables)
//! run concurrently (disjoint tables). Several sections are only batched when a failure can be
//! undone exactly, i.e. when every command is a rule create whose inverse is known: then, if a
//! section fails, the sections that committed before it are deleted again before the fallback.
//! When the program dies naming no line, `--check` tells which sections committed (see
//! `run_family`). A removal or an undo resends, after a line that fails, only what did not
//! commit, without that line (see `delete_family`).
//!
//! The switch [`NO_BATCH_ENV`] (`VIRTFW_NO_BATCH=1`) makes `ApplyOptions::default()` (and so
//! [`Firewall::apply`]) take the per-command path, like
//! [`ApplyOptions::per_command`](crate::ApplyOptions::per_command) does for one apply.

use std::collections::{BTreeSet, HashMap};

use tracing::{debug, warn};

use crate::engine::{absent_before, argv_for, learn_table, run_argv, run_command, ApplyObserver};
use crate::error::Error;
use crate::executor::{Executor, Invocation, Output};
use crate::firewall::{Firewall, Group};
use crate::model::{Backend, Command, Layer, TransactionFlags};
use crate::nft::{self, Echo, NftObject};
use crate::rollback;
use crate::transcript::command_line;

/// Environment variable that, set to anything but empty or `0`, disables batching everywhere.
pub const NO_BATCH_ENV: &str = "VIRTFW_NO_BATCH";

/// Whether [`NO_BATCH_ENV`] asks for the per-command path.
pub fn disabled_by_env() -> bool {
    std::env::var_os(NO_BATCH_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// What the planner did with the groups starting at a given index.
pub(crate) enum Step {
    /// Run groups up to (not including) `until` command by command.
    PerCommand { until: usize },
    /// Groups up to (not including) `next` were applied, inverses recorded.
    Applied { next: usize },
    /// Group `group` failed exactly as on the per-command path (its earlier commands applied,
    /// their inverses recorded, later ones not applied); the engine rolls back from there.
    Failed { group: usize, error: Error },
}

/// The outcome of an `nft -ae -f -` batch of creates.
enum Echoed {
    /// Everything applied, every inverse recorded.
    Applied,
    /// The batch failed: nothing applied.
    Failed,
    /// The echo does not account for a create of `group` ([`Error::EchoIncomplete`]):
    /// applied up to it (inverses recorded), the later creates taken back, as the per-command
    /// path would leave it.
    Incomplete { group: usize, error: Error },
}

/// How a group can be batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// nft, auto-rollback, every command a table/chain/rule create: `nft -ae -f -`.
    NftCreates,
    /// nft, no command needs echo or output: `nft -f -`.
    NftPlain,
    /// nft, ignore-errors, every command `delete … handle N`.
    NftRemoval,
    /// iptables family, errors checked. `undoable`: every command is a rule create, so committed
    /// sections can be deleted again when another section fails.
    IptApply { undoable: bool },
    /// iptables family, ignore-errors.
    IptRemoval,
}

impl Kind {
    /// Whether consecutive groups of this kind may share one batch. Merging is exact because a
    /// merged batch that fails is re-run group by group on the per-command path.
    fn merges(self) -> bool {
        !matches!(self, Kind::IptApply { undoable: false })
    }
}

/// nft verbs that change the ruleset and print nothing without `-e`.
fn nft_plain_verb(args: &[String]) -> bool {
    matches!(
        args.first().map(String::as_str),
        Some("add" | "insert" | "create" | "delete" | "flush" | "replace" | "rename")
    )
}

/// A line break inside an argument would split the command in a batch file.
fn one_line(args: &[String]) -> bool {
    !args.iter().any(|a| a.contains(['\n', '\r']))
}

/// A removal command `delete <rule|chain|table> <family> [table] [chain] handle N`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NftDelete {
    object: NftObject,
    family: String,
    table: Option<String>,
    handle: u64,
}

fn parse_nft_delete(args: &[String]) -> Option<NftDelete> {
    if args.first()? != "delete" || args.len() < 5 {
        return None;
    }
    let (object, names) = match args[1].as_str() {
        "rule" => (NftObject::Rule, 2),
        "chain" => (NftObject::Chain, 1),
        "table" => (NftObject::Table, 0),
        _ => return None,
    };
    if args.len() != 3 + names + 2 || args[3 + names] != "handle" {
        return None;
    }
    Some(NftDelete {
        object,
        family: args[2].clone(),
        table: (names > 0).then(|| args[3].clone()),
        handle: args[4 + names].parse().ok()?,
    })
}

/// One command of the iptables family in `*-restore` form.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RestoreLine {
    layer: Layer,
    table: String,
    line: String,
    create: bool,
}

/// The restore program and its options for a layer.
fn restore_program(layer: Layer) -> Option<(&'static str, &'static [&'static str])> {
    match layer {
        Layer::Ipv4 => Some(("iptables-restore", &["-w", "--noflush"])),
        Layer::Ipv6 => Some(("ip6tables-restore", &["-w", "--noflush"])),
        Layer::Ethernet => Some(("ebtables-restore", &["--noflush"])),
        Layer::Tc => None,
    }
}

/// Quote an argument for the restore tokenizer, or refuse one it cannot carry unchanged.
fn restore_word(arg: &str, out: &mut String) -> bool {
    if arg.contains(['"', '\'', '\\', '\n', '\r']) {
        return false;
    }
    if arg.is_empty() || arg.contains([' ', '\t', '#']) {
        out.push('"');
        out.push_str(arg);
        out.push('"');
    } else {
        out.push_str(arg);
    }
    true
}

/// Turn a command into a restore line: the table option becomes the section, exactly one
/// ruleset-changing command option is allowed, anything that lists or checks is refused.
fn restore_line(layer: Layer, args: &[String]) -> Option<RestoreLine> {
    restore_program(layer)?;
    let mut table = "filter".to_string();
    let mut line = String::new();
    let mut commands = 0;
    let mut create = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-t" | "--table" => {
                table = args.get(i + 1)?.clone();
                if table.is_empty()
                    || !table
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return None;
                }
                i += 2;
                continue;
            }
            "-A" | "--append" | "-I" | "--insert" => {
                commands += 1;
                create = true;
            }
            "-D" | "--delete" | "-N" | "--new-chain" | "-X" | "--delete-chain" | "-F"
            | "--flush" | "-P" | "--policy" => commands += 1,
            _ if a.starts_with("--table=") => return None,
            "-L" | "--list" | "-S" | "--list-rules" | "-C" | "--check" | "-w" | "--wait" | "-W"
            | "--wait-interval" | "-Z" | "--zero" | "-E" | "--rename-chain" | "-R"
            | "--replace" | "-h" | "--help" | "-V" | "--version" | "--concurrent"
            | "--init-table" | "--atomic-file" | "--atomic-init" | "--atomic-save"
            | "--atomic-commit" | "-L-" => return None,
            _ => {}
        }
        if !line.is_empty() {
            line.push(' ');
        }
        if !restore_word(a, &mut line) {
            return None;
        }
        i += 1;
    }
    (commands == 1).then_some(RestoreLine {
        layer,
        table,
        line,
        create,
    })
}

/// The section (table) and line an iptables-family command becomes in the batch path's
/// `*-restore` input, exactly as [`family_input`] writes it; `None` for a command the batch
/// path never sends through a restore program.
///
/// Public so that a journal reader can map each line of a journalled restore input back to
/// the transaction command it was made from (the CLI's undo derives every undo argv from that
/// command, identical to the engine's rollback argv, never from the restore text).
pub fn restore_form(layer: Layer, args: &[String]) -> Option<(String, String)> {
    restore_line(layer, args).map(|l| (l.table, l.line))
}

/// Which kind of batch a group allows, if any.
fn classify(backend: Backend, group: &Group) -> Option<Kind> {
    classify_cmds(backend, group.flags, &group.actions)
}

/// Which kind of batch these commands of a group with `flags` allow, if any.
fn classify_cmds(backend: Backend, flags: TransactionFlags, actions: &[Command]) -> Option<Kind> {
    if actions.is_empty()
        || actions
            .iter()
            .any(|c| c.query.is_some() || c.layer == Layer::Tc || c.args.is_empty())
    {
        return None;
    }
    let ignoring = actions[0].ignore_errors;
    if actions.iter().any(|c| c.ignore_errors != ignoring) {
        return None;
    }
    let auto = flags.contains(TransactionFlags::AUTO_ROLLBACK);
    match backend {
        Backend::None => None,
        Backend::Nftables => {
            if !actions.iter().all(|c| one_line(&c.args)) {
                return None;
            }
            if ignoring {
                return actions
                    .iter()
                    .all(|c| parse_nft_delete(&c.args).is_some())
                    .then_some(Kind::NftRemoval);
            }
            let creates = actions
                .iter()
                .filter(|c| auto && nft::nft_create(&c.args).is_some_and(|k| k.verb == 0))
                .count();
            if creates == actions.len() {
                Some(Kind::NftCreates)
            } else if creates == 0 && actions.iter().all(|c| nft_plain_verb(&c.args)) {
                // Without auto-rollback nothing is echoed on the per-command path either.
                let any_create = auto && actions.iter().any(|c| nft::nft_create(&c.args).is_some());
                (!any_create).then_some(Kind::NftPlain)
            } else {
                None
            }
        }
        Backend::Iptables => {
            let lines: Option<Vec<RestoreLine>> = actions
                .iter()
                .map(|c| restore_line(c.layer, &c.args))
                .collect();
            let lines = lines?;
            if ignoring {
                // An ignore-errors group that creates with auto-rollback (libvirt's checksum
                // group) must record inverses: only the per-command path does that.
                if auto && lines.iter().any(|l| l.create) {
                    return None;
                }
                return Some(Kind::IptRemoval);
            }
            let undoable = lines.iter().all(|l| l.create);
            let sections: BTreeSet<(Layer, &str)> =
                lines.iter().map(|l| (l.layer, l.table.as_str())).collect();
            (undoable || sections.len() == 1).then_some(Kind::IptApply { undoable })
        }
    }
}

/// The input line (1-based) nft or a restore program blamed in its error output, if any:
/// `/dev/stdin:LINE:COL`, `-:LINE:COL`, `line LINE failed`, `Error occurred at line: LINE`.
pub fn error_line(stderr: &str) -> Option<usize> {
    for l in stderr.lines() {
        for prefix in ["/dev/stdin:", "-:"] {
            if let Some(rest) = l.strip_prefix(prefix) {
                if let Some(n) = rest.split(':').next().and_then(|n| n.parse().ok()) {
                    return Some(n);
                }
            }
        }
        for marker in ["line ", "at line: "] {
            if let Some(at) = l.find(marker) {
                let digits: String = l[at + marker.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(n) = digits.parse() {
                    return Some(n);
                }
            }
        }
    }
    None
}

/// Whether a failure message says the object to delete was not there (so a removal found it
/// already gone rather than failing for another reason).
pub fn failure_is_missing(stderr: &str) -> bool {
    [
        "No such file or directory",
        "does a matching rule exist",
        "No chain/target/match by that name",
        "does not exist",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Handles present now in the tables a failed nft removal touches.
#[derive(Default)]
struct Present {
    /// (family, table) → handles of its chains and rules; absent key: table gone.
    objects: HashMap<(String, String), BTreeSet<u64>>,
    /// (family, handle) of tables.
    tables: BTreeSet<(String, u64)>,
    /// Whether `tables` is complete (listed with `nft -j list tables`).
    tables_complete: bool,
}

impl Present {
    /// List what `deletes` touch. The executor's own failure is the removal's ([`run_batch`]).
    fn list(exec: &dyn Executor, deletes: &[NftDelete]) -> Result<Present, Error> {
        let mut present = Present::default();
        let touched: BTreeSet<(String, String)> = deletes
            .iter()
            .filter_map(|d| d.table.clone().map(|t| (d.family.clone(), t)))
            .collect();
        for (family, table) in touched {
            let argv: Vec<String> = ["nft", "-a", "list", "table", &family, &table]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let out = run_argv(exec, &argv)?;
            if !out.success() {
                continue;
            }
            let listing = nft::parse_listing(&out.stdout);
            if let Some(h) = listing.table {
                present.tables.insert((family.clone(), h));
            }
            present
                .objects
                .insert((family, table), listing.object_handles());
        }
        if deletes.iter().any(|d| d.object == NftObject::Table) {
            let argv: Vec<String> = ["nft", "-j", "list", "tables"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let out = run_argv(exec, &argv)?;
            if let Some(tables) = out
                .success()
                .then(|| nft::parse_tables_json(&out.stdout))
                .flatten()
            {
                present
                    .tables
                    .extend(tables.into_iter().map(|t| (t.family, t.handle)));
                present.tables_complete = true;
            }
        }
        Ok(present)
    }

    /// Whether the object a delete names is still there (unknown counts as there).
    fn has(&self, d: &NftDelete) -> bool {
        match (&d.table, d.object) {
            (_, NftObject::Table) => {
                !self.tables_complete || self.tables.contains(&(d.family.clone(), d.handle))
            }
            (Some(t), _) => self
                .objects
                .get(&(d.family.clone(), t.clone()))
                .is_some_and(|hs| hs.contains(&d.handle)),
            (None, _) => true,
        }
    }
}

/// The order a removal batch deletes in, as indices into `rule_delete`/`appended`.
///
/// Each maximal run of rule deletes (never crossing a chain, table or other delete) is
/// reordered: the deletes of inserted rules first, in plan order (plans list them newest first,
/// and an insert lands at the front, so that is front first already), then the deletes of
/// appended rules in *reverse* plan order, which is creation order and so front first too. The
/// kernel's delete by handle and iptables-nft's delete by specification both walk the chain
/// from the front, so front first makes a removal linear instead of quadratic. Deletes of
/// distinct rules commute, so the result is the same; the per-command path keeps the plan
/// order exactly (libvirt's).
fn front_first(rule_delete: &[bool], appended: &[bool]) -> Vec<usize> {
    let n = rule_delete.len();
    let mut order = Vec::with_capacity(n);
    let mut k = 0;
    while k < n {
        if !rule_delete[k] {
            order.push(k);
            k += 1;
            continue;
        }
        let run_end = (k..n).find(|&j| !rule_delete[j]).unwrap_or(n);
        order.extend((k..run_end).filter(|&j| !appended[j]));
        order.extend((k..run_end).rev().filter(|&j| appended[j]));
        k = run_end;
    }
    order
}

/// Put `items` in the order `order` (a permutation of its indices).
fn permute<T: Clone>(items: &[T], order: &[usize]) -> Vec<T> {
    order.iter().map(|&k| items[k].clone()).collect()
}

/// Does this iptables-family command delete a rule?
fn ipt_rule_delete(args: &[String]) -> bool {
    args.iter().any(|a| a == "-D" || a == "--delete")
}

fn strings(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|s| s.to_string()).collect()
}

/// Run a batch. The executor's own failure (the program could not start, the CLI could not
/// journal it) is an [`Error::Exec`]: an apply re-runs the groups command by command, which
/// reports it properly; a removal fails with it, as the per-command path would.
fn run_batch(exec: &dyn Executor, argv: &[String], input: &str) -> Result<Output, Error> {
    exec.run(Invocation {
        argv,
        stdin: Some(input.as_bytes()),
    })
    .map_err(|source| {
        debug!(cmd = %command_line(argv), error = %source, "batch could not run");
        Error::Exec {
            cmdline: command_line(argv),
            source,
        }
    })
}

/// Whether `--check` finds the rules of commands `cmds` of `section` all present (`present`)
/// or all absent. A command without a check form, or a check that could not run, answers no:
/// the kernel's state is then unknown.
fn rules_are(
    exec: &dyn Executor,
    section: &Section<'_>,
    cmds: impl IntoIterator<Item = usize>,
    present: bool,
) -> bool {
    let (program, lead) = section.layer.program(Backend::Iptables);
    cmds.into_iter().all(|c| {
        let Some(check) = rollback::iptables_check(section.cmds[c].2) else {
            return false;
        };
        let mut argv = vec![program.to_string()];
        argv.extend(lead.iter().map(|s| s.to_string()));
        argv.extend(check);
        exec.run(Invocation {
            argv: &argv,
            stdin: None,
        })
        .is_ok_and(|o| o.success() == present)
    })
}

/// A (program, table) section of an iptables-family batch: one `*table … COMMIT`, the unit the
/// kernel commits atomically.
struct Section<'a> {
    layer: Layer,
    table: String,
    /// (group, action index, args, restore line)
    cmds: Vec<(usize, usize, &'a [String], String)>,
}

/// The argv of the restore program of `layer`.
fn restore_argv(layer: Layer) -> Vec<String> {
    let (program, lead) = restore_program(layer).expect("restore layer");
    let mut argv = vec![program.to_string()];
    argv.extend(lead.iter().map(|s| s.to_string()));
    argv
}

/// The input of one restore process made of several sections, each `*table`, its lines,
/// `COMMIT`; with the (first, last) input line numbers (1-based) each section occupies.
///
/// Public (with [`parse_family_input`] and [`restore_committed`]) so that a journal reader
/// decides which sections of a journalled restore run committed by the engine's own rule.
pub fn family_input(parts: &[(&str, Vec<&str>)]) -> (String, Vec<(usize, usize)>) {
    let mut input = String::new();
    let mut spans = Vec::with_capacity(parts.len());
    let mut line = 1;
    for (table, lines) in parts {
        input.push('*');
        input.push_str(table);
        input.push('\n');
        for l in lines {
            input.push_str(l);
            input.push('\n');
        }
        input.push_str("COMMIT\n");
        let last = line + lines.len() + 1;
        spans.push((line, last));
        line = last + 1;
    }
    (input, spans)
}

/// A restore input read back by [`parse_family_input`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInput {
    /// (table, lines) of each `*table … COMMIT` section, in input order.
    pub sections: Vec<(String, Vec<String>)>,
    /// The (first, last) input line (1-based) of each section, as [`family_input`] returns.
    pub spans: Vec<(usize, usize)>,
}

/// The sections of a restore input that [`family_input`] wrote, with its spans; `None` when `input` is not exactly such an input (it is written back and
/// compared, so a section read here is one the program was given).
pub fn parse_family_input(input: &str) -> Option<RestoreInput> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut open = false;
    for line in input.lines() {
        match line.strip_prefix('*') {
            Some(table) if !open => {
                sections.push((table.to_string(), Vec::new()));
                open = true;
            }
            _ if open && line == "COMMIT" => open = false,
            _ if open => sections.last_mut()?.1.push(line.to_string()),
            _ => return None,
        }
    }
    if open {
        return None;
    }
    let parts: Vec<(&str, Vec<&str>)> = sections
        .iter()
        .map(|(t, lines)| (t.as_str(), lines.iter().map(String::as_str).collect()))
        .collect();
    let (written, spans) = family_input(&parts);
    (written == input).then_some(RestoreInput { sections, spans })
}

/// How many leading sections of a restore run with section `spans` (from [`family_input`])
/// committed, as far as its exit tells: all on exit 0; after a failure blaming one of its
/// lines, the sections before that line's section (the program stops there). `None`: a failure that
/// names no line of the input, which only the kernel can settle (the engine asks `--check`).
pub fn restore_committed(spans: &[(usize, usize)], status: i32, stderr: &str) -> Option<usize> {
    if status == 0 {
        return Some(spans.len());
    }
    blamed(spans, stderr).map(|(k, _)| k)
}

/// Where a failed multi-section restore stopped: the section (index into the parts) holding
/// the line the program blamed and that line's offset among the section's commands (`None`
/// for its `*table` or `COMMIT` line). The program exits at the first failure; every section
/// before it committed (each `COMMIT` is its own kernel transaction), the blamed one was
/// rolled back whole, later ones never ran. `None`: the program named no line we know.
fn blamed(spans: &[(usize, usize)], stderr: &str) -> Option<(usize, Option<usize>)> {
    let n = error_line(stderr)?;
    let k = spans.iter().position(|&(a, b)| a <= n && n <= b)?;
    let (a, b) = spans[k];
    Some((k, (n > a && n < b).then(|| n - a - 1)))
}

/// Run `sections` (all of one layer) as ONE restore process: one process exit (and so one wait
/// for the kernel) per program instead of one per table. Returns how many sections committed,
/// in order: all on success; on failure those before the blamed one. A failure that names no
/// line (the program did not start, or died, perhaps after a `COMMIT`) is settled by asking
/// the kernel: the leading sections whose rules `--check` finds all present committed. Only
/// all-create sections are checked (a lone section with other commands counts as not
/// committed: its rules cannot be told apart from what was there before).
fn run_family(exec: &dyn Executor, sections: &[&Section<'_>]) -> usize {
    let parts: Vec<(&str, Vec<&str>)> = sections
        .iter()
        .map(|s| {
            (
                s.table.as_str(),
                s.cmds.iter().map(|c| c.3.as_str()).collect(),
            )
        })
        .collect();
    let (input, spans) = family_input(&parts);
    if let Ok(out) = run_batch(exec, &restore_argv(sections[0].layer), &input) {
        if let Some(k) = restore_committed(&spans, out.status, &out.stderr) {
            return k;
        }
        warn!(stderr = %out.stderr.trim_end(), "restore failed without naming a line; checking what committed");
    }
    let creates_only = sections
        .iter()
        .all(|s| s.cmds.iter().all(|c| rollback::iptables_is_create(c.2)));
    if !creates_only {
        return 0;
    }
    sections
        .iter()
        .take_while(|s| rules_are(exec, s, 0..s.cmds.len(), true))
        .count()
}

/// Delete again the rules the committed, all-create `sections` (one layer) added: one process,
/// newest section first, through [`delete_family`] (a rule that cannot be removed is dropped
/// and the rest retried; sections that committed are never sent again), the rest one command
/// at a time. Failures are logged: like libvirt's rollback, an undo goes as far as it can.
fn undo_family(exec: &dyn Executor, sections: &[&Section<'_>]) {
    let layer = sections[0].layer;
    let inverses: Vec<Vec<Vec<String>>> = sections
        .iter()
        .rev()
        .map(|s| {
            s.cmds
                .iter()
                .rev()
                .map(|c| rollback::iptables_inverse(c.2))
                .collect()
        })
        .collect();
    let undo: Vec<Section<'_>> = sections
        .iter()
        .rev()
        .zip(&inverses)
        .map(|(s, inv)| Section {
            layer,
            table: s.table.clone(),
            cmds: s
                .cmds
                .iter()
                .rev()
                .zip(inv)
                .filter_map(|(c, args)| {
                    restore_line(layer, args).map(|l| (c.0, c.1, args.as_slice(), l.line))
                })
                .collect(),
        })
        .collect();
    let undo: Vec<&Section<'_>> = undo.iter().collect();
    let dropped = |k: usize, c: usize, stderr: &str| {
        warn!(cmd = %undo[k].cmds[c].3, stderr = %stderr.trim_end(), "could not undo a rule of a committed batch section");
    };
    let rest = match delete_family(exec, &undo, &dropped, true) {
        Ok(rest) => rest,
        Err((_, err)) => {
            warn!(error = %err, "could not undo committed batch sections");
            return;
        }
    };
    let (program, lead) = layer.program(Backend::Iptables);
    for (k, c) in rest {
        let mut argv = vec![program.to_string()];
        argv.extend(lead.iter().map(|s| s.to_string()));
        argv.extend(undo[k].cmds[c].2.iter().cloned());
        let ok = exec
            .run(Invocation {
                argv: &argv,
                stdin: None,
            })
            .is_ok_and(|o| o.success());
        if !ok {
            warn!(cmd = %command_line(&argv), "could not undo a rule of a committed batch section");
        }
    }
}

/// Run the deleting `sections` (all of one layer) as ONE restore process. One line that fails
/// aborts its section only: the sections before it committed and are never sent again, the
/// blamed line is dropped (`dropped(section, command, stderr)`) and the rest — from the blamed
/// section on — is retried. Returns the (section, command) pairs that must still run one by
/// one: none on success; what has not committed when the program blames a `*table`/`COMMIT`
/// line, names no line, or keeps failing.
///
/// `undo`: a failure that names no line (the program died, perhaps after a `COMMIT`, or could
/// not run) is settled by `--check`: the leading sections whose rules are all gone committed
/// and are not resent. A removal instead fails with the executor's own error (`Err`, with the
/// group of the first command not done), as the per-command path does: a hard failure fails
/// even an ignore-errors group; and without an executor error it resends from `from`, each
/// failure then reported one by one.
fn delete_family(
    exec: &dyn Executor,
    sections: &[&Section<'_>],
    dropped: &dyn Fn(usize, usize, &str),
    undo: bool,
) -> Result<Vec<(usize, usize)>, (usize, Error)> {
    let argv = restore_argv(sections[0].layer);
    // Commands still to delete, per section; sections before `from` have committed.
    let mut pending: Vec<Vec<usize>> = sections
        .iter()
        .map(|s| (0..s.cmds.len()).collect())
        .collect();
    let mut from = 0;
    for _ in 0..16 + sections.len() {
        // Sections with nothing left are not sent (an empty section would be a useless commit).
        let sent: Vec<usize> = (from..sections.len())
            .filter(|&k| !pending[k].is_empty())
            .collect();
        if sent.is_empty() {
            return Ok(Vec::new());
        }
        let parts: Vec<(&str, Vec<&str>)> = sent
            .iter()
            .map(|&k| {
                (
                    sections[k].table.as_str(),
                    pending[k]
                        .iter()
                        .map(|&c| sections[k].cmds[c].3.as_str())
                        .collect(),
                )
            })
            .collect();
        let (input, spans) = family_input(&parts);
        let out = match run_batch(exec, &argv, &input) {
            Ok(out) if out.success() => return Ok(Vec::new()),
            Ok(out) => Some(out),
            Err(err) if !undo => {
                let group = sent
                    .iter()
                    .flat_map(|&k| pending[k].iter().map(move |&c| sections[k].cmds[c].0))
                    .min()
                    .unwrap_or_default();
                return Err((group, err));
            }
            Err(_) => None,
        };
        match out.as_ref().and_then(|o| blamed(&spans, &o.stderr)) {
            Some((j, Some(offset))) => {
                from = sent[j];
                let c = pending[from].remove(offset);
                dropped(from, c, out.as_ref().map_or("", |o| o.stderr.as_str()));
            }
            Some((j, None)) => {
                from = sent[j];
                break;
            }
            None => {
                if undo {
                    from = sent
                        .iter()
                        .copied()
                        .find(|&k| !rules_are(exec, sections[k], pending[k].clone(), false))
                        .unwrap_or(sections.len());
                }
                break;
            }
        }
    }
    Ok((from..sections.len())
        .flat_map(|k| pending[k].iter().map(move |&c| (k, c)))
        .collect())
}

/// Remove with `sections` (all of one layer) through [`delete_family`]: a dropped line is
/// reported to the observer (`missing` when the program says the rule is not there), and what
/// is left runs command by command with errors ignored (each failure reported there). Every
/// command is so reported at most once, and only when it did not take effect. A hard failure
/// of the executor fails the removal with the group of the command it hit (`Err`), as on the
/// per-command path.
fn remove_family(
    backend: Backend,
    exec: &dyn Executor,
    observer: &dyn ApplyObserver,
    sections: &[&Section<'_>],
) -> Result<(), (usize, Error)> {
    let layer = sections[0].layer;
    let report = |k: usize, c: usize, stderr: &str| {
        let (g, _, args, _) = &sections[k].cmds[c];
        let cmd = Command::new(layer, args.iter().cloned()).with_ignore_errors(true);
        observer.ignored_failure(*g, &cmd, failure_is_missing(stderr));
    };
    for (k, c) in delete_family(exec, sections, &report, false)? {
        let (g, _, args, _) = &sections[k].cmds[c];
        let cmd = Command::new(layer, args.iter().cloned()).with_ignore_errors(true);
        // Removal commands create nothing: no facts needed.
        let mut none = nft::Existing::default();
        run_command(
            backend,
            TransactionFlags::empty(),
            &cmd,
            exec,
            observer,
            *g,
            &mut none,
        )
        .map_err(|err| (*g, err))?;
    }
    Ok(())
}

/// The sections grouped by restore program (layer), each group in first-use order.
fn by_family<'s, 'a>(sections: &'s [Section<'a>]) -> Vec<Vec<&'s Section<'a>>> {
    let mut families: Vec<Vec<&Section<'a>>> = Vec::new();
    for s in sections {
        match families.iter_mut().find(|f| f[0].layer == s.layer) {
            Some(f) => f.push(s),
            None => families.push(vec![s]),
        }
    }
    families
}

/// Run `f` on every family, concurrently when there are several (they are different programs
/// touching disjoint tables), and collect the results in order.
fn each_family<'s, 'a, T: Send>(
    families: &[Vec<&'s Section<'a>>],
    f: impl Fn(&[&'s Section<'a>]) -> T + Sync,
) -> Vec<T> {
    if families.len() == 1 {
        return vec![f(&families[0])];
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = families
            .iter()
            .map(|fam| {
                let f = &f;
                scope.spawn(move || f(fam))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

impl Firewall {
    /// Plan and run the batch that starts at group `start` (see the module docs).
    pub(crate) fn batch_step(
        &mut self,
        start: usize,
        exec: &dyn Executor,
        observer: &dyn ApplyObserver,
    ) -> Step {
        let backend = self.backend;
        let Some(kind) = classify(backend, &self.groups[start]) else {
            return Step::PerCommand { until: start + 1 };
        };
        let mut end = start + 1;
        if kind.merges() {
            while end < self.groups.len() && classify(backend, &self.groups[end]) == Some(kind) {
                end += 1;
            }
        }
        for g in start..end {
            let auto = self.groups[g]
                .flags
                .contains(TransactionFlags::AUTO_ROLLBACK);
            for cmd in &self.groups[g].actions {
                observer.will_run(g, &argv_for(backend, auto, cmd).0);
            }
        }
        debug!(groups = ?(start..end), ?kind, "running groups as one batch");
        let recorded: Vec<usize> = (start..end)
            .map(|g| self.groups[g].rollbacks.len())
            .collect();
        let step = match kind {
            Kind::NftCreates => self.nft_creates(start, end, exec),
            Kind::NftPlain => self.nft_plain(start, end, exec),
            Kind::NftRemoval => self.nft_removal(start, end, exec, observer),
            Kind::IptApply { undoable } => self.ipt_apply(start, end, undoable, exec),
            Kind::IptRemoval => self.ipt_removal(start, end, exec, observer),
        };
        for (g, from) in (start..end).zip(recorded) {
            for inverse in &self.groups[g].rollbacks[from..] {
                observer.inverse_recorded(g, inverse);
            }
        }
        for g in start..end {
            self.groups[g].adding_rollback = false;
        }
        self.current_group = end - 1;
        step
    }

    /// The actions of groups `start..end` as (group, index) pairs and joined nft lines.
    fn nft_lines(&self, start: usize, end: usize) -> (Vec<(usize, usize)>, Vec<String>) {
        let items = self.items(start, end);
        let lines = items
            .iter()
            .map(|&(g, i)| self.groups[g].actions[i].args.join(" "))
            .collect();
        (items, lines)
    }

    /// The actions of groups `start..end` as (group, index) pairs.
    fn items(&self, start: usize, end: usize) -> Vec<(usize, usize)> {
        (start..end)
            .flat_map(|g| (0..self.groups[g].actions.len()).map(move |i| (g, i)))
            .collect()
    }

    fn log_batch_failure(&self, lines: &[String], out: Option<&Output>) {
        let Some(out) = out else { return };
        let blamed = error_line(&out.stderr).and_then(|n| lines.get(n.wrapping_sub(1)));
        debug!(
            status = out.status,
            failing = blamed.map(String::as_str).unwrap_or("?"),
            stderr = %out.stderr.trim_end(),
            "batch failed; nothing was applied, re-running command by command"
        );
    }

    fn nft_creates(&mut self, start: usize, end: usize, exec: &dyn Executor) -> Step {
        let items = self.items(start, end);
        match self.nft_create_batch(&items, exec) {
            Echoed::Applied => Step::Applied { next: end },
            Echoed::Failed => Step::PerCommand { until: end },
            Echoed::Incomplete { group, error } => Step::Failed { group, error },
        }
    }

    /// Run the creates `items` (group, action index) as one `nft -ae -f -` and record their
    /// inverses, exactly as the per-command path would: the tables their table/chain creates
    /// touch are listed first ([`learn_table`]), an `add` of a table or chain found absent is
    /// sent as `create`, and the echo is read by [`nft::map_echo`] (an object that existed
    /// gets no inverse).
    fn nft_create_batch(&mut self, items: &[(usize, usize)], exec: &dyn Executor) -> Echoed {
        let creates: Vec<nft::NftCreate> = items
            .iter()
            .map(|&(g, i)| {
                nft::nft_create(&self.groups[g].actions[i].args).expect("classified as create")
            })
            .collect();
        for create in &creates {
            if let Err(err) = learn_table(&mut self.existing, create, exec) {
                // The per-command path lists again and fails at the right command.
                debug!(error = %err, "listing before a create batch failed");
                return Echoed::Failed;
            }
        }
        let mut planned = self.existing.clone();
        let lines: Vec<String> = items
            .iter()
            .zip(&creates)
            .map(|(&(g, i), create)| {
                let args = &self.groups[g].actions[i].args;
                let line = if absent_before(&planned, create) {
                    nft::as_create(args).join(" ")
                } else {
                    args.join(" ")
                };
                if create.object != NftObject::Rule {
                    planned.note_created(create);
                }
                line
            })
            .collect();
        let mut input = lines.join("\n");
        input.push('\n');
        let argv = strings(&["nft", "-ae", "-f", "-"]);
        let out = run_batch(exec, &argv, &input).ok();
        let out = match out {
            Some(out) if out.success() => out,
            other => {
                self.log_batch_failure(&lines, other.as_ref());
                return Echoed::Failed;
            }
        };
        let echoes = nft::map_echo(&creates, &mut self.existing, &out.stdout);
        let first_missing = echoes.iter().position(|e| *e == Echo::Unaccounted);
        let upto = first_missing.unwrap_or(items.len());
        for ((&(g, i), create), echo) in items.iter().zip(&creates).zip(&echoes).take(upto) {
            if let Echo::Ours(handle) = echo {
                let inverse =
                    Command::new(self.groups[g].actions[i].layer, create.inverse(*handle))
                        .with_ignore_errors(true)
                        .with_appended(create.appends);
                self.groups[g].rollbacks.push(inverse);
            }
        }
        let Some(k) = first_missing else {
            return Echoed::Applied;
        };
        // The per-command path would have stopped at create `k` (its object has no known
        // handle). Make the kernel state match: delete what the later creates made, newest
        // first. Create `k`'s own object, if it exists, is left: its handle is unknown.
        let undo: Vec<String> = creates
            .iter()
            .zip(&echoes)
            .skip(k + 1)
            .rev()
            .filter_map(|(create, echo)| match echo {
                Echo::Ours(h) => Some(create.inverse(*h).join(" ")),
                _ => None,
            })
            .collect();
        if !undo.is_empty() {
            let mut input = undo.join("\n");
            input.push('\n');
            if !run_batch(exec, &strings(&["nft", "-f", "-"]), &input).is_ok_and(|o| o.success()) {
                warn!("could not undo the creates after a create whose echo was incomplete");
            }
        }
        let (g, _) = items[k];
        let error = Error::EchoIncomplete {
            cmdline: command_line(&argv),
            stdout: out.stdout,
        };
        Echoed::Incomplete { group: g, error }
    }

    fn nft_plain(&mut self, start: usize, end: usize, exec: &dyn Executor) -> Step {
        let (_, lines) = self.nft_lines(start, end);
        let mut input = lines.join("\n");
        input.push('\n');
        let out = run_batch(exec, &strings(&["nft", "-f", "-"]), &input).ok();
        if out.as_ref().is_some_and(Output::success) {
            Step::Applied { next: end }
        } else {
            self.log_batch_failure(&lines, out.as_ref());
            Step::PerCommand { until: end }
        }
    }

    fn nft_removal(
        &mut self,
        start: usize,
        end: usize,
        exec: &dyn Executor,
        observer: &dyn ApplyObserver,
    ) -> Step {
        let (items, lines) = self.nft_lines(start, end);
        let order = {
            let actions = items.iter().map(|&(g, i)| &self.groups[g].actions[i]);
            let rule_delete: Vec<bool> = actions
                .clone()
                .map(|c| parse_nft_delete(&c.args).is_some_and(|d| d.object == NftObject::Rule))
                .collect();
            let appended: Vec<bool> = actions.map(|c| c.appended).collect();
            front_first(&rule_delete, &appended)
        };
        let mut items = permute(&items, &order);
        let mut lines = permute(&lines, &order);
        let argv = strings(&["nft", "-f", "-"]);
        for attempt in 0..2 {
            if items.is_empty() {
                return Step::Applied { next: end };
            }
            let mut input = lines.join("\n");
            input.push('\n');
            // The executor's own failure fails the removal, as on the per-command path (a
            // hard failure fails even an ignore-errors group): blame the first group not done.
            let failed = |items: &[(usize, usize)], error| Step::Failed {
                group: items.iter().map(|&(g, _)| g).min().unwrap_or(start),
                error,
            };
            match run_batch(exec, &argv, &input) {
                Ok(out) if out.success() => return Step::Applied { next: end },
                Ok(_) => {}
                Err(error) => return failed(&items, error),
            }
            if attempt == 1 {
                break;
            }
            // One stale handle aborts the whole batch: find what is gone, drop it, retry.
            let deletes: Vec<NftDelete> = items
                .iter()
                .map(|&(g, i)| {
                    parse_nft_delete(&self.groups[g].actions[i].args).expect("classified")
                })
                .collect();
            let present = match Present::list(exec, &deletes) {
                Ok(present) => present,
                Err(error) => return failed(&items, error),
            };
            let mut kept_items = Vec::new();
            let mut kept_lines = Vec::new();
            for ((item, line), d) in items.iter().zip(lines).zip(&deletes) {
                if present.has(d) {
                    kept_items.push(*item);
                    kept_lines.push(line);
                } else {
                    observer.ignored_failure(item.0, &self.groups[item.0].actions[item.1], true);
                }
            }
            let dropped = items.len() - kept_items.len();
            debug!(dropped, "removal batch failed; dropped vanished handles");
            items = kept_items;
            lines = kept_lines;
            if dropped == 0 {
                break;
            }
        }
        for (g, i) in items {
            let cmd = &self.groups[g].actions[i];
            if let Err(error) = run_command(
                self.backend,
                TransactionFlags::empty(),
                cmd,
                exec,
                observer,
                g,
                &mut nft::Existing::default(),
            ) {
                return Step::Failed { group: g, error };
            }
        }
        Step::Applied { next: end }
    }

    /// The iptables-family sections of groups `start..end`, in first-use order.
    fn sections(&self, start: usize, end: usize) -> Vec<Section<'_>> {
        self.sections_of(&self.items(start, end))
    }

    /// The iptables-family sections of `items` (group, action index), in first-use order.
    fn sections_of(&self, items: &[(usize, usize)]) -> Vec<Section<'_>> {
        let mut sections: Vec<Section<'_>> = Vec::new();
        for &(g, i) in items {
            let cmd = &self.groups[g].actions[i];
            let rl = restore_line(cmd.layer, &cmd.args).expect("classified");
            let at = sections
                .iter()
                .position(|s| s.layer == rl.layer && s.table == rl.table);
            let at = at.unwrap_or_else(|| {
                sections.push(Section {
                    layer: rl.layer,
                    table: rl.table.clone(),
                    cmds: Vec::new(),
                });
                sections.len() - 1
            });
            sections[at].cmds.push((g, i, &cmd.args, rl.line));
        }
        sections
    }

    fn ipt_apply(&mut self, start: usize, end: usize, undoable: bool, exec: &dyn Executor) -> Step {
        let sections = self.sections(start, end);
        debug_assert!(
            undoable || sections.len() == 1,
            "multi-section batches are all creates"
        );
        let families = by_family(&sections);
        let committed = each_family(&families, |fam| run_family(exec, fam));
        if families.iter().zip(&committed).all(|(f, &c)| c == f.len()) {
            drop(families);
            drop(sections);
            let items = self.items(start, end);
            self.record_ipt_inverses(&items);
            return Step::Applied { next: end };
        }
        // Sections commit one by one: take back those that did, then libvirt's way.
        let committed: Vec<&[&Section<'_>]> = families
            .iter()
            .zip(&committed)
            .filter(|(_, &c)| c > 0)
            .map(|(f, &c)| &f[..c])
            .collect();
        if !committed.is_empty() {
            each_family(
                &committed.iter().map(|f| f.to_vec()).collect::<Vec<_>>(),
                |fam| undo_family(exec, fam),
            );
        }
        debug!("iptables batch failed; re-running command by command");
        Step::PerCommand { until: end }
    }

    /// Record the inverses of the applied iptables-family `items` of auto-rollback groups.
    fn record_ipt_inverses(&mut self, items: &[(usize, usize)]) {
        for &(g, i) in items {
            let group = &mut self.groups[g];
            let cmd = &group.actions[i];
            if group.flags.contains(TransactionFlags::AUTO_ROLLBACK)
                && rollback::iptables_is_create(&cmd.args)
            {
                let inverse = Command::new(cmd.layer, rollback::iptables_inverse(&cmd.args))
                    .with_ignore_errors(true)
                    .with_appended(rollback::iptables_is_append(&cmd.args));
                group.rollbacks.push(inverse);
            }
        }
    }

    fn ipt_removal(
        &mut self,
        start: usize,
        end: usize,
        exec: &dyn Executor,
        observer: &dyn ApplyObserver,
    ) -> Step {
        let backend = self.backend;
        let mut sections = self.sections(start, end);
        for s in &mut sections {
            let rule_delete: Vec<bool> = s.cmds.iter().map(|c| ipt_rule_delete(c.2)).collect();
            let appended: Vec<bool> = s
                .cmds
                .iter()
                .map(|c| self.groups[c.0].actions[c.1].appended)
                .collect();
            s.cmds = permute(&s.cmds, &front_first(&rule_delete, &appended));
        }
        let families = by_family(&sections);
        let results = each_family(&families, |fam| remove_family(backend, exec, observer, fam));
        // A hard failure in several programs: the lowest group is the one the per-command path
        // would have stopped at.
        match results
            .into_iter()
            .filter_map(Result::err)
            .min_by_key(|(g, _)| *g)
        {
            Some((group, error)) => Step::Failed { group, error },
            None => Step::Applied { next: end },
        }
    }
}

impl Firewall {
    /// Run commands that query callbacks added to group `gi`, starting at action `from`, as
    /// batches (libvirt runs them one process each; the global chain setup adds up to ~18).
    ///
    /// The run is the commands from `from` up to the next one with a callback (or the end).
    /// nft runs it as one `nft -f -` (or `nft -ae -f -` for auto-rollback creates); the
    /// iptables family as one restore per consecutive (program, table) stretch, in order.
    /// Returns `(next, until)`: actions `from..next` are applied (inverses recorded, as the
    /// per-command path would), and `next..until` must run command by command — a batch
    /// failed (it applied nothing, so re-running it reports libvirt's exact error), or the run
    /// is not batchable. `until > from` always.
    pub(crate) fn batch_added(
        &mut self,
        gi: usize,
        from: usize,
        exec: &dyn Executor,
        observer: &dyn ApplyObserver,
    ) -> crate::Result<(usize, usize)> {
        let backend = self.backend;
        let flags = self.groups[gi].flags;
        let actions = &self.groups[gi].actions;
        let run_end = actions[from..]
            .iter()
            .position(|c| c.query.is_some())
            .map_or(actions.len(), |k| from + k);
        if run_end < from + 2 {
            // A lone command costs one process either way; keep libvirt's form.
            return Ok((from, run_end.max(from + 1)));
        }
        // Stretches that are each one kernel transaction.
        let mut stretches: Vec<(usize, usize)> = Vec::new();
        if backend == Backend::Iptables {
            let mut key = None;
            for (k, cmd) in actions.iter().enumerate().take(run_end).skip(from) {
                let Some(rl) = restore_line(cmd.layer, &cmd.args) else {
                    return Ok((from, run_end));
                };
                let this = Some((rl.layer, rl.table));
                if this != key || stretches.is_empty() {
                    stretches.push((k, k + 1));
                    key = this;
                } else if let Some(last) = stretches.last_mut() {
                    last.1 = k + 1;
                }
            }
        } else {
            stretches.push((from, run_end));
        }
        for (a, b) in stretches {
            let Some(kind) = classify_cmds(backend, flags, &self.groups[gi].actions[a..b]) else {
                return Ok((a, run_end));
            };
            let auto = flags.contains(TransactionFlags::AUTO_ROLLBACK);
            for cmd in &self.groups[gi].actions[a..b] {
                observer.will_run(gi, &argv_for(backend, auto, cmd).0);
            }
            debug!(group = gi, actions = ?(a..b), ?kind, "running commands a callback added as one batch");
            let items: Vec<(usize, usize)> = (a..b).map(|i| (gi, i)).collect();
            let recorded = self.groups[gi].rollbacks.len();
            let outcome = match kind {
                Kind::NftCreates => self.nft_create_batch(&items, exec),
                Kind::NftPlain => {
                    let lines: Vec<String> = self.groups[gi].actions[a..b]
                        .iter()
                        .map(|c| c.args.join(" "))
                        .collect();
                    let mut input = lines.join("\n");
                    input.push('\n');
                    let out = run_batch(exec, &strings(&["nft", "-f", "-"]), &input).ok();
                    if out.as_ref().is_some_and(Output::success) {
                        Echoed::Applied
                    } else {
                        self.log_batch_failure(&lines, out.as_ref());
                        Echoed::Failed
                    }
                }
                Kind::IptApply { .. } => {
                    let sections = self.sections_of(&items);
                    let ok = sections.len() == 1 && run_family(exec, &[&sections[0]]) == 1;
                    drop(sections);
                    if ok {
                        self.record_ipt_inverses(&items);
                        Echoed::Applied
                    } else {
                        Echoed::Failed
                    }
                }
                // Ignored failures must be reported one by one: the per-command path does that.
                Kind::NftRemoval | Kind::IptRemoval => Echoed::Failed,
            };
            for inverse in &self.groups[gi].rollbacks[recorded..] {
                observer.inverse_recorded(gi, inverse);
            }
            match outcome {
                Echoed::Applied => {}
                Echoed::Failed => return Ok((a, run_end)),
                Echoed::Incomplete { error, .. } => return Err(error),
            }
        }
        Ok((run_end, run_end))
    }
}

/// An [`ApplyObserver`] that counts the failures an apply ignored, e.g. for `virtfw remove` to
/// say how many objects of a removal plan were already gone.
#[derive(Debug, Default)]
pub struct IgnoredCounter {
    missing: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicUsize,
}

impl IgnoredCounter {
    /// Commands whose object was already gone.
    pub fn missing(&self) -> usize {
        self.missing.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// Commands that failed for another reason (the failure was ignored).
    pub fn failed(&self) -> usize {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ApplyObserver for IgnoredCounter {
    fn ignored_failure(&self, _group: usize, _cmd: &Command, missing: bool) {
        let counter = if missing { &self.missing } else { &self.failed };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{FakeExecutor, FakeResponse};
    use crate::ApplyOptions;

    fn nft_firewall() -> Firewall {
        let mut fw = Firewall::new(Backend::Nftables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "T"]);
        fw.add_cmd(
            Layer::Ipv4,
            [
                "add",
                "chain",
                "ip",
                "T",
                "C",
                "{ type filter hook forward priority 0; policy accept; }",
            ],
        );
        fw.add_cmd(Layer::Ipv4, ["insert", "rule", "ip", "T", "C", "accept"]);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(Layer::Ipv6, ["add", "rule", "ip6", "T", "C", "drop"]);
        fw.add_cmd(
            Layer::Ipv6,
            ["add", "rule", "ip6", "T", "C", "comment", "\"x y\""],
        );
        fw
    }

    fn rollbacks(fw: &Firewall) -> Vec<Vec<Vec<String>>> {
        fw.groups()
            .iter()
            .map(|g| g.rollbacks().iter().map(|c| c.args().to_vec()).collect())
            .collect()
    }

    /// Batching allowed, whatever the environment says (these tests are about the batch path).
    fn batched(fw: &mut Firewall, fake: &FakeExecutor) -> crate::Result<()> {
        fw.apply_with(
            fake,
            ApplyOptions {
                observer: None,
                per_command: false,
            },
        )
    }

    fn per_command(fw: &mut Firewall, fake: &FakeExecutor) -> crate::Result<()> {
        fw.apply_with(
            fake,
            ApplyOptions {
                per_command: true,
                ..ApplyOptions::default()
            },
        )
    }

    #[test]
    fn consecutive_create_groups_run_as_one_echo_batch() {
        let fake = FakeExecutor::new().with_batching();
        let mut fw = nft_firewall();
        batched(&mut fw, &fake).unwrap();
        let inv = fake.invocations();
        // The table its table and chain creates touch is listed first (it is absent, so they
        // run as `create`), then one batch.
        assert_eq!(inv.len(), 2, "{:?}", fake.commands());
        assert_eq!(inv[0].0, ["nft", "-a", "list", "table", "ip", "T"]);
        assert_eq!(inv[1].0, ["nft", "-ae", "-f", "-"]);
        let input = String::from_utf8(inv[1].1.clone().unwrap()).unwrap();
        assert_eq!(input.lines().next(), Some("create table ip T"));
        assert_eq!(
            input.lines().nth(1),
            Some("create chain ip T C { type filter hook forward priority 0; policy accept; }")
        );
        assert_eq!(
            input.lines().nth(4),
            Some("add rule ip6 T C comment \"x y\"")
        );
        // The same handles in the same order as one process per command would get.
        let plain = FakeExecutor::new();
        let mut fw2 = nft_firewall();
        per_command(&mut fw2, &plain).unwrap();
        assert_eq!(rollbacks(&fw), rollbacks(&fw2));
        assert_eq!(plain.commands().len(), 6);
    }

    #[test]
    fn groups_with_callbacks_or_ignored_commands_stay_per_command() {
        let fake = FakeExecutor::new().with_batching();
        let mut fw = Firewall::new(Backend::Nftables);
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd_full(
            Layer::Ipv4,
            false,
            Some(Box::new(|_ctx: &mut crate::QueryContext| Ok(()))),
            ["list", "table", "ip", "T"],
        );
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "T"]);
        fw.add_cmd_full(Layer::Ipv4, true, None, ["add", "table", "ip", "U"]);
        fw.start_transaction(TransactionFlags::empty());
        fw.add_cmd(Layer::Ipv4, ["-c", "add", "table", "ip", "V"]);
        batched(&mut fw, &fake).unwrap();
        assert!(fake
            .commands()
            .iter()
            .all(|argv| !argv.contains(&"-f".to_string())));
        assert_eq!(fake.commands().len(), 4);
    }

    #[test]
    fn failing_batch_falls_back_and_rolls_back_like_libvirt() {
        let script = |fake: FakeExecutor| {
            fake.on(
                FakeExecutor::args_contain(&["drop"]),
                FakeResponse::fail(
                    1,
                    "Error: Could not process rule: No such file or directory",
                ),
            )
        };
        let batching = script(FakeExecutor::new().with_batching());
        let mut fw = nft_firewall();
        fw.start_rollback(crate::RollbackFlags::INHERIT_PREVIOUS);
        let err = batched(&mut fw, &batching).unwrap_err().to_string();

        let plain = script(FakeExecutor::new());
        let mut fw2 = nft_firewall();
        fw2.start_rollback(crate::RollbackFlags::INHERIT_PREVIOUS);
        let err2 = per_command(&mut fw2, &plain).unwrap_err().to_string();
        assert_eq!(err, err2);
        assert!(err.contains("drop"), "{err}");
        assert_eq!(rollbacks(&fw), rollbacks(&fw2));
        // After the one failed batch, exactly the per-command sequence (with its rollback).
        // The listing ran once, before the batch; the fallback reuses its facts.
        let cmds = batching.commands();
        assert_eq!(cmds[0], ["nft", "-a", "list", "table", "ip", "T"]);
        assert_eq!(cmds[1], ["nft", "-ae", "-f", "-"]);
        assert_eq!(cmds[2..], plain.commands()[1..]);
        assert_eq!(plain.commands()[0], cmds[0]);
        assert!(plain
            .transcript()
            .contains("delete \\\ntable \\\nip \\\nhandle \\\n1"));
    }

    #[test]
    fn error_lines_and_missing_messages() {
        assert_eq!(
            error_line("/dev/stdin:4:22-27: Error: Could not process rule"),
            Some(4)
        );
        assert_eq!(error_line("-:2:1-3: Error: syntax error"), Some(2));
        assert_eq!(
            error_line("iptables-restore: line 3 failed: Bad rule"),
            Some(3)
        );
        assert_eq!(error_line("Error occurred at line: 5\nTry"), Some(5));
        assert_eq!(error_line("nothing"), None);
        assert!(failure_is_missing(
            "Error: Could not process rule: No such file or directory"
        ));
        assert!(!failure_is_missing("Error: Device or resource busy"));
    }

    #[test]
    fn restore_lines() {
        let v = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let l = restore_line(
            Layer::Ipv4,
            &v("--table nat --insert LIBVIRT_PRT -j MASQUERADE"),
        )
        .unwrap();
        assert_eq!(
            (l.table.as_str(), l.line.as_str(), l.create),
            ("nat", "--insert LIBVIRT_PRT -j MASQUERADE", true)
        );
        let mut args = v("-A INPUT -m comment --comment");
        args.push("a b".into());
        assert_eq!(
            restore_line(Layer::Ipv6, &args).unwrap().line,
            "-A INPUT -m comment --comment \"a b\""
        );
        assert!(restore_line(Layer::Ipv4, &v("-L INPUT")).is_none());
        assert!(restore_line(Layer::Ipv4, &v("--list-rules")).is_none());
        assert!(restore_line(Layer::Tc, &v("-A X")).is_none());
        assert!(restore_line(Layer::Ipv4, &["-A".into(), "X".into(), "it's".into()]).is_none());
    }

    fn ipt_firewall() -> Firewall {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(
            Layer::Ipv4,
            ["--table", "filter", "--insert", "INPUT", "-j", "ACCEPT"],
        );
        fw.add_cmd(
            Layer::Ipv4,
            ["--table", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"],
        );
        fw.add_cmd(Layer::Ipv6, ["-A", "FORWARD", "-j", "DROP"]);
        fw
    }

    #[test]
    fn iptables_sections_run_one_process_per_program_and_failures_undo_committed_sections() {
        let fake = FakeExecutor::new().with_batching();
        let mut fw = ipt_firewall();
        batched(&mut fw, &fake).unwrap();
        let mut inv = fake.invocations();
        inv.sort_by(|a, b| a.0[0].cmp(&b.0[0]));
        let programs: Vec<&str> = inv.iter().map(|(a, _)| a[0].as_str()).collect();
        assert_eq!(programs, ["ip6tables-restore", "iptables-restore"]);
        assert_eq!(
            String::from_utf8(inv[1].1.clone().unwrap()).unwrap(),
            "*filter\n--insert INPUT -j ACCEPT\nCOMMIT\n*nat\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n"
        );
        let plain = FakeExecutor::new();
        let mut fw2 = ipt_firewall();
        per_command(&mut fw2, &plain).unwrap();
        assert_eq!(rollbacks(&fw), rollbacks(&fw2));

        // The nat section (second of iptables-restore's input) fails: the filter section
        // before it committed, and so did ip6tables-restore's. Both are undone, then libvirt's
        // sequence runs, ending in the same error and rollback.
        let fail = |f: FakeExecutor| {
            f.on(
                FakeExecutor::args_contain(&["MASQUERADE"]),
                FakeResponse::fail(1, "iptables: No chain/target/match by that name."),
            )
        };
        let fake = fail(FakeExecutor::new().with_batching());
        let mut fw = ipt_firewall();
        let err = batched(&mut fw, &fake).unwrap_err().to_string();
        let plain = fail(FakeExecutor::new());
        let mut fw2 = ipt_firewall();
        let err2 = per_command(&mut fw2, &plain).unwrap_err().to_string();
        assert_eq!(err, err2);
        assert_eq!(rollbacks(&fw), rollbacks(&fw2));
        let cmds = fake.commands();
        let mut undo: Vec<(String, String)> = fake
            .invocations()
            .into_iter()
            .filter_map(|(argv, stdin)| {
                let input = String::from_utf8(stdin?).unwrap();
                input.contains("--delete").then(|| (argv[0].clone(), input))
            })
            .collect();
        undo.sort();
        assert_eq!(
            undo,
            [
                (
                    "ip6tables-restore".to_string(),
                    "*filter\n--delete FORWARD -j DROP\nCOMMIT\n".to_string()
                ),
                (
                    "iptables-restore".to_string(),
                    "*filter\n--delete INPUT -j ACCEPT\nCOMMIT\n".to_string()
                ),
            ],
            "{cmds:?}"
        );
        assert_eq!(cmds.len(), 4 + plain.commands().len(), "{cmds:?}");
        assert_eq!(cmds[4..], plain.commands()[..]);
    }

    #[test]
    fn a_failing_first_section_leaves_nothing_to_undo() {
        let fail = |f: FakeExecutor| {
            f.on(
                FakeExecutor::args_contain(&["--insert", "INPUT"]),
                FakeResponse::fail(1, "iptables: No chain/target/match by that name."),
            )
        };
        let fake = fail(FakeExecutor::new().with_batching());
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(Layer::Ipv4, ["--insert", "INPUT", "-j", "ACCEPT"]);
        fw.add_cmd(
            Layer::Ipv4,
            ["-t", "nat", "-A", "POSTROUTING", "-j", "RETURN"],
        );
        let err = batched(&mut fw, &fake).unwrap_err().to_string();
        assert!(err.contains("--insert INPUT"), "{err}");
        // One batch, no undo (nothing committed), then the one failing command (libvirt stops
        // at the first failure and has nothing to roll back).
        let cmds = fake.commands();
        assert_eq!(cmds.len(), 2, "{cmds:?}");
        assert_eq!(cmds[0], ["iptables-restore", "-w", "--noflush"]);
        assert_eq!(cmds[1][..3], ["iptables", "-w", "--insert"]);
        assert!(fw.groups()[0].rollbacks().is_empty());
    }

    #[test]
    fn stale_deletes_in_later_sections_resend_only_what_did_not_commit() {
        let stale = |f: FakeExecutor| {
            f.on(
                FakeExecutor::args_contain(&["--delete", "C"]),
                FakeResponse::fail(1, "Bad rule (does a matching rule exist in that chain?)."),
            )
            .on(
                FakeExecutor::args_contain(&["--delete", "E"]),
                FakeResponse::fail(1, "Bad rule (does a matching rule exist in that chain?)."),
            )
        };
        let fake = stale(FakeExecutor::new().with_batching());
        let mut removal = Firewall::new(Backend::Iptables);
        removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
        for r in [
            "--delete A -j DROP",
            "--delete B -j DROP",
            "-t nat --delete C -j DROP",
            "-t nat --delete D -j DROP",
            "-t mangle --delete E -j DROP",
            "-t mangle --delete F -j DROP",
            "-t raw --delete G -j DROP",
        ] {
            removal.add_cmd(Layer::Ipv4, r.split(' '));
        }
        let counter = IgnoredCounter::default();
        removal
            .apply_with(
                &fake,
                ApplyOptions {
                    observer: Some(&counter),
                    per_command: false,
                },
            )
            .unwrap();
        assert_eq!((counter.missing(), counter.failed()), (2, 0));
        let inputs: Vec<String> = fake
            .invocations()
            .into_iter()
            .map(|(argv, stdin)| {
                assert_eq!(argv, ["iptables-restore", "-w", "--noflush"]);
                String::from_utf8(stdin.unwrap()).unwrap()
            })
            .collect();
        assert_eq!(
            inputs,
            [
                // C (line 6) is stale: filter committed, nat rolled back, the rest never ran.
                "*filter\n--delete A -j DROP\n--delete B -j DROP\nCOMMIT\n\
                 *nat\n--delete C -j DROP\n--delete D -j DROP\nCOMMIT\n\
                 *mangle\n--delete E -j DROP\n--delete F -j DROP\nCOMMIT\n\
                 *raw\n--delete G -j DROP\nCOMMIT\n",
                // From nat on, without C; E (line 5) is stale: nat committed.
                "*nat\n--delete D -j DROP\nCOMMIT\n\
                 *mangle\n--delete E -j DROP\n--delete F -j DROP\nCOMMIT\n\
                 *raw\n--delete G -j DROP\nCOMMIT\n",
                "*mangle\n--delete F -j DROP\nCOMMIT\n*raw\n--delete G -j DROP\nCOMMIT\n",
            ]
        );

        // A stale delete in the last section: everything before it is never sent again.
        let fake = stale(FakeExecutor::new().with_batching());
        let mut removal = Firewall::new(Backend::Iptables);
        removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
        for r in ["--delete A -j DROP", "-t mangle --delete E -j DROP"] {
            removal.add_cmd(Layer::Ipv4, r.split(' '));
        }
        let counter = IgnoredCounter::default();
        removal
            .apply_with(
                &fake,
                ApplyOptions {
                    observer: Some(&counter),
                    per_command: false,
                },
            )
            .unwrap();
        assert_eq!((counter.missing(), counter.failed()), (1, 0));
        assert_eq!(fake.commands().len(), 1, "{:?}", fake.commands());
    }

    #[test]
    fn nft_removal_drops_vanished_handles_and_counts_them() {
        let listing = "table ip T { # handle 4\n\tchain C { # handle 1\n\t\tip saddr 1.2.3.4 accept # handle 2\n\t}\n}\n";
        let fake = FakeExecutor::new()
            .with_batching()
            .on(
                FakeExecutor::args_contain(&["handle", "9"]),
                FakeResponse::fail(1, "Error: Could not process rule: No such file or directory"),
            )
            .on(
                FakeExecutor::args_contain(&["-a", "list", "table"]),
                FakeResponse::stdout(listing),
            )
            .on(
                FakeExecutor::args_contain(&["-j", "list", "tables"]),
                FakeResponse::stdout(
                    r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "T", "handle": 4}}]}"#,
                ),
            );
        let mut removal = Firewall::new(Backend::Nftables);
        removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
        for args in [
            "delete rule ip T C handle 2",
            "delete rule ip T C handle 9",
            "delete chain ip T handle 1",
            "delete table ip handle 4",
        ] {
            removal.add_cmd(Layer::Ipv4, args.split(' '));
        }
        let counter = IgnoredCounter::default();
        removal
            .apply_with(
                &fake,
                ApplyOptions {
                    observer: Some(&counter),
                    per_command: false,
                },
            )
            .unwrap();
        assert_eq!((counter.missing(), counter.failed()), (1, 0));
        let inv = fake.invocations();
        let last = String::from_utf8(inv.last().unwrap().1.clone().unwrap()).unwrap();
        assert_eq!(
            last,
            "delete rule ip T C handle 2\ndelete chain ip T handle 1\ndelete table ip handle 4\n"
        );
        assert_eq!(inv.len(), 4, "{:?}", fake.commands());
    }

    /// The stdin lines of the last batch the fake ran.
    fn last_batch(fake: &FakeExecutor) -> Vec<String> {
        let inv = fake.invocations();
        let input = inv
            .iter()
            .rev()
            .find_map(|(_, stdin)| stdin.clone())
            .unwrap();
        String::from_utf8(input)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn removal_deletes_appended_rules_front_first_and_per_command_keeps_plan_order() {
        let build = || {
            let mut fw = Firewall::new(Backend::Nftables);
            fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
            fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "T"]);
            fw.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "T", "C"]);
            for r in [
                "add rule ip T C a",
                "insert rule ip T C b",
                "add rule ip T C c",
            ] {
                fw.add_cmd(Layer::Ipv4, r.split(' '));
            }
            fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
            for r in ["add rule ip T C d", "add rule ip T C position 3 e"] {
                fw.add_cmd(Layer::Ipv4, r.split(' '));
            }
            fw
        };
        // Handles 1..=7 in creation order: table 1, chain 2, a 3, b 4, c 5, d 6, e 7.
        let fake = FakeExecutor::new().with_batching();
        let mut fw = build();
        batched(&mut fw, &fake).unwrap();
        let mut removal = fw.new_from_rollback().unwrap();
        let appended: Vec<(String, bool)> = removal
            .groups()
            .iter()
            .flat_map(|g| g.actions())
            .map(|c| (c.args().join(" "), c.appended()))
            .collect();
        assert_eq!(
            appended,
            [
                ("delete rule ip T C handle 7".to_string(), false),
                ("delete rule ip T C handle 6".to_string(), true),
                ("delete rule ip T C handle 5".to_string(), true),
                ("delete rule ip T C handle 4".to_string(), false),
                ("delete rule ip T C handle 3".to_string(), true),
                ("delete chain ip T handle 2".to_string(), false),
                ("delete table ip handle 1".to_string(), false),
            ]
        );
        // The mark survives the plan file; only appended deletes carry it.
        let xml = removal.to_xml();
        assert_eq!(xml.matches(" appended='yes'").count(), 3, "{xml}");
        let reread = Firewall::from_xml(&xml, "plan.xml").unwrap();
        assert_eq!(reread.to_xml(), xml);

        fake.clear();
        batched(&mut removal, &fake).unwrap();
        assert_eq!(fake.commands().len(), 1, "{:?}", fake.commands());
        assert_eq!(
            last_batch(&fake),
            [
                // Inserted (and positioned) ones in plan order, then appended in creation order,
                // all before the chain and table deletes they must not cross.
                "delete rule ip T C handle 7",
                "delete rule ip T C handle 4",
                "delete rule ip T C handle 3",
                "delete rule ip T C handle 5",
                "delete rule ip T C handle 6",
                "delete chain ip T handle 2",
                "delete table ip handle 1",
            ]
        );

        let plain = FakeExecutor::new();
        let mut removal = Firewall::from_xml(&xml, "plan.xml").unwrap();
        per_command(&mut removal, &plain).unwrap();
        let handles: Vec<String> = plain
            .commands()
            .iter()
            .map(|a| a.last().unwrap().clone())
            .collect();
        assert_eq!(handles, ["7", "6", "5", "4", "3", "2", "1"]);
    }

    #[test]
    fn iptables_removal_deletes_appended_rules_front_first_per_table() {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        for r in [
            "-A FORWARD -s 10.0.0.1 -j ACCEPT",
            "--insert FORWARD -s 10.0.0.2 -j ACCEPT",
            "-t nat --append POSTROUTING -s 10.0.0.3 -j MASQUERADE",
            "--append FORWARD -s 10.0.0.4 -j ACCEPT",
            "-t nat -A POSTROUTING -s 10.0.0.5 -j MASQUERADE",
        ] {
            fw.add_cmd(Layer::Ipv4, r.split(' '));
        }
        let fake = FakeExecutor::new().with_batching();
        batched(&mut fw, &fake).unwrap();
        let mut removal = fw.new_from_rollback().unwrap();
        fake.clear();
        batched(&mut removal, &fake).unwrap();
        let inputs: Vec<String> = fake
            .invocations()
            .into_iter()
            .map(|(_, stdin)| String::from_utf8(stdin.unwrap()).unwrap())
            .collect();
        // One process, one section per table (first use in the plan: nat's delete comes first,
        // the plan being newest first).
        assert_eq!(
            inputs,
            ["*nat\n--delete POSTROUTING -s 10.0.0.3 -j MASQUERADE\n\
              --delete POSTROUTING -s 10.0.0.5 -j MASQUERADE\nCOMMIT\n\
              *filter\n--delete FORWARD -s 10.0.0.2 -j ACCEPT\n\
              --delete FORWARD -s 10.0.0.1 -j ACCEPT\n\
              --delete FORWARD -s 10.0.0.4 -j ACCEPT\nCOMMIT\n"]
        );
    }

    fn setup_like(backend: Backend) -> Firewall {
        let mut fw = Firewall::new(backend);
        fw.start_transaction(TransactionFlags::empty());
        let queries: &[(&str, &[&[&str]])] = match backend {
            Backend::Nftables => &[(
                "list table ip T",
                &[
                    &["add", "table", "ip", "T"],
                    &["add", "chain", "ip", "T", "C"],
                    &["insert", "rule", "ip", "T", "C", "jump", "D"],
                ],
            )],
            _ => &[
                (
                    "--table filter --list-rules",
                    &[
                        &["--table", "filter", "--new-chain", "X"],
                        &["--table", "filter", "--insert", "INPUT", "--jump", "X"],
                    ],
                ),
                (
                    "--table nat --list-rules",
                    &[
                        &["--table", "nat", "--new-chain", "Y"],
                        &["--table", "nat", "--insert", "POSTROUTING", "--jump", "Y"],
                    ],
                ),
            ],
        };
        for (query, adds) in queries {
            let adds: Vec<Vec<String>> = adds
                .iter()
                .map(|a| a.iter().map(|s| s.to_string()).collect())
                .collect();
            fw.add_cmd_full(
                Layer::Ipv4,
                false,
                Some(Box::new(move |ctx: &mut crate::QueryContext| {
                    for a in &adds {
                        ctx.add_cmd(Layer::Ipv4, a.clone());
                    }
                    Ok(())
                })),
                query.split(' '),
            );
        }
        fw
    }

    #[test]
    fn commands_callbacks_add_run_as_one_batch_per_transaction() {
        let fake = FakeExecutor::new().with_batching();
        let mut fw = setup_like(Backend::Nftables);
        batched(&mut fw, &fake).unwrap();
        let cmds = fake.commands();
        assert_eq!(cmds.len(), 2, "{cmds:?}");
        assert_eq!(cmds[1], ["nft", "-f", "-"]);
        assert_eq!(
            last_batch(&fake),
            [
                "add table ip T",
                "add chain ip T C",
                "insert rule ip T C jump D"
            ]
        );

        // iptables: one restore per table stretch, in order, after both queries.
        let fake = FakeExecutor::new().with_batching();
        let mut fw = setup_like(Backend::Iptables);
        batched(&mut fw, &fake).unwrap();
        let inv = fake.invocations();
        let programs: Vec<&str> = inv.iter().map(|(a, _)| a[0].as_str()).collect();
        assert_eq!(
            programs,
            [
                "iptables",
                "iptables",
                "iptables-restore",
                "iptables-restore"
            ]
        );
        assert_eq!(
            String::from_utf8(inv[3].1.clone().unwrap()).unwrap(),
            "*nat\n--new-chain Y\n--insert POSTROUTING --jump Y\nCOMMIT\n"
        );
    }

    #[test]
    fn a_failed_batch_of_added_commands_reruns_them_like_libvirt() {
        for backend in [Backend::Nftables, Backend::Iptables] {
            let script = |fake: FakeExecutor| {
                fake.on(
                    FakeExecutor::args_contain(&["--insert", "POSTROUTING"]),
                    FakeResponse::fail(1, "iptables: No chain/target/match by that name."),
                )
                .on(
                    FakeExecutor::args_contain(&["add", "chain"]),
                    FakeResponse::fail(
                        1,
                        "Error: Could not process rule: No such file or directory",
                    ),
                )
            };
            let batching = script(FakeExecutor::new().with_batching());
            let mut fw = setup_like(backend);
            let err = batched(&mut fw, &batching).unwrap_err().to_string();
            let plain = script(FakeExecutor::new());
            let mut fw2 = setup_like(backend);
            let err2 = per_command(&mut fw2, &plain).unwrap_err().to_string();
            assert_eq!(err, err2);
            // After the failed batch, the same commands as libvirt runs, one by one.
            let cmds = batching.commands();
            let plain_cmds = plain.commands();
            let tail = &plain_cmds[plain_cmds.len() - 2..];
            assert_eq!(&cmds[cmds.len() - 2..], tail, "{backend}: {cmds:?}");
            assert!(cmds
                .iter()
                .any(|a| a.contains(&"-f".to_string()) || a[0].ends_with("-restore")));
        }
    }

    #[test]
    fn iptables_removal_drops_the_blamed_line_and_retries() {
        let fake = FakeExecutor::new().with_batching().on(
            FakeExecutor::args_contain(&["--delete", "INPUT", "DROP"]),
            FakeResponse::fail(1, "Bad rule (does a matching rule exist in that chain?)."),
        );
        let mut removal = Firewall::new(Backend::Iptables);
        removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
        removal.add_cmd(Layer::Ipv4, ["--delete", "INPUT", "-j", "ACCEPT"]);
        removal.add_cmd(Layer::Ipv4, ["--delete", "INPUT", "-j", "DROP"]);
        removal.add_cmd(
            Layer::Ipv4,
            ["--table", "nat", "--delete", "X", "-j", "DROP"],
        );
        let counter = IgnoredCounter::default();
        removal
            .apply_with(
                &fake,
                ApplyOptions {
                    observer: Some(&counter),
                    per_command: false,
                },
            )
            .unwrap();
        assert_eq!(counter.missing(), 1);
        // One process for both tables; the retry resends the filter section without the
        // blamed line (it was rolled back whole) and the nat section (it never ran).
        assert_eq!(
            last_batch(&fake),
            [
                "*filter",
                "--delete INPUT -j ACCEPT",
                "COMMIT",
                "*nat",
                "--delete X -j DROP",
                "COMMIT"
            ]
        );
        assert_eq!(fake.commands().len(), 2);
    }

    /// A matcher on a command's argv and standard input.
    type Matcher = fn(&[String], &str) -> bool;

    /// The fake (which still records every command), except that commands a rule matches get
    /// that rule's answer instead: an exit status and output, or (`None`) the executor's own
    /// failure, as the CLI's executor reports a journal it could not write.
    struct Broken<'a> {
        fake: &'a FakeExecutor,
        rules: Vec<(Matcher, Option<Output>)>,
    }

    impl Executor for Broken<'_> {
        fn run(&self, inv: Invocation<'_>) -> Result<Output, crate::ExecError> {
            let input = String::from_utf8_lossy(inv.stdin.unwrap_or_default()).into_owned();
            let argv = inv.argv;
            let real = self.fake.run(inv);
            match self.rules.iter().find(|(m, _)| m(argv, &input)) {
                Some((_, Some(out))) => Ok(out.clone()),
                Some((_, None)) => Err(crate::ExecError::Journal("No space left on device".into())),
                None => real,
            }
        }
        fn check_program(&self, program: &str) -> Result<(), crate::ExecError> {
            self.fake.check_program(program)
        }
        fn supports_batch(&self) -> bool {
            self.fake.supports_batch()
        }
    }

    /// A restore program killed by a signal: no line named, perhaps after a COMMIT.
    fn died() -> Option<Output> {
        Some(Output {
            status: 137,
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    fn ipt_removal() -> Firewall {
        let mut removal = Firewall::new(Backend::Iptables);
        removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
        removal.add_cmd(Layer::Ipv4, ["--delete", "INPUT", "-j", "ACCEPT"]);
        removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
        removal.add_cmd(Layer::Ipv4, ["-t", "nat", "--delete", "X", "-j", "DROP"]);
        removal
    }

    fn nft_removal_plan() -> Firewall {
        let mut removal = Firewall::new(Backend::Nftables);
        removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
        removal.add_cmd(Layer::Ipv4, "delete rule ip T C handle 2".split(' '));
        removal.add_cmd(Layer::Ipv4, "delete chain ip T handle 1".split(' '));
        removal
    }

    fn remove_with(fw: &mut Firewall, exec: &dyn Executor, per_command: bool) -> crate::Result<()> {
        let counter = IgnoredCounter::default();
        let result = fw.apply_with(
            exec,
            ApplyOptions {
                observer: Some(&counter),
                per_command,
            },
        );
        // A hard failure is the removal's error, never an ignored failure.
        assert_eq!((counter.missing(), counter.failed()), (0, 0));
        result
    }

    fn is_journal_error(result: crate::Result<()>) -> bool {
        matches!(
            result,
            Err(Error::Exec {
                source: crate::ExecError::Journal(_),
                ..
            })
        )
    }

    #[test]
    fn a_hard_failure_fails_a_removal_on_both_paths() {
        // Per-command (libvirt): the executor's own failure fails even an ignore-errors group.
        let plain = FakeExecutor::new();
        let broken = Broken {
            fake: &plain,
            rules: vec![(|a, _| a[0] == "iptables", None)],
        };
        assert!(is_journal_error(remove_with(
            &mut ipt_removal(),
            &broken,
            true
        )));
        assert_eq!(plain.commands().len(), 1, "it stops at the first command");

        // The batch could not run.
        let fake = FakeExecutor::new().with_batching();
        let broken = Broken {
            fake: &fake,
            rules: vec![(|a, _| a[0] == "iptables-restore", None)],
        };
        assert!(is_journal_error(remove_with(
            &mut ipt_removal(),
            &broken,
            false
        )));
        assert_eq!(fake.commands().len(), 1, "{:?}", fake.commands());

        // The batch died naming no line; the command-by-command fallback hits the failure.
        let fake = FakeExecutor::new().with_batching();
        let broken = Broken {
            fake: &fake,
            rules: vec![
                (|a, _| a[0] == "iptables-restore", died()),
                (|a, _| a[0] == "iptables", None),
            ],
        };
        assert!(is_journal_error(remove_with(
            &mut ipt_removal(),
            &broken,
            false
        )));
        assert_eq!(fake.commands().len(), 2, "{:?}", fake.commands());

        // nft: per command, as one batch, and while listing what a failed batch left.
        let plain = FakeExecutor::new();
        let broken = Broken {
            fake: &plain,
            rules: vec![(|a, _| a[0] == "nft", None)],
        };
        assert!(is_journal_error(remove_with(
            &mut nft_removal_plan(),
            &broken,
            true
        )));
        let fake = FakeExecutor::new().with_batching();
        let broken = Broken {
            fake: &fake,
            rules: vec![(|a, _| a[0] == "nft", None)],
        };
        assert!(is_journal_error(remove_with(
            &mut nft_removal_plan(),
            &broken,
            false
        )));
        let fake = FakeExecutor::new().with_batching();
        let broken = Broken {
            fake: &fake,
            rules: vec![
                (|a, _| a.contains(&"-f".to_string()), died()),
                (|a, _| a.contains(&"list".to_string()), None),
            ],
        };
        assert!(is_journal_error(remove_with(
            &mut nft_removal_plan(),
            &broken,
            false
        )));
        // The objects are still there, the batch keeps dying: the command-by-command
        // fallback hits the failure and the removal stops there.
        let fake = FakeExecutor::new().with_batching().on(
            FakeExecutor::args_contain(&["-a", "list", "table"]),
            FakeResponse::stdout(
                "table ip T { # handle 4\n\tchain C { # handle 1\n\t\taccept # handle 2\n\t}\n}\n",
            ),
        );
        let broken = Broken {
            fake: &fake,
            rules: vec![
                (|a, _| a.contains(&"-f".to_string()), died()),
                (|a, _| a.contains(&"delete".to_string()), None),
            ],
        };
        assert!(is_journal_error(remove_with(
            &mut nft_removal_plan(),
            &broken,
            false
        )));
    }

    /// Three iptables sections (filter, mangle, nat); the nat one fails when `nat_fails`.
    fn three_sections() -> Firewall {
        let mut fw = Firewall::new(Backend::Iptables);
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        fw.add_cmd(Layer::Ipv4, ["--insert", "INPUT", "-j", "ACCEPT"]);
        fw.add_cmd(Layer::Ipv4, ["--insert", "FORWARD", "-j", "DROP"]);
        fw.add_cmd(
            Layer::Ipv4,
            ["-t", "mangle", "-A", "OUTPUT", "-j", "RETURN"],
        );
        fw.add_cmd(
            Layer::Ipv4,
            ["-t", "nat", "-A", "POSTROUTING", "-j", "MASQUERADE"],
        );
        fw
    }

    fn masquerade_fails(f: FakeExecutor) -> FakeExecutor {
        f.on(
            FakeExecutor::args_contain(&["-A", "POSTROUTING", "MASQUERADE"]),
            FakeResponse::fail(1, "iptables: No chain/target/match by that name."),
        )
    }

    /// The commands the fake saw, as lines; a batch as its program and input.
    fn seen_by(fake: &FakeExecutor) -> Vec<String> {
        fake.invocations()
            .into_iter()
            .map(|(argv, stdin)| match stdin {
                Some(input) => format!("{} <<{}", argv[0], String::from_utf8(input).unwrap()),
                None => argv.join(" "),
            })
            .collect()
    }

    #[test]
    fn a_restore_that_dies_without_a_line_is_settled_by_check() {
        // The program died after committing filter and mangle, not nat: what --check finds
        // present is undone, the rest re-run command by command — nothing is added twice.
        let fake = FakeExecutor::new().with_batching().on(
            FakeExecutor::args_contain(&["--check", "POSTROUTING"]),
            FakeResponse::fail(
                1,
                "iptables: Bad rule (does a matching rule exist in that chain?).",
            ),
        );
        let broken = Broken {
            fake: &fake,
            rules: vec![(
                |a, input| a[0] == "iptables-restore" && input.contains("-A"),
                died(),
            )],
        };
        let mut fw = three_sections();
        fw.apply_with(
            &broken,
            ApplyOptions {
                observer: None,
                per_command: false,
            },
        )
        .unwrap();
        let seen = seen_by(&fake);
        assert_eq!(
            seen[1..5],
            [
                "iptables -w --check INPUT -j ACCEPT",
                "iptables -w --check FORWARD -j DROP",
                "iptables -w -t mangle --check OUTPUT -j RETURN",
                "iptables -w -t nat --check POSTROUTING -j MASQUERADE",
            ],
            "{seen:#?}"
        );
        assert_eq!(
            seen[5],
            "iptables-restore <<*mangle\n--delete OUTPUT -j RETURN\nCOMMIT\n\
             *filter\n--delete FORWARD -j DROP\n--delete INPUT -j ACCEPT\nCOMMIT\n"
        );
        assert_eq!(seen[6], "iptables -w --insert INPUT -j ACCEPT", "{seen:#?}");
        assert_eq!(seen.len(), 10, "{seen:#?}");
        let plain = FakeExecutor::new();
        let mut fw2 = three_sections();
        per_command(&mut fw2, &plain).unwrap();
        assert_eq!(rollbacks(&fw), rollbacks(&fw2));

        // Died after every COMMIT: all present, so it is applied, inverses recorded.
        let fake = FakeExecutor::new().with_batching();
        let broken = Broken {
            fake: &fake,
            rules: vec![(|a, _| a[0] == "iptables-restore", died())],
        };
        let mut fw = three_sections();
        fw.apply_with(
            &broken,
            ApplyOptions {
                observer: None,
                per_command: false,
            },
        )
        .unwrap();
        assert_eq!(seen_by(&fake).len(), 5, "one batch and four checks");
        assert_eq!(rollbacks(&fw), rollbacks(&fw2));
    }

    #[test]
    fn an_undo_that_dies_without_a_line_does_not_resend_what_committed() {
        // nat fails (line named): filter and mangle committed and are undone in one process
        // (mangle first). That process dies naming no line; --check finds mangle's rule gone
        // and filter's still there: only filter's deletes run again, one by one.
        let fake = masquerade_fails(FakeExecutor::new().with_batching()).on(
            FakeExecutor::args_contain(&["--check", "OUTPUT"]),
            FakeResponse::fail(
                1,
                "iptables: Bad rule (does a matching rule exist in that chain?).",
            ),
        );
        let broken = Broken {
            fake: &fake,
            rules: vec![(
                |a, input| a[0] == "iptables-restore" && input.contains("--delete"),
                died(),
            )],
        };
        let mut fw = three_sections();
        assert!(fw
            .apply_with(
                &broken,
                ApplyOptions {
                    observer: None,
                    per_command: false,
                },
            )
            .is_err());
        let seen = seen_by(&fake);
        assert!(seen[1].contains("*mangle\n--delete OUTPUT"), "{seen:#?}");
        assert_eq!(
            seen[2..6],
            [
                "iptables -w -t mangle --check OUTPUT -j RETURN",
                "iptables -w --check FORWARD -j DROP",
                "iptables -w --delete FORWARD -j DROP",
                "iptables -w --delete INPUT -j ACCEPT",
            ],
            "{seen:#?}"
        );
        // Then libvirt's sequence: the creates again, up to the failing one.
        assert_eq!(seen[6], "iptables -w --insert INPUT -j ACCEPT", "{seen:#?}");
    }

    #[test]
    fn an_undo_drops_the_rule_it_cannot_remove_and_retries() {
        // nat fails; filter's undo cannot delete FORWARD's rule (gone meanwhile): that line is
        // dropped and the section retried, so INPUT's rule does not stay (and get added twice).
        let fake = masquerade_fails(FakeExecutor::new().with_batching()).on(
            FakeExecutor::args_contain(&["--delete", "FORWARD"]),
            FakeResponse::fail(
                1,
                "iptables: Bad rule (does a matching rule exist in that chain?).",
            ),
        );
        let mut fw = three_sections();
        assert!(batched(&mut fw, &fake).is_err());
        let seen = seen_by(&fake);
        assert_eq!(
            seen[1],
            "iptables-restore <<*mangle\n--delete OUTPUT -j RETURN\nCOMMIT\n\
             *filter\n--delete FORWARD -j DROP\n--delete INPUT -j ACCEPT\nCOMMIT\n"
        );
        // mangle committed; filter is retried without the blamed line, alone.
        assert_eq!(
            seen[2],
            "iptables-restore <<*filter\n--delete INPUT -j ACCEPT\nCOMMIT\n"
        );
        assert_eq!(seen[3], "iptables -w --insert INPUT -j ACCEPT", "{seen:#?}");
    }
}
