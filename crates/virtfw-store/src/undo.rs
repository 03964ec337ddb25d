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
//! * A command counts as already undone when the same argv ran to completion after the
//!   rollback had started (a previous rollback or recovery pass): it is never run twice.

use std::collections::HashMap;
use std::path::Path;

use virtfw::{nft, rollback};
use virtfw::{Backend, Firewall, Layer, TransactionFlags};

use crate::journal::{cmd_file, Record};

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

/// Everything the journalled commands of an apply created, in creation order.
fn created(
    dir: &Path,
    records: &[Record],
    auto_group: &dyn Fn(Option<usize>) -> bool,
) -> Result<Vec<Created>, EchoUnaccounted> {
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
        if not_run.contains(seq) || !auto_group(*group) {
            continue;
        }
        let Some((program, args)) = argv.split_first() else {
            continue;
        };
        let read =
            |ext: &str| std::fs::read_to_string(cmd_file(dir, *seq, ext)).unwrap_or_default();
        let status = done.get(seq).copied();
        let mut push = |undo: UndoCmd| {
            out.push(Created {
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
            p if p.ends_with("-restore") => restore_created(p, status, *stdin, &read, &mut push),
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

/// What one journalled iptables-family restore (`program`) created.
fn restore_created(
    program: &str,
    status: Option<i32>,
    stdin: bool,
    read: &dyn Fn(&str) -> String,
    push: &mut dyn FnMut(UndoCmd),
) {
    let Some(layer) = ipt_layer(program) else {
        return;
    };
    if status.is_some_and(|s| s != 0 && !stdin) {
        return;
    }
    let input = read("in");
    let mut table = "filter".to_string();
    for line in input.lines() {
        let line = line.trim();
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            continue;
        }
        let words = split_words(line);
        if rollback::iptables_is_create(&words) {
            let mut args = vec!["--table".to_string(), table.clone()];
            args.extend(words);
            push(ipt_delete(layer, &args));
        }
    }
}

/// Argvs (with multiplicity) that ran to completion after the first rollback/undo/recover mark.
fn completed_undos(records: &[Record]) -> HashMap<Vec<String>, usize> {
    let mut started = false;
    let mut argv_of: HashMap<u64, &Vec<String>> = HashMap::new();
    let mut out: HashMap<Vec<String>, usize> = HashMap::new();
    for rec in records {
        match rec {
            Record::Mark { mark } if !started => {
                started = ["rollback", "undo", "recover"]
                    .iter()
                    .any(|m| mark.starts_with(m));
            }
            Record::Start { seq, argv, .. } if started => {
                argv_of.insert(*seq, argv);
            }
            Record::Done { seq, .. } => {
                if let Some(argv) = argv_of.get(seq) {
                    *out.entry((*argv).clone()).or_default() += 1;
                }
            }
            _ => {}
        }
    }
    out
}

fn drop_completed(cmds: Vec<UndoCmd>, records: &[Record]) -> Vec<UndoCmd> {
    let mut done = completed_undos(records);
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
pub(crate) fn undo_apply(
    tx: &Firewall,
    dir: &Path,
    records: &[Record],
) -> Result<Vec<UndoCmd>, EchoUnaccounted> {
    let any_auto = tx
        .groups()
        .iter()
        .any(|g| g.flags().contains(TransactionFlags::AUTO_ROLLBACK));
    let auto_group = |g: Option<usize>| match g.and_then(|g| tx.groups().get(g)) {
        Some(group) => group.flags().contains(TransactionFlags::AUTO_ROLLBACK),
        None => any_auto,
    };
    let created = created(dir, records, &auto_group)?;
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
    Ok(drop_completed(cmds, records))
}

/// The rest of an interrupted removal: the plan's commands in order, minus those completed.
/// iptables-family deletes get a `--check` first (one may have run without its `done` record).
pub(crate) fn undo_remove(plan: &Firewall, records: &[Record]) -> Vec<UndoCmd> {
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
    drop_completed(cmds, &all)
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
            undo_remove(&plan, &records),
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
        let undo = undo_apply(&tx(), dir.path(), &records).unwrap();
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
        undo_apply(&tx(), dir, &records)
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
        assert_eq!(undo_apply(&tx(), dir.path(), &records).unwrap().len(), 3);
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
        let err = undo_apply(&tx(), dir.path(), &records).unwrap_err();
        assert_eq!(err.seq, 1);
        // Interrupted instead (no `done`): no echo means it made nothing.
        assert!(undo_apply(&tx(), dir.path(), &records[..3])
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
        let undo = undo_apply(&fw, dir.path(), &records).unwrap();
        assert_eq!(
            undo,
            vec![UndoCmd {
                argv: v("iptables -w --delete FORWARD -s 3.3.3.3 -j ACCEPT"),
                check: Some(v("iptables -w --check FORWARD -s 3.3.3.3 -j ACCEPT")),
            }]
        );
    }
}
