//! iptables-family restore sections: apply (one process per program, committed sections
//! undone when a later one fails), undo, and removals that resend only what did not commit.

use tracing::{debug, warn};

use crate::error::Error;
use crate::executor::{Executor, Invocation};
use crate::firewall::Firewall;
use crate::model::{Backend, Command, TransactionFlags};
use crate::nft;
use crate::observer::ApplyObserver;
use crate::run::{missing, run_batch, run_command};
use crate::transcript::command_line;
use crate::xtables::{self, blamed, family_input, restore_argv, restore_line, Section};

use super::plan::{front_first, permute};
use super::Step;

/// Whether `--check` finds the rules of commands `cmds` of `section` all present (`present`)
/// or all absent. A command without a check form, or a check that could not run, answers no:
/// the kernel's state is then unknown.
pub(super) fn rules_are(
    exec: &dyn Executor,
    section: &Section<'_>,
    cmds: impl IntoIterator<Item = usize>,
    present: bool,
) -> bool {
    let (program, lead) = section.layer.program(Backend::Iptables);
    cmds.into_iter().all(|c| {
        let Some(check) = xtables::iptables_check(section.cmds[c].2) else {
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

/// Run `sections` (all of one layer) as ONE restore process: one process exit (and so one wait
/// for the kernel) per program instead of one per table. Returns how many sections committed,
/// in order: all on success; on failure those before the blamed one. A failure that names no
/// line (the program did not start, or died, perhaps after a `COMMIT`) is settled by asking
/// the kernel: the leading sections whose rules `--check` finds all present committed. Only
/// all-create sections are checked (a lone section with other commands counts as not
/// committed: its rules cannot be told apart from what was there before).
pub(super) fn run_family(exec: &dyn Executor, sections: &[&Section<'_>]) -> usize {
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
        if let Some(k) = xtables::restore_committed(&spans, out.status, &out.stderr) {
            return k;
        }
        warn!(stderr = %out.stderr.trim_end(), "restore failed without naming a line; checking what committed");
    }
    let creates_only = sections
        .iter()
        .all(|s| s.cmds.iter().all(|c| xtables::iptables_is_create(c.2)));
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
pub(super) fn undo_family(exec: &dyn Executor, sections: &[&Section<'_>]) {
    let layer = sections[0].layer;
    let inverses: Vec<Vec<Vec<String>>> = sections
        .iter()
        .rev()
        .map(|s| {
            s.cmds
                .iter()
                .rev()
                .map(|c| xtables::iptables_inverse(c.2))
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
pub(super) fn delete_family(
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
pub(super) fn remove_family(
    backend: Backend,
    exec: &dyn Executor,
    observer: &dyn ApplyObserver,
    sections: &[&Section<'_>],
) -> Result<(), (usize, Error)> {
    let layer = sections[0].layer;
    let report = |k: usize, c: usize, stderr: &str| {
        let (g, _, args, _) = &sections[k].cmds[c];
        let cmd = Command::new(layer, args.iter().cloned()).with_ignore_errors(true);
        observer.ignored_failure(*g, &cmd, missing(backend, stderr));
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
pub(super) fn by_family<'s, 'a>(sections: &'s [Section<'a>]) -> Vec<Vec<&'s Section<'a>>> {
    let mut families: Vec<Vec<&Section<'a>>> = Vec::new();
    for s in sections {
        match families.iter_mut().find(|f| f[0].layer == s.layer) {
            Some(f) => f.push(s),
            None => families.push(vec![s]),
        }
    }
    families
}

/// Run `f` on every family, one after the other, and collect the results in order.
///
/// Never concurrently, although the programs touch disjoint tables: the nf_tables flavour of
/// iptables 1.8.9 retries a batch that lost a race with another process's commit in the same
/// namespace, and its retry is wrong for ebtables-restore. Measured here with
/// ebtables-restore deleting a rule and its chain while iptables-restore and ip6tables-restore
/// ran beside it: 4 of 200 runs failed "RULE_DELETE failed (No such file or directory)" with
/// the rule still there, and an apply whose batch failed left a rule committed twice. One
/// program at a time costs a few milliseconds per network and removes the race (nft's own
/// batches do not have it: 200 concurrent `nft -ae -f` pairs, no failure).
pub(super) fn each_family<'s, 'a, T>(
    families: &[Vec<&'s Section<'a>>],
    f: impl Fn(&[&'s Section<'a>]) -> T,
) -> Vec<T> {
    families.iter().map(|fam| f(fam)).collect()
}

impl Firewall {
    /// The iptables-family sections of groups `start..end`, in first-use order.
    pub(super) fn sections(&self, start: usize, end: usize) -> Vec<Section<'_>> {
        self.sections_of(&self.items(start, end))
    }

    /// The iptables-family sections of `items` (group, action index), in first-use order.
    pub(super) fn sections_of(&self, items: &[(usize, usize)]) -> Vec<Section<'_>> {
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

    pub(super) fn ipt_apply(
        &mut self,
        start: usize,
        end: usize,
        undoable: bool,
        exec: &dyn Executor,
    ) -> Step {
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
    pub(super) fn record_ipt_inverses(&mut self, items: &[(usize, usize)]) {
        for &(g, i) in items {
            let group = &mut self.groups[g];
            let cmd = &group.actions[i];
            if group.flags.contains(TransactionFlags::AUTO_ROLLBACK)
                && xtables::iptables_is_create(&cmd.args)
            {
                let inverse = Command::new(cmd.layer, xtables::iptables_inverse(&cmd.args))
                    .with_ignore_errors(true)
                    .made_by_apply()
                    .with_appended(xtables::iptables_is_append(&cmd.args));
                group.rollbacks.push(inverse);
            }
        }
    }

    pub(super) fn ipt_removal(
        &mut self,
        start: usize,
        end: usize,
        exec: &dyn Executor,
        observer: &dyn ApplyObserver,
    ) -> Step {
        let backend = self.backend;
        let mut sections = self.sections(start, end);
        for s in &mut sections {
            let rule_delete: Vec<bool> = s
                .cmds
                .iter()
                .map(|c| xtables::iptables_is_delete(c.2))
                .collect();
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

#[cfg(test)]
mod tests;
