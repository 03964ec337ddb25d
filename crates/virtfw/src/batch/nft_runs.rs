//! nft batches: creates run as one `nft -ae -f -` with their inverses read from the echo,
//! plain changes as one `nft -f -`, removal plans as one `nft -f -` retried without the
//! handles that are already gone.

use std::collections::{BTreeSet, HashMap};

use tracing::{debug, warn};

use crate::error::Error;
use crate::executor::{Executor, Output};
use crate::firewall::Firewall;
use crate::model::{Command, TransactionFlags};
use crate::nft::{self, parse_nft_delete, Echo, NftDelete, NftObject};
use crate::observer::ApplyObserver;
use crate::run::{absent_before, learn_table, run_argv, run_batch, run_command, strings};
use crate::transcript::command_line;

use super::plan::{front_first, permute};
use super::{Echoed, Step};

/// Handles present now in the tables a failed nft removal touches.
#[derive(Default)]
pub(super) struct Present {
    /// (family, table) → handles of its chains and rules; absent key: table gone.
    objects: HashMap<(String, String), BTreeSet<u64>>,
    /// (family, handle) of tables.
    tables: BTreeSet<(String, u64)>,
    /// Whether `tables` is complete (listed with `nft -j list tables`).
    tables_complete: bool,
}

impl Present {
    /// List what `deletes` touch. The executor's own failure is the removal's ([`run_batch`]).
    pub(super) fn list(exec: &dyn Executor, deletes: &[NftDelete]) -> Result<Present, Error> {
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
            let out = run_argv(exec, &argv, None)?;
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
            let out = run_argv(exec, &argv, None)?;
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
    pub(super) fn has(&self, d: &NftDelete) -> bool {
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

impl Firewall {
    pub(super) fn nft_creates(&mut self, start: usize, end: usize, exec: &dyn Executor) -> Step {
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
    pub(super) fn nft_create_batch(
        &mut self,
        items: &[(usize, usize)],
        exec: &dyn Executor,
    ) -> Echoed {
        let creates: Vec<nft::NftCreate> = items
            .iter()
            .map(|&(g, i)| {
                nft::nft_create(&self.groups[g].actions[i].args).expect("classified as create")
            })
            .collect();
        for (create, &(g, _)) in creates.iter().zip(items) {
            if let Err(err) = learn_table(&mut self.existing, create, exec, Some(g)) {
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
                        .made_by_apply()
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

    pub(super) fn nft_plain(&mut self, start: usize, end: usize, exec: &dyn Executor) -> Step {
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

    pub(super) fn nft_removal(
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
}

#[cfg(test)]
mod tests;
