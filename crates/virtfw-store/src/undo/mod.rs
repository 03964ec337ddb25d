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
mod tests;
mod xtables;

pub(crate) use xtables::witnesses;
use xtables::*;
