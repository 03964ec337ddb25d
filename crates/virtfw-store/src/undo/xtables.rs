//! The iptables family's part of an undo: which sections of a journalled restore run
//! committed (by the engine's own rule), which transaction command each restore line was made
//! from (so every undo argv is the engine's rollback argv), and the witness listings that
//! settle a delete an earlier pass was killed during.

use super::*;

/// A journalled iptables-family restore run, read back with the engine's own helpers.
pub(super) struct RestoreRun {
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
    pub(super) fn read(
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
    pub(super) fn lines(&self, unknown_too: bool) -> Vec<(&str, &str)> {
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
pub(super) struct IptCommands<'a> {
    /// (group, command, restore form of the command, restore form of its inverse if a create)
    items: Vec<IptItem<'a>>,
}

pub(super) type Form = Option<(String, String)>;
pub(super) type IptItem<'a> = (usize, &'a virtfw::Command, Form, Form);

impl<'a> IptCommands<'a> {
    pub(super) fn new(fw: &'a Firewall) -> IptCommands<'a> {
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
    pub(super) fn find(
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
    pub(super) fn settle(
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
    pub(super) fn undone_by(&self, run: &RestoreRun) -> Vec<Vec<String>> {
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
    pub(super) fn ran_by(&self, fw: &Firewall, run: &RestoreRun) -> Vec<Vec<String>> {
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
pub(super) fn restore_created(
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

/// The (layer, table, chain) an iptables or ip6tables rule delete works on (ebtables has no
/// `-S` listing to witness with).
pub(super) fn chain_of(argv: &[String]) -> Option<(Layer, String, String)> {
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
pub(super) fn witness_argv((layer, table, chain): &(Layer, String, String)) -> Vec<String> {
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
pub(super) fn rule_count(listing: &str) -> usize {
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
pub(super) fn settle_interrupted(
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
