//! What a journalled operation left in the kernel, and the commands that take it away.
//!
//! Pure functions over the journal's records and files, so they are unit-tested without root.
//! The rules (see docs/cli.md for why they are sufficient):
//!
//! * nft creates run with echo: the object exists iff its `N.out` holds a `# handle N` for it
//!   (nft prints the echo only after the kernel committed, and a batch commits all or nothing).
//!   The inverse is the exact `delete … handle N`. Whether a table or chain was *made* by the
//!   create or existed before is decided as the engine decided it: from the engine's own
//!   `nft -a list table` records in the journal, with the same function
//!   ([`virtfw::nft::map_echo`]). A create that completed but whose echo does not account for
//!   what it made fails the undo (the journal is kept) rather than guessing a handle.
//! * iptables-family creates: exit status 0 in a `done` record means created; another status
//!   means not; no `done` record means "unknown" (virtfw died while it ran): the undo then
//!   checks with `--check` first and deletes only what exists.
//! * iptables-family restore batches: only the sections that committed count, decided by the
//!   engine's own rule (`virtfw::batch::restore_committed`: exit 0 all, a blamed line the
//!   sections before it; no `done` record or no line named: unknown, every line behind
//!   `--check`). Each line is mapped back to the transaction command it was made from
//!   (`virtfw::batch::restore_form`), and its undo is that command's inverse: the argv is
//!   identical to the engine's rollback argv, never rebuilt from the restore text.
//! * A command counts as already undone when the same argv ran to completion after the
//!   rollback had started (a previous rollback or recovery pass): it is never run twice. So
//!   does an iptables-family delete that succeeded after the create it undoes, per command or
//!   as a line of a committed section of a restore of deletes (the engine's own take-back of
//!   the committed sections of a failed batch).
//! * A restore batch virtfw was killed during is settled section by section by asking the
//!   kernel (`IptCommands::settle`); an iptables delete an earlier undo pass was killed
//!   during is settled by counting the chain's rules against the witness listing that pass
//!   took first (`settle_interrupted`): `--check` alone cannot tell our rule from someone
//!   else's identical one.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use virtfw::{batch, nft, rollback};
use virtfw::{Backend, Firewall, Layer, TransactionFlags};

use crate::journal::{cmd_file, Record};

/// Asks the kernel now: runs a check or listing (journalled like every command) and returns
/// its standard output when it succeeded. Used to settle what virtfw was killed during.
pub(crate) type Probe<'a> = &'a dyn Fn(&[String]) -> Option<String>;

/// One command of an undo, with an optional existence check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UndoCmd {
    /// The command that removes the object (full argv, program first).
    pub argv: Vec<String>,
    /// For the iptables family: the `--check` twin; the delete runs only when it succeeds.
    pub check: Option<Vec<String>>,
}

/// An object the operation created.
#[derive(Debug, Clone)]
struct Created {
    /// The journal record of the command that created it.
    seq: u64,
    group: Option<usize>,
    undo: UndoCmd,
}

fn base(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

/// The iptables-family program and leading options of `layer` (iptables backend).
fn ipt_lead(layer: Layer) -> Vec<String> {
    let (p, lead) = layer.program(Backend::Iptables);
    std::iter::once(p)
        .chain(lead.iter().copied())
        .map(String::from)
        .collect()
}

fn ipt_layer(program: &str) -> Option<Layer> {
    match base(program) {
        "iptables" | "iptables-restore" => Some(Layer::Ipv4),
        "ip6tables" | "ip6tables-restore" => Some(Layer::Ipv6),
        "ebtables" | "ebtables-restore" => Some(Layer::Ethernet),
        _ => None,
    }
}

/// The `--check` twin of an iptables-family delete (`--delete`/`-D` → `--check`).
///
/// Only a delete gets one: the check runs first and the command only when the rule is there,
/// which is right for a delete and wrong for a create (a custom rollback that re-inserts).
pub(crate) fn check_of_delete(argv: &[String]) -> Option<Vec<String>> {
    if rollback::iptables_is_delete(argv) {
        rollback::iptables_check(argv)
    } else {
        None
    }
}

/// Split a line of `nft -f` or `iptables-restore` input into words: whitespace separates,
/// single or double quotes group (and are dropped), a backslash escapes inside double quotes.
pub(crate) fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                in_word = true;
                while let Some(d) = chars.next() {
                    if d == c {
                        break;
                    }
                    if d == '\\' && c == '"' {
                        if let Some(e) = chars.next() {
                            cur.push(e);
                        }
                        continue;
                    }
                    cur.push(d);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn has_echo(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| a.starts_with('-'))
        .any(|a| a == "--echo" || (a.starts_with('-') && !a.starts_with("--") && a.contains('e')))
}

fn nft_delete(create: &nft::NftCreate, handle: u64) -> UndoCmd {
    let mut argv = vec!["nft".to_string()];
    argv.extend(create.inverse(handle));
    UndoCmd { argv, check: None }
}

/// A journalled nft create that ran to completion but whose echo file does not account for
/// the object it made: its handle is unknown, so nothing can be undone exactly. The journal is
/// kept (the CLI exits 4) rather than guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal command {seq} ({cmdline}) succeeded but its echo does not account for what it created; its handle is unknown")]
pub(crate) struct EchoUnaccounted {
    pub seq: u64,
    pub cmdline: String,
}

fn ipt_delete(layer: Layer, args: &[String]) -> UndoCmd {
    let mut argv = ipt_lead(layer);
    argv.extend(rollback::iptables_inverse(args));
    let check = check_of_delete(&argv);
    UndoCmd { argv, check }
}

/// Everything the journalled commands of an apply of `tx` created, in creation order.
fn created(
    tx: &Firewall,
    dir: &Path,
    records: &[Record],
    auto_group: &dyn Fn(Option<usize>) -> bool,
    probe: Probe<'_>,
) -> Result<Vec<Created>, EchoUnaccounted> {
    let ipt = IptCommands::new(tx);
    let started = started_undos(records);
    let done: HashMap<u64, i32> = records
        .iter()
        .filter_map(|r| match r {
            Record::Done { seq, status } => Some((*seq, *status)),
            _ => None,
        })
        .collect();
    let not_run: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::NotRun { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    // What the tables held before our creates, rebuilt from the engine's own listings in the
    // journal (the first listing of a table precedes every table/chain create of ours in it).
    let mut existing = nft::Existing::default();
    for rec in records {
        let Record::Start {
            seq,
            group,
            argv,
            stdin,
        } = rec
        else {
            continue;
        };
        if let (Some((family, table)), Some(&status)) = (nft::listing_of(argv), done.get(seq)) {
            let read = |ext| std::fs::read_to_string(cmd_file(dir, *seq, ext)).unwrap_or_default();
            // A failed listing stopped the apply before anything was created in that table.
            let _ = existing.record_listing(&family, &table, status, &read("out"), &read("err"));
            continue;
        }
        let Some((program, args)) = argv.split_first() else {
            continue;
        };
        // A restore batch may hold the commands of several groups: each line is checked
        // against its own command's group (see `restore_created`).
        let restore = base(program).ends_with("-restore");
        if not_run.contains(seq) || (!restore && !auto_group(*group)) {
            continue;
        }
        let read =
            |ext: &str| std::fs::read_to_string(cmd_file(dir, *seq, ext)).unwrap_or_default();
        let status = done.get(seq).copied();
        let mut push = |undo: UndoCmd| {
            out.push(Created {
                seq: *seq,
                group: *group,
                undo,
            })
        };
        match base(program) {
            "nft" => nft_created(args, *stdin, status, &mut existing, &read, &mut push).map_err(
                |()| EchoUnaccounted {
                    seq: *seq,
                    cmdline: virtfw::transcript::command_line(argv),
                },
            )?,
            p if restore => {
                if let Some(mut run) = RestoreRun::read(p, status, *stdin, &read) {
                    if status.is_none() {
                        ipt.settle(tx, &mut run, &started, probe, true);
                    }
                    let fallback = auto_group(*group).then_some(*group);
                    for (group, undo) in restore_created(&ipt, &run, auto_group, fallback) {
                        out.push(Created {
                            seq: *seq,
                            group,
                            undo,
                        });
                    }
                }
            }
            p => {
                let Some(layer) = ipt_layer(p) else { continue };
                if status.is_some_and(|s| s != 0) {
                    continue;
                }
                let lead = ipt_lead(layer).len() - 1;
                let args = &args[lead.min(args.len())..];
                if rollback::iptables_is_create(args) {
                    push(ipt_delete(layer, args));
                }
            }
        }
    }
    Ok(out)
}

/// What one journalled nft command created: the inverses of its echoed creates, mapped by
/// [`nft::map_echo`] exactly as the engine mapped them. `status` is its exit status (`None`:
/// virtfw died while it ran). `Err(())`: it completed but its echo does not account for an
/// object it made.
fn nft_created(
    args: &[String],
    stdin: bool,
    status: Option<i32>,
    existing: &mut nft::Existing,
    read: &dyn Fn(&str) -> String,
    push: &mut dyn FnMut(UndoCmd),
) -> Result<(), ()> {
    if !has_echo(args) || status.is_some_and(|s| s != 0) {
        // Without echo it is not an auto-rollback create; a failed nft run committed nothing.
        return Ok(());
    }
    let creates: Vec<nft::NftCreate> = if args.iter().any(|a| a == "-f" || a == "--file") {
        if !stdin {
            return Ok(());
        }
        read("in").lines().filter_map(nft::line_create).collect()
    } else {
        nft::nft_create(args).into_iter().collect()
    };
    let echoes = nft::map_echo(&creates, existing, &read("out"));
    for (create, echo) in creates.iter().zip(echoes) {
        match echo {
            nft::Echo::Ours(h) => push(nft_delete(create, h)),
            nft::Echo::Existed => {}
            // Interrupted: nft echoes only after the kernel committed, so no echo for it means
            // it made nothing.
            nft::Echo::Unaccounted if status.is_none() => {}
            nft::Echo::Unaccounted => return Err(()),
        }
    }
    Ok(())
}

/// A journalled iptables-family restore run, read back with the engine's own helpers.
struct RestoreRun {
    layer: Layer,
    /// (table, lines) of each `*table … COMMIT` section, in input order.
    sections: Vec<(String, Vec<String>)>,
    /// How many leading sections committed, decided by the engine's rule
    /// ([`batch::restore_committed`]): all on exit 0, those before a blamed line's section.
    /// `None`: unknown (virtfw died while it ran, or it failed naming no line).
    committed: Option<usize>,
}

impl RestoreRun {
    /// The run of journalled restore `program` with exit `status` (`None`: no `done` record).
    /// `None` for a run without the engine's input: a `.in` that is not exactly what
    /// [`batch::family_input`] writes was never handed to a child (the child is spawned only
    /// after its input file is complete).
    fn read(
        program: &str,
        status: Option<i32>,
        stdin: bool,
        read: &dyn Fn(&str) -> String,
    ) -> Option<RestoreRun> {
        let layer = ipt_layer(program)?;
        if !stdin {
            return None;
        }
        let batch::RestoreInput { sections, spans } = batch::parse_family_input(&read("in"))?;
        let committed = status.and_then(|s| batch::restore_committed(&spans, s, &read("err")));
        Some(RestoreRun {
            layer,
            sections,
            committed,
        })
    }

    /// (table, line) of every line of the sections that took effect: the committed ones, or
    /// all of them when the outcome is unknown (their undo is then guarded by `--check`).
    fn lines(&self, unknown_too: bool) -> Vec<(&str, &str)> {
        let n = match self.committed {
            Some(k) => k,
            None if unknown_too => self.sections.len(),
            None => 0,
        };
        self.sections[..n.min(self.sections.len())]
            .iter()
            .flat_map(|(t, lines)| lines.iter().map(move |l| (t.as_str(), l.as_str())))
            .collect()
    }
}

/// The iptables-family commands of a transaction or plan with their restore forms
/// ([`batch::restore_form`]), to map each line of a journalled restore input back to the
/// command it was made from.
struct IptCommands<'a> {
    /// (group, command, restore form of the command, restore form of its inverse if a create)
    items: Vec<IptItem<'a>>,
}

type Form = Option<(String, String)>;
type IptItem<'a> = (usize, &'a virtfw::Command, Form, Form);

impl<'a> IptCommands<'a> {
    fn new(fw: &'a Firewall) -> IptCommands<'a> {
        let mut items = Vec::new();
        if fw.backend() == Backend::Iptables {
            for (g, group) in fw.groups().iter().enumerate() {
                for cmd in group.actions() {
                    let form = batch::restore_form(cmd.layer(), cmd.args());
                    let inverse = rollback::iptables_is_create(cmd.args())
                        .then(|| {
                            batch::restore_form(
                                cmd.layer(),
                                &rollback::iptables_inverse(cmd.args()),
                            )
                        })
                        .flatten();
                    items.push((g, cmd, form, inverse));
                }
            }
        }
        IptCommands { items }
    }

    /// The first command not yet `used` whose restore form (`inverse`: its inverse's) is
    /// `table`/`line` of `layer`; marks it used (the engine sends each command once per run).
    fn find(
        &self,
        layer: Layer,
        table: &str,
        line: &str,
        inverse: bool,
        used: &mut [bool],
    ) -> Option<(usize, &'a virtfw::Command)> {
        let k = self
            .items
            .iter()
            .enumerate()
            .position(|(k, (_, cmd, f, i))| {
                let form = if inverse { i } else { f };
                !used[k]
                    && cmd.layer() == layer
                    && form
                        .as_ref()
                        .is_some_and(|(t, l)| t.as_str() == table && l.as_str() == line)
            })?;
        used[k] = true;
        let (g, cmd, _, _) = &self.items[k];
        Some((*g, *cmd))
    }

    /// Settle the outcome of restore `run` of `fw`'s commands that virtfw was killed during (no
    /// `done` record) by asking the kernel, section by section in input order (each `COMMIT`
    /// is atomic, and a section runs only after the one before it committed):
    ///
    /// * `creates` (an apply): a section committed iff every rule of it is there, the engine's
    ///   rule for a restore that named no line (`run_family`). Someone else's identical rule
    ///   answers "there" too, so a section counts only when all of ours are.
    /// * deletes (a removal): a section committed iff some rule of it is gone. "All gone"
    ///   never holds for a section with a rule someone else has too (theirs stays), and
    ///   re-running that delete would take theirs.
    ///
    /// Rules whose undo (or delete) a later pass already started (`started`: argvs, with
    /// multiplicity) are left out of the question: their state is ours to explain.
    fn settle(
        &self,
        fw: &Firewall,
        run: &mut RestoreRun,
        started: &HashMap<Vec<String>, usize>,
        probe: Probe<'_>,
        creates: bool,
    ) {
        if run.committed.is_some() {
            return;
        }
        let mut started = started.clone();
        let mut used = vec![false; self.items.len()];
        let mut committed = 0;
        for (table, lines) in &run.sections {
            let mut answers = Vec::new();
            for line in lines {
                let Some((_, cmd)) = self.find(run.layer, table, line, false, &mut used) else {
                    answers.push(None);
                    continue;
                };
                // What a later pass runs for this line: the create's undo, or the plan's delete.
                let argv = if creates {
                    ipt_delete(run.layer, cmd.args()).argv
                } else {
                    argv_of(fw, cmd)
                };
                let check = rollback::iptables_check(cmd.args());
                if let Some(n) = started.get_mut(&argv).filter(|n| **n > 0) {
                    *n -= 1;
                    continue;
                }
                answers.push(check.map(|c| {
                    let mut full = ipt_lead(run.layer);
                    full.extend(c);
                    probe(&full).is_some()
                }));
            }
            let done = if creates {
                answers.iter().all(|a| *a == Some(true))
            } else {
                answers.contains(&Some(false))
            };
            if !done {
                break;
            }
            committed += 1;
        }
        run.committed = Some(committed);
    }

    /// The undo argvs of what the committed sections of delete run `run` took away again:
    /// each delete line mapped to the create it is the inverse of, as that create's undo
    /// argv (so it matches the undo computed from the create exactly).
    fn undone_by(&self, run: &RestoreRun) -> Vec<Vec<String>> {
        let mut used = vec![false; self.items.len()];
        run.lines(false)
            .into_iter()
            .filter_map(|(table, line)| {
                self.find(run.layer, table, line, true, &mut used)
                    .map(|(_, cmd)| ipt_delete(run.layer, cmd.args()).argv)
            })
            .collect()
    }

    /// The full argvs of the commands the committed sections of `run` ran (a removal's
    /// restore: the plan's own delete commands, mapped back).
    fn ran_by(&self, fw: &Firewall, run: &RestoreRun) -> Vec<Vec<String>> {
        let mut used = vec![false; self.items.len()];
        run.lines(false)
            .into_iter()
            .filter_map(|(table, line)| {
                self.find(run.layer, table, line, false, &mut used)
                    .map(|(_, cmd)| argv_of(fw, cmd))
            })
            .collect()
    }
}

/// What one journalled iptables-family restore run created, with the group of each create.
///
/// Only the sections that committed count ([`RestoreRun::committed`]; unknown: all, each
/// behind `--check`). Each create line is mapped back to the transaction command it was made
/// from, and its undo is that command's inverse, so the argv is identical to the engine's
/// rollback argv and a rollback that already ran is recognised (`completed_undos`). Lines
/// of groups without auto-rollback record nothing, as in the engine. A line no command of
/// `tx` explains (a command a query callback added) falls back to the restore text, under
/// the run's own group (`fallback`, `None` when that group has no auto-rollback).
fn restore_created(
    ipt: &IptCommands<'_>,
    run: &RestoreRun,
    auto_group: &dyn Fn(Option<usize>) -> bool,
    fallback: Option<Option<usize>>,
) -> Vec<(Option<usize>, UndoCmd)> {
    let mut used = vec![false; ipt.items.len()];
    let mut out = Vec::new();
    for (table, line) in run.lines(true) {
        let words = split_words(line);
        if !rollback::iptables_is_create(&words) {
            continue;
        }
        match ipt.find(run.layer, table, line, false, &mut used) {
            Some((g, cmd)) => {
                if auto_group(Some(g)) {
                    out.push((Some(g), ipt_delete(run.layer, cmd.args())));
                }
            }
            None => {
                if let Some(group) = fallback {
                    let mut args = vec!["--table".to_string(), table.to_string()];
                    args.extend(words);
                    out.push((group, ipt_delete(run.layer, &args)));
                }
            }
        }
    }
    out
}

/// Does `mark` start the undo of an operation (the engine's rollback, the CLI's undo after a
/// failed apply, a recovery pass)? Commands after it are undo commands.
fn is_undo_mark(mark: &str) -> bool {
    ["rollback", "undo", "recover"]
        .iter()
        .any(|m| mark.starts_with(m))
}

/// The exit status of every command with a `done` record, by sequence number.
fn done_statuses(records: &[Record]) -> HashMap<u64, i32> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Done { seq, status } => Some((*seq, *status)),
            _ => None,
        })
        .collect()
}

/// Argvs (with multiplicity) of undo commands that already ran to completion:
///
/// * every command that completed after the first rollback/undo/recover mark;
/// * before it, an iptables-family delete that succeeded after the create whose undo it is
///   (the engine takes back the committed sections of a failed restore batch itself, as a
///   restore of deletes, and per command what that cannot delete): counted against
///   `created`, in journal order, so the transaction's own delete of a rule it creates later
///   never counts;
/// * the deletes of a restore run are those of its committed sections (`restore_deletes`,
///   by record; settled by asking the kernel when it has no `done` record), counted where it
///   started.
fn completed_undos(
    records: &[Record],
    created: &[Created],
    restore_deletes: &HashMap<u64, Vec<Vec<String>>>,
) -> HashMap<Vec<String>, usize> {
    let mut started = false;
    let mut argv_of: HashMap<u64, &Vec<String>> = HashMap::new();
    let mut early: HashMap<u64, &Vec<String>> = HashMap::new();
    let mut ours: HashMap<&Vec<String>, usize> = HashMap::new();
    let mut out: HashMap<Vec<String>, usize> = HashMap::new();
    // An undo counts once the rollback started, or when it undoes a create seen before it.
    let count = |argv: &Vec<String>,
                 started: bool,
                 ours: &mut HashMap<&Vec<String>, usize>,
                 out: &mut HashMap<Vec<String>, usize>| {
        if started {
            *out.entry(argv.clone()).or_default() += 1;
        } else if let Some(n) = ours.get_mut(argv).filter(|n| **n > 0) {
            *n -= 1;
            *out.entry(argv.clone()).or_default() += 1;
        }
    };
    for rec in records {
        match rec {
            Record::Mark { mark } if !started => started = is_undo_mark(mark),
            Record::Start { seq, argv, .. } => {
                for c in created.iter().filter(|c| c.seq == *seq) {
                    *ours.entry(&c.undo.argv).or_default() += 1;
                }
                // A restore's committed deletes are known from its record (settled when it
                // has no `done` record): counted where it started.
                for argv in restore_deletes.get(seq).into_iter().flatten() {
                    count(argv, started, &mut ours, &mut out);
                }
                if started {
                    argv_of.insert(*seq, argv);
                } else if argv.first().and_then(|p| ipt_layer(p)).is_some()
                    && rollback::iptables_is_delete(argv)
                {
                    early.insert(*seq, argv);
                }
            }
            Record::Done { seq, status } => {
                if let Some(argv) = argv_of.get(seq) {
                    *out.entry((*argv).clone()).or_default() += 1;
                }
                if let Some(argv) = early.get(seq).filter(|_| *status == 0) {
                    count(argv, started, &mut ours, &mut out);
                }
            }
            _ => {}
        }
    }
    out
}

/// Argvs (with multiplicity) of the commands started after the first rollback/undo/recover
/// mark: undo commands a previous pass began, finished or not.
fn started_undos(records: &[Record]) -> HashMap<Vec<String>, usize> {
    let mut started = false;
    let mut out: HashMap<Vec<String>, usize> = HashMap::new();
    for rec in records {
        match rec {
            Record::Mark { mark } if !started => started = is_undo_mark(mark),
            Record::Start { argv, .. } if started => *out.entry(argv.clone()).or_default() += 1,
            _ => {}
        }
    }
    out
}

/// The deletes each journalled restore run (by record) completed, as `map` names them. A
/// run without a `done` record is settled by `settle` when given, else counts as nothing.
fn restore_deletes(
    dir: &Path,
    records: &[Record],
    map: &dyn Fn(&RestoreRun) -> Vec<Vec<String>>,
    settle: Option<&dyn Fn(&mut RestoreRun)>,
) -> HashMap<u64, Vec<Vec<String>>> {
    let done = done_statuses(records);
    records
        .iter()
        .filter_map(|r| match r {
            Record::Start {
                seq, argv, stdin, ..
            } => {
                let program = base(argv.first()?);
                if !program.ends_with("-restore") {
                    return None;
                }
                let read = |ext: &str| {
                    std::fs::read_to_string(cmd_file(dir, *seq, ext)).unwrap_or_default()
                };
                let status = done.get(seq).copied();
                let mut run = RestoreRun::read(program, status, *stdin, &read)?;
                if status.is_none() {
                    settle?(&mut run);
                }
                Some((*seq, map(&run)))
            }
            _ => None,
        })
        .collect()
}

fn drop_completed(
    cmds: Vec<UndoCmd>,
    records: &[Record],
    created: &[Created],
    restore_deletes: &HashMap<u64, Vec<Vec<String>>>,
) -> Vec<UndoCmd> {
    let mut done = completed_undos(records, created, restore_deletes);
    cmds.into_iter()
        .filter(|c| match done.get_mut(&c.argv) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

/// The (layer, table, chain) an iptables or ip6tables rule delete works on (ebtables has no
/// `-S` listing to witness with).
fn chain_of(argv: &[String]) -> Option<(Layer, String, String)> {
    let layer = ipt_layer(argv.first()?)?;
    if layer == Layer::Ethernet || !rollback::iptables_is_delete(argv) {
        return None;
    }
    let mut table = "filter".to_string();
    let mut chain = None;
    let mut words = argv.iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "-t" | "--table" => table = words.next()?.clone(),
            "-D" | "--delete" if chain.is_none() => chain = Some(words.next()?.clone()),
            _ => {}
        }
    }
    Some((layer, table, chain?))
}

/// The listing of one chain (`-S CHAIN`): a pass's witness of how many rules it held.
fn witness_argv((layer, table, chain): &(Layer, String, String)) -> Vec<String> {
    let mut argv = ipt_lead(*layer);
    argv.extend(["-t", table, "-S", chain].map(String::from));
    argv
}

/// The witness listings (see [`settle_interrupted`]) of every chain `plan`'s iptables-family
/// deletes work on, each once: what a removal lists before its first delete.
pub(crate) fn witnesses(plan: &Firewall) -> Vec<Vec<String>> {
    if plan.backend() != Backend::Iptables {
        return Vec::new();
    }
    let chains: BTreeSet<(Layer, String, String)> = plan
        .groups()
        .iter()
        .flat_map(|g| g.actions())
        .filter_map(|cmd| chain_of(&argv_of(plan, cmd)))
        .collect();
    chains.iter().map(witness_argv).collect()
}

/// How many rules a `-S CHAIN` listing shows.
fn rule_count(listing: &str) -> usize {
    listing.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Settle the iptables-family deletes an earlier undo pass was killed during.
///
/// `--check` cannot tell whether such a delete took effect when someone else has an identical
/// rule (theirs answers "there" either way, and running the delete again takes theirs). So
/// every undo pass first lists each chain it is about to delete from (`witness_argv`,
/// journalled: the listing lands in the journal), and a delete interrupted in that pass is
/// settled by counting: the chain held `before` rules at the pass's start, `k` deletes of it
/// completed after, and the next pass's witness (or, for the last pass, this one's) shows
/// `after`. `after + k + 1 == before`: it took effect, and is dropped from `cmds`. A removal
/// takes its witnesses before its first delete (`witnesses`, from `Operation::begin`), so a
/// delete of `remove` itself is settled the same way. Anything else (no witness; a restore
/// batch ran in between; the chain changed by someone else) leaves it to run behind its
/// `--check`, as before.
///
/// Takes this pass's witnesses with `probe` (before any of its deletes run) for every chain
/// `cmds` deletes from, and returns `cmds` without the settled deletes.
fn settle_interrupted(
    cmds: Vec<UndoCmd>,
    dir: &Path,
    records: &[Record],
    probe: Probe<'_>,
) -> Vec<UndoCmd> {
    let chains: BTreeSet<(Layer, String, String)> = cmds
        .iter()
        .filter(|c| c.check.is_some())
        .filter_map(|c| chain_of(&c.argv))
        .collect();
    let now: HashMap<Vec<String>, Option<usize>> = chains
        .iter()
        .map(|k| {
            let argv = witness_argv(k);
            let count = probe(&argv).map(|out| rule_count(&out));
            (argv, count)
        })
        .collect();
    let done = done_statuses(records);
    let witness = |seq: u64| -> Option<usize> {
        (done.get(&seq) == Some(&0)).then_some(())?;
        std::fs::read_to_string(cmd_file(dir, seq, "out"))
            .ok()
            .map(|t| rule_count(&t))
    };
    let is_mark = |r: &Record| matches!(r, Record::Mark { mark } if is_undo_mark(mark));
    let mut took_effect: HashMap<Vec<String>, usize> = HashMap::new();
    for (i, rec) in records.iter().enumerate() {
        let Record::Start { seq, argv, .. } = rec else {
            continue;
        };
        if done.contains_key(seq) {
            continue;
        }
        let Some(chain) = chain_of(argv) else {
            continue;
        };
        let listing = witness_argv(&chain);
        let pass = records[..i].iter().rposition(is_mark).unwrap_or(0);
        // This pass's witness of the chain, and the deletes of it completed since.
        let Some(w) = records[pass..i]
            .iter()
            .rposition(|r| matches!(r, Record::Start { argv, .. } if *argv == listing))
        else {
            continue;
        };
        let w = pass + w;
        let Record::Start { seq: wseq, .. } = &records[w] else {
            continue;
        };
        let Some(before) = witness(*wseq) else {
            continue;
        };
        let batch_between = records[w..i].iter().any(|r| {
            matches!(r, Record::Start { argv, .. }
                if argv.first().is_some_and(|p| base(p).ends_with("-restore")))
        });
        if batch_between {
            continue;
        }
        let k = records[w..i]
            .iter()
            .filter(|r| match r {
                Record::Start { seq, argv, .. } => {
                    done.get(seq) == Some(&0) && chain_of(argv).as_ref() == Some(&chain)
                }
                _ => false,
            })
            .count();
        let next = records[i..].iter().find_map(|r| match r {
            Record::Start { seq, argv, .. } if *argv == listing => Some(witness(*seq)),
            _ => None,
        });
        let after = match next {
            Some(count) => count,
            None => now.get(&listing).copied().flatten(),
        };
        if after.is_some_and(|after| after + k + 1 == before) {
            *took_effect.entry(argv.clone()).or_default() += 1;
        }
    }
    cmds.into_iter()
        .filter(|c| match took_effect.get_mut(&c.argv) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

/// The full argv of a stored command of `fw`.
fn argv_of(fw: &Firewall, cmd: &virtfw::Command) -> Vec<String> {
    let (p, lead) = cmd.layer().program(fw.backend());
    std::iter::once(p)
        .chain(lead.iter().copied())
        .map(String::from)
        .chain(cmd.args().iter().cloned())
        .collect()
}

/// The undo of an interrupted apply of `tx`: for every group that started, last group first,
/// the inverses of what it created (last first), then its hand-written rollback commands (in
/// their written order, as libvirt runs rollbacks). Commands already completed by an earlier
/// rollback or recovery pass are left out.
///
/// `probe` settles a restore batch virtfw was killed during ([`IptCommands::settle`]).
pub(crate) fn undo_apply(
    tx: &Firewall,
    dir: &Path,
    records: &[Record],
    probe: Probe<'_>,
) -> Result<Vec<UndoCmd>, EchoUnaccounted> {
    let any_auto = tx
        .groups()
        .iter()
        .any(|g| g.flags().contains(TransactionFlags::AUTO_ROLLBACK));
    let auto_group = |g: Option<usize>| match g.and_then(|g| tx.groups().get(g)) {
        Some(group) => group.flags().contains(TransactionFlags::AUTO_ROLLBACK),
        None => any_auto,
    };
    let created = created(tx, dir, records, &auto_group, probe)?;
    let last_group = records
        .iter()
        .filter_map(|r| match r {
            Record::Start { group, .. } => *group,
            _ => None,
        })
        .max();
    let mut cmds: Vec<UndoCmd> = created
        .iter()
        .rev()
        .filter(|c| c.group.is_none())
        .map(|c| c.undo.clone())
        .collect();
    if let Some(last) = last_group {
        for j in (0..=last.min(tx.groups().len().saturating_sub(1))).rev() {
            cmds.extend(
                created
                    .iter()
                    .rev()
                    .filter(|c| c.group == Some(j))
                    .map(|c| c.undo.clone()),
            );
            for cmd in tx.groups()[j].rollbacks() {
                let argv = argv_of(tx, cmd);
                let check = (tx.backend() == Backend::Iptables)
                    .then(|| check_of_delete(&argv))
                    .flatten();
                cmds.push(UndoCmd { argv, check });
            }
        }
    }
    let ipt = IptCommands::new(tx);
    let undone = restore_deletes(dir, records, &|run| ipt.undone_by(run), None);
    let cmds = drop_completed(cmds, records, &created, &undone);
    Ok(settle_interrupted(cmds, dir, records, probe))
}

/// The rest of an interrupted removal: the plan's commands in order, minus those completed.
/// iptables-family deletes get a `--check` first (one may have run without its `done` record).
/// A removal restore batch whose exit was recorded completed the lines of its committed
/// sections, each mapped back to the plan command it was made from.
/// A removal restore virtfw was killed during is settled with `probe`
/// ([`IptCommands::settle`]): the lines of the sections that committed are done.
pub(crate) fn undo_remove(
    plan: &Firewall,
    dir: &Path,
    records: &[Record],
    probe: Probe<'_>,
) -> Vec<UndoCmd> {
    let cmds = plan
        .groups()
        .iter()
        .flat_map(|g| g.actions())
        .map(|cmd| {
            let argv = argv_of(plan, cmd);
            let check = (plan.backend() == Backend::Iptables)
                .then(|| check_of_delete(&argv))
                .flatten();
            UndoCmd { argv, check }
        })
        .collect();
    // Every command of a remove journal is a removal: count them all as undos.
    let mut all = vec![Record::Mark {
        mark: "undo".into(),
    }];
    all.extend(records.iter().cloned());
    let ipt = IptCommands::new(plan);
    let started = started_undos(&all);
    let settle = |run: &mut RestoreRun| ipt.settle(plan, run, &started, probe, false);
    let ran = restore_deletes(dir, records, &|run| ipt.ran_by(plan, run), Some(&settle));
    let cmds = drop_completed(cmds, &all, &[], &ran);
    settle_interrupted(cmds, dir, &all, probe)
}

/// Delete bridge `name` if it exists (the check makes a repeated delete harmless).
pub(crate) fn delete_bridge(name: &str) -> UndoCmd {
    let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    UndoCmd {
        argv: words(&["ip", "link", "del", "dev", name]),
        check: Some(words(&["ip", "link", "show", "dev", name])),
    }
}

/// The undo of a network start's bridge step: the bridge is ours iff our `ip link add NAME
/// type bridge` started (it runs only after `ip link show` found no such link, under the
/// lock) and did not fail. Killed while it ran: the delete is guarded by `ip link show`.
pub(crate) fn undo_bridge(records: &[Record]) -> Vec<UndoCmd> {
    let failed: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Done { seq, status } if *status != 0 => Some(*seq),
            Record::NotRun { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    records
        .iter()
        .filter_map(|r| match r {
            Record::Start { seq, argv, .. } if !failed.contains(seq) => match &argv[..] {
                [ip, link, add, name, ty, bridge]
                    if base(ip) == "ip"
                        && link == "link"
                        && add == "add"
                        && ty == "type"
                        && bridge == "bridge" =>
                {
                    Some(delete_bridge(name))
                }
                _ => None,
            },
            _ => None,
        })
        .rev()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    /// A kernel that answers every check and listing with success and no output.
    fn no_probe(_: &[String]) -> Option<String> {
        Some(String::new())
    }

    #[test]
    fn bridge_is_undone_only_when_our_add_did_not_fail() {
        let start = |seq, argv: &str| Record::Start {
            seq,
            group: None,
            argv: v(argv),
            stdin: false,
        };
        // Killed while `ip link add` ran: unknown, so a guarded delete.
        let records = vec![
            start(0, "ip link show dev br7"),
            Record::Done { seq: 0, status: 1 },
            start(1, "ip link add br7 type bridge"),
        ];
        assert_eq!(
            undo_bridge(&records),
            vec![UndoCmd {
                argv: v("ip link del dev br7"),
                check: Some(v("ip link show dev br7")),
            }]
        );
        // The add failed (someone else's link appeared): nothing is ours.
        let records = vec![
            start(1, "ip link add br7 type bridge"),
            Record::Done { seq: 1, status: 2 },
        ];
        assert!(undo_bridge(&records).is_empty());
        // The bridge existed: only `ip link show` ran.
        let records = vec![
            start(0, "ip link show dev br7"),
            Record::Done { seq: 0, status: 0 },
        ];
        assert!(undo_bridge(&records).is_empty());
    }

    /// Concurrent steps interleave their records in one phase (docs/cli.md, "Steps that run
    /// at the same time"): each undo must pick out its own commands by what they are.
    #[test]
    fn interleaved_records_of_a_concurrent_step_are_inert() {
        let start = |seq, argv: &str, stdin| Record::Start {
            seq,
            group: Some(0),
            argv: v(argv),
            stdin,
        };
        // Start: the global setup's batches run beside `ip link add`.
        let records = vec![
            start(0, "nft list table ip libvirt_network", false),
            start(1, "ip link show dev br7", false),
            Record::Done { seq: 1, status: 1 },
            start(2, "nft -f -", true),
            start(3, "ip link add br7 type bridge", false),
            Record::Done { seq: 0, status: 1 },
            Record::Done { seq: 2, status: 1 },
            Record::Done { seq: 3, status: 0 },
        ];
        assert_eq!(
            undo_bridge(&records),
            vec![UndoCmd {
                argv: v("ip link del dev br7"),
                check: Some(v("ip link show dev br7")),
            }]
        );
        // Stop: `ip link del` completed beside the removal, which was killed before its second
        // delete finished; only the plan's commands not completed are left.
        let plan = Firewall::from_xml(
            "<firewall backend='iptables'><group ignoreErrors='yes'>\
             <action layer='ipv4'><args><item>--delete</item><item>FWD</item><item>-j</item><item>A</item></args></action>\
             <action layer='ipv4'><args><item>--delete</item><item>FWD</item><item>-j</item><item>B</item></args></action>\
             </group></firewall>",
            "p.xml",
        )
        .unwrap();
        let records = vec![
            start(0, "ip link del dev br7", false),
            start(1, "iptables -w --delete FWD -j A", false),
            Record::Done { seq: 0, status: 0 },
            Record::Done { seq: 1, status: 0 },
            start(2, "iptables -w --delete FWD -j B", false),
        ];
        assert_eq!(
            undo_remove(&plan, Path::new("/nonexistent"), &records, &|_| Some(
                String::new()
            )),
            vec![UndoCmd {
                argv: v("iptables -w --delete FWD -j B"),
                check: Some(v("iptables -w --check FWD -j B")),
            }]
        );
    }

    #[test]
    fn words_follow_quotes() {
        assert_eq!(
            split_words(r#"-A FWD -m comment --comment "a b\"c" -j ACCEPT"#),
            v("-A FWD -m comment --comment")
                .into_iter()
                .chain(["a b\"c".to_string(), "-j".into(), "ACCEPT".into()])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            split_words("add rule ip t c  '{ x }'"),
            vec!["add", "rule", "ip", "t", "c", "{ x }"]
        );
    }

    #[test]
    fn check_twin_replaces_only_the_delete() {
        assert_eq!(
            check_of_delete(&v("iptables -w --delete FWD -s 1.2.3.4 -j ACCEPT")),
            Some(v("iptables -w --check FWD -s 1.2.3.4 -j ACCEPT"))
        );
        assert_eq!(check_of_delete(&v("iptables -w -X FWD")), None);
        assert_eq!(check_of_delete(&v("iptables -w -I FWD -j ACCEPT")), None);
    }

    fn tx() -> Firewall {
        Firewall::from_xml(
            "<firewall backend='nftables'><group autoRollback='yes'><action layer='ipv4'><args><item>add</item><item>table</item><item>ip</item><item>t</item></args></action></group></firewall>",
            "t.xml",
        )
        .unwrap()
    }

    #[test]
    fn nft_outcome_comes_from_the_echo_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            cmd_file(dir.path(), 9, "err"),
            "Error: No such file or directory\n",
        )
        .unwrap();
        std::fs::write(
            cmd_file(dir.path(), 0, "out"),
            "create table ip t # handle 7\n",
        )
        .unwrap();
        std::fs::write(cmd_file(dir.path(), 1, "out"), "").unwrap();
        let records = vec![
            // The engine's listing before the first table/chain create: no such table.
            Record::Start {
                seq: 9,
                group: Some(0),
                argv: v("nft -a list table ip t"),
                stdin: false,
            },
            Record::Done { seq: 9, status: 1 },
            Record::Start {
                seq: 0,
                group: Some(0),
                argv: v("nft -ae create table ip t"),
                stdin: false,
            },
            // killed while the second create ran, and it did not commit: no echo
            Record::Start {
                seq: 1,
                group: Some(0),
                argv: v("nft -ae create chain ip t c"),
                stdin: false,
            },
        ];
        let undo = undo_apply(&tx(), dir.path(), &records, &no_probe).unwrap();
        assert_eq!(
            undo,
            vec![UndoCmd {
                argv: v("nft delete table ip handle 7"),
                check: None
            }]
        );
    }

    /// The engine's listing of `ip t` (record `listing`, exit `status`), then the create
    /// record `seq` (`argv`, batch when `stdin`), with no `done` record yet.
    fn listed_then(listing: u64, status: i32, seq: u64, argv: &str, stdin: bool) -> Vec<Record> {
        vec![
            Record::Start {
                seq: listing,
                group: Some(0),
                argv: v("nft -a list table ip t"),
                stdin: false,
            },
            Record::Done {
                seq: listing,
                status,
            },
            Record::Start {
                seq,
                group: Some(0),
                argv: v(argv),
                stdin,
            },
        ]
    }

    /// The undo of one `nft -ae -f -` batch with `input` and `echo`, after the engine's
    /// listing of `ip t` printed `listing`; killed before its `done` record.
    fn batch_undo(dir: &Path, listing: &str, input: &str, echo: &str) -> Vec<Vec<String>> {
        std::fs::write(cmd_file(dir, 0, "out"), listing).unwrap();
        std::fs::write(cmd_file(dir, 1, "in"), input).unwrap();
        std::fs::write(cmd_file(dir, 1, "out"), echo).unwrap();
        let records = listed_then(0, 0, 1, "nft -ae -f -", true);
        undo_apply(&tx(), dir, &records, &no_probe)
            .unwrap()
            .into_iter()
            .map(|u| u.argv)
            .collect()
    }

    #[test]
    fn batch_echo_maps_trailing_handles_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let undo = batch_undo(
            dir.path(),
            "table ip t { # handle 4\n}\n",
            "add chain ip t c\nadd rule ip t c accept\nadd rule ip t c drop\n",
            "add chain ip t c # handle 1\nadd rule ip t c handle 3 accept # handle 2\nadd rule ip t c drop # handle 3\n# new generation 5 by process 9 (nft)\n",
        );
        assert_eq!(
            undo,
            vec![
                v("nft delete rule ip t c handle 3"),
                v("nft delete rule ip t c handle 2"),
                v("nft delete chain ip t handle 1")
            ]
        );
    }

    /// Item 1 of issue 8 in `recover`: a batch that `add`s a hand-made table and chain (nft
    /// 1.0.6 echoes nothing for the table and the chain's old handle) undoes only its own
    /// chain and rule, never by position.
    #[test]
    fn hand_made_table_and_chain_get_no_inverse() {
        let dir = tempfile::tempdir().unwrap();
        let undo = batch_undo(
            dir.path(),
            "table ip t { # handle 1\n\tchain c { # handle 1\n\t\taccept # handle 2\n\t}\n}\n",
            "add table ip t\nadd chain ip t c\ncreate chain ip t mine\nadd rule ip t c accept comment \"# handle 2\"\nadd rule ip t mine accept\n",
            "add chain ip t c # handle 1\ncreate chain ip t mine # handle 5\nadd rule ip t c accept comment \"# handle 2\" # handle 6\nadd rule ip t mine accept # handle 7\n# new generation 3 by process 9 (nft)\n",
        );
        assert_eq!(
            undo,
            vec![
                v("nft delete rule ip t mine handle 7"),
                v("nft delete rule ip t c handle 6"),
                v("nft delete chain ip t handle 5"),
            ]
        );
        // Completed (exit 0): the same answer.
        let mut records = listed_then(0, 0, 1, "nft -ae -f -", true);
        records.push(Record::Done { seq: 1, status: 0 });
        assert_eq!(
            undo_apply(&tx(), dir.path(), &records, &no_probe)
                .unwrap()
                .len(),
            3
        );
    }

    /// A create that completed (exit 0) but whose echo file lost what it made: its handle is
    /// unknown, so the undo refuses (the journal is kept) instead of guessing.
    #[test]
    fn completed_create_with_incomplete_echo_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            cmd_file(dir.path(), 0, "err"),
            "Error: No such file or directory\n",
        )
        .unwrap();
        std::fs::write(cmd_file(dir.path(), 1, "out"), "").unwrap();
        let mut records = listed_then(0, 1, 1, "nft -ae create table ip t", false);
        records.push(Record::Done { seq: 1, status: 0 });
        let err = undo_apply(&tx(), dir.path(), &records, &no_probe).unwrap_err();
        assert_eq!(err.seq, 1);
        // Interrupted instead (no `done`): no echo means it made nothing.
        assert!(undo_apply(&tx(), dir.path(), &records[..3], &no_probe)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn iptables_unknown_outcome_is_checked_and_failed_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let fw = Firewall::from_xml(
            "<firewall backend='iptables'><group autoRollback='yes'><action layer='ipv4'><args><item>-A</item><item>FORWARD</item></args></action></group></firewall>",
            "t.xml",
        )
        .unwrap();
        let records = vec![
            Record::Start {
                seq: 0,
                group: Some(0),
                argv: v("iptables -w -A FORWARD -s 1.1.1.1 -j ACCEPT"),
                stdin: false,
            },
            Record::Done { seq: 0, status: 0 },
            Record::Start {
                seq: 1,
                group: Some(0),
                argv: v("iptables -w -A FORWARD -s 2.2.2.2 -j ACCEPT"),
                stdin: false,
            },
            Record::Done { seq: 1, status: 1 },
            Record::Start {
                seq: 2,
                group: Some(0),
                argv: v("iptables -w -A FORWARD -s 3.3.3.3 -j ACCEPT"),
                stdin: false,
            },
            Record::Mark {
                mark: "rollback 0 0".into(),
            },
            Record::Start {
                seq: 3,
                group: Some(0),
                argv: v("iptables -w --delete FORWARD -s 1.1.1.1 -j ACCEPT"),
                stdin: false,
            },
            Record::Done { seq: 3, status: 0 },
        ];
        let undo = undo_apply(&fw, dir.path(), &records, &no_probe).unwrap();
        assert_eq!(
            undo,
            vec![UndoCmd {
                argv: v("iptables -w --delete FORWARD -s 3.3.3.3 -j ACCEPT"),
                check: Some(v("iptables -w --check FORWARD -s 3.3.3.3 -j ACCEPT")),
            }]
        );
    }

    /// The batch path's restore of two groups failed in its second section: only the first
    /// committed, and the engine took that back with a restore of deletes before re-running
    /// the groups one by one (created again, then undone by its rollback). Every undo argv is
    /// the engine's rollback argv of the command (no `--table filter` prefix), so each create
    /// is undone exactly once.
    #[test]
    fn restore_undo_counts_committed_sections_only_with_the_engines_argv() {
        let dir = tempfile::tempdir().unwrap();
        let fw = Firewall::from_xml(
            "<firewall backend='iptables'><group autoRollback='yes'>\
             <action layer='ipv4'><args><item>-I</item><item>FORWARD</item><item>-s</item><item>1.1.1.1</item><item>-j</item><item>ACCEPT</item></args></action>\
             <action layer='ipv4'><args><item>-t</item><item>nat</item><item>-A</item><item>POSTROUTING</item><item>-j</item><item>MASQUERADE</item></args></action>\
             </group><group autoRollback='yes'>\
             <action layer='ipv4'><args><item>-t</item><item>nat</item><item>-A</item><item>NOPE</item><item>-j</item><item>ACCEPT</item></args></action>\
             </group></firewall>",
            "t.xml",
        )
        .unwrap();
        let write =
            |seq, ext, text: &str| std::fs::write(cmd_file(dir.path(), seq, ext), text).unwrap();
        write(0, "in", "*filter\n-I FORWARD -s 1.1.1.1 -j ACCEPT\nCOMMIT\n*nat\n-A POSTROUTING -j MASQUERADE\n-A NOPE -j ACCEPT\nCOMMIT\n");
        write(0, "err", "iptables-restore: line 6 failed\n");
        write(
            1,
            "in",
            "*filter\n--delete FORWARD -s 1.1.1.1 -j ACCEPT\nCOMMIT\n",
        );
        let start = |seq, group, argv: &str, stdin| Record::Start {
            seq,
            group: Some(group),
            argv: v(argv),
            stdin,
        };
        let done = |seq, status| Record::Done { seq, status };
        let records = vec![
            start(0, 1, "iptables-restore -w --noflush", true),
            done(0, 1),
            start(1, 1, "iptables-restore -w --noflush", true),
            done(1, 0),
            start(2, 0, "iptables -w -I FORWARD -s 1.1.1.1 -j ACCEPT", false),
            done(2, 0),
            start(
                3,
                0,
                "iptables -w -t nat -A POSTROUTING -j MASQUERADE",
                false,
            ),
            done(3, 0),
            start(4, 1, "iptables -w -t nat -A NOPE -j ACCEPT", false),
            done(4, 1),
            Record::Mark {
                mark: "rollback 1 1".into(),
            },
        ];
        let undo: Vec<_> = undo_apply(&fw, dir.path(), &records, &no_probe)
            .unwrap()
            .into_iter()
            .map(|u| u.argv)
            .collect();
        assert_eq!(
            undo,
            vec![
                v("iptables -w -t nat --delete POSTROUTING -j MASQUERADE"),
                v("iptables -w --delete FORWARD -s 1.1.1.1 -j ACCEPT"),
            ]
        );
        // Killed while the first restore ran: its outcome is unknown, so every create of it
        // is undone behind its `--check` (and nothing else ran).
        let undo = undo_apply(&fw, dir.path(), &records[..1], &no_probe).unwrap();
        assert_eq!(undo.len(), 3, "{undo:?}");
        assert!(undo
            .iter()
            .all(|u| u.check.is_some() && !u.argv.contains(&"filter".to_string())));
    }

    /// An undo pass was killed right after a delete: the rule count of its chain, against the
    /// witness that pass listed first, says whether it took effect (someone else's identical
    /// rule would make `--check` answer "there" either way).
    #[test]
    fn interrupted_delete_is_settled_by_the_witness_count() {
        let dir = tempfile::tempdir().unwrap();
        let fw = Firewall::from_xml(
            "<firewall backend='iptables'><group autoRollback='yes'>\
             <action layer='ipv4'><args><item>-A</item><item>FWD</item><item>-s</item><item>1.1.1.1</item><item>-j</item><item>ACCEPT</item></args></action>\
             </group></firewall>",
            "t.xml",
        )
        .unwrap();
        let listing = "-N FWD\n-A FWD -s 1.1.1.1/32 -j ACCEPT\n-A FWD -s 1.1.1.1/32 -j ACCEPT\n";
        std::fs::write(cmd_file(dir.path(), 2, "out"), listing).unwrap();
        let start = |seq, argv: &str| Record::Start {
            seq,
            group: Some(0),
            argv: v(argv),
            stdin: false,
        };
        let records = vec![
            start(0, "iptables -w -A FWD -s 1.1.1.1 -j ACCEPT"),
            Record::Done { seq: 0, status: 0 },
            Record::Mark {
                mark: "recover".into(),
            },
            start(2, "iptables -w -t filter -S FWD"),
            Record::Done { seq: 2, status: 0 },
            start(3, "iptables -w --check FWD -s 1.1.1.1 -j ACCEPT"),
            Record::Done { seq: 3, status: 0 },
            start(4, "iptables -w --delete FWD -s 1.1.1.1 -j ACCEPT"),
        ];
        let now = |rules: usize| {
            move |argv: &[String]| {
                (argv == v("iptables -w -t filter -S FWD").as_slice())
                    .then(|| "-A FWD -s 1.1.1.1/32 -j ACCEPT\n".repeat(rules))
            }
        };
        // One rule fewer than the witness: the delete took effect.
        assert!(undo_apply(&fw, dir.path(), &records, &now(1))
            .unwrap()
            .is_empty());
        // As many: it did not; it runs again, behind its check.
        assert_eq!(
            undo_apply(&fw, dir.path(), &records, &now(2)).unwrap(),
            vec![UndoCmd {
                argv: v("iptables -w --delete FWD -s 1.1.1.1 -j ACCEPT"),
                check: Some(v("iptables -w --check FWD -s 1.1.1.1 -j ACCEPT")),
            }]
        );
    }

    /// A removal restore batch virtfw was killed during: its section committed iff some rule
    /// of it is gone (someone else's identical rule keeps the other answering "there"); a
    /// committed section's deletes are done and are not run again.
    #[test]
    fn killed_removal_restore_is_settled_by_any_rule_gone() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Firewall::from_xml(
            "<firewall backend='iptables'><group ignoreErrors='yes'>\
             <action layer='ipv4'><args><item>--delete</item><item>FWD</item><item>-s</item><item>1.1.1.1</item><item>-j</item><item>ACCEPT</item></args></action>\
             <action layer='ipv4'><args><item>--delete</item><item>FWD</item><item>-s</item><item>2.2.2.2</item><item>-j</item><item>ACCEPT</item></args></action>\
             </group></firewall>",
            "p.xml",
        )
        .unwrap();
        std::fs::write(
            cmd_file(dir.path(), 0, "in"),
            "*filter\n--delete FWD -s 1.1.1.1 -j ACCEPT\n--delete FWD -s 2.2.2.2 -j ACCEPT\nCOMMIT\n",
        )
        .unwrap();
        let records = vec![Record::Start {
            seq: 0,
            group: Some(0),
            argv: v("iptables-restore -w --noflush"),
            stdin: true,
        }];
        // 1.1.1.1 has a twin (still there), 2.2.2.2 is gone: the section committed.
        let twin_only = |argv: &[String]| {
            (argv == v("iptables -w --check FWD -s 1.1.1.1 -j ACCEPT").as_slice()).then(String::new)
        };
        let undo = undo_remove(&plan, dir.path(), &records, &twin_only);
        assert!(undo.is_empty(), "{undo:?}");
        // Both there: it did not commit; both deletes run, behind their checks.
        let undo = undo_remove(&plan, dir.path(), &records, &no_probe);
        assert_eq!(undo.len(), 2, "{undo:?}");
        assert!(undo.iter().all(|u| u.check.is_some()));
    }
}
