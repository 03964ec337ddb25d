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
//! run one after the other, never concurrently (their nf_tables flavour races itself in one
//! namespace: see `restore::each_family`). Several sections are only batched when a failure can be
//! undone exactly, i.e. when every command is a rule create whose inverse is known: then, if a
//! section fails, the sections that committed before it are deleted again before the fallback.
//! When the program dies naming no line, `--check` tells which sections committed (see
//! `run_family`). A removal or an undo resends, after a line that fails, only what did not
//! commit, without that line (see `delete_family`).
//!
//! [`ApplyOptions::per_command`](crate::ApplyOptions::per_command) takes the per-command path
//! for one apply; the `virtfw` command sets it when [`NO_BATCH_ENV`] (`VIRTFW_NO_BATCH=1`) is
//! set ([`disabled_by_env`]). The library itself reads no environment variable.
//!
//! | module | job |
//! |---|---|
//! | `plan` | which groups can run as one batch ([`Kind`](self) and `classify`), delete order |
//! | `nft_runs` | nft batches: creates with echo, plain changes, removals with retries |
//! | `restore` | iptables-family restore sections: run, undo, delete, remove |
//! | `added` | commands that query callbacks add while a group runs |

mod added;
mod nft_runs;
mod plan;
mod restore;
#[cfg(test)]
mod test_support;

use tracing::debug;

use crate::error::Error;
use crate::executor::{Executor, Invocation, Output};
use crate::firewall::Firewall;
use crate::model::TransactionFlags;
use crate::observer::ApplyObserver;
use crate::run::argv_for;
use crate::transcript::command_line;
use plan::{classify, Kind};

pub use crate::failure::error_line;
pub use crate::observer::IgnoredCounter;
/// The restore-input helpers a journal reader needs, under the names they had here.
pub use crate::xtables::{
    family_input, parse_family_input, restore_committed, restore_form, RestoreInput,
};

/// Environment variable that, set to anything but empty or `0`, asks the `virtfw` command (and
/// any program that reads it with [`disabled_by_env`]) for the per-command path.
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

/// The executor of one batch step, remembering the first command whose outcome is unknown
/// (a batch killed at its timeout may have committed): the step must then fail, never fall
/// back to running the same commands one by one, which could apply them twice. A command the
/// executor refused because the apply was interrupted ([`crate::ExecError::ends_step`]) fails
/// the step the same way: nothing more may start.
///
/// It also tells the executor which group each command belongs to: a batch's own commands and
/// checks run for `group` (the last group of the batch), a fallback command for its own.
struct UnknownOutcome<'a> {
    exec: &'a dyn Executor,
    group: Option<usize>,
    first: std::sync::Mutex<Option<Error>>,
}

impl<'a> UnknownOutcome<'a> {
    fn new(exec: &'a dyn Executor, group: usize) -> Self {
        UnknownOutcome {
            exec,
            group: Some(group),
            first: std::sync::Mutex::new(None),
        }
    }

    /// `step`, unless a command's outcome was unknown: then the batch starting at group
    /// `start` failed with that error (the caller rolls back; the CLI's undo reads the journal).
    fn overrule(self, step: Step, start: usize) -> Step {
        match self.first.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(error) if !matches!(step, Step::Failed { .. }) => Step::Failed {
                group: start,
                error,
            },
            _ => step,
        }
    }
}

impl Executor for UnknownOutcome<'_> {
    fn run(&self, invocation: Invocation<'_>) -> Result<Output, crate::ExecError> {
        self.run_in_group(invocation, self.group)
    }
    fn run_in_group(
        &self,
        invocation: Invocation<'_>,
        group: Option<usize>,
    ) -> Result<Output, crate::ExecError> {
        let result = self.exec.run_in_group(invocation, group.or(self.group));
        use crate::ExecError::{Interrupted, Timeout, Unrecorded};
        let unknown = match &result {
            Err(Interrupted { signal }) => Some(Interrupted { signal: *signal }),
            Err(Timeout { program, after }) => Some(Timeout {
                program: program.clone(),
                after: *after,
            }),
            Err(Unrecorded {
                program,
                status,
                message,
            }) => Some(Unrecorded {
                program: program.clone(),
                status: *status,
                message: message.clone(),
            }),
            _ => None,
        };
        if let Some(source) = unknown {
            let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
            first.get_or_insert_with(|| Error::Exec {
                cmdline: command_line(invocation.argv),
                source,
            });
        }
        result
    }
    fn check_program(&self, program: &str) -> Result<(), crate::ExecError> {
        self.exec.check_program(program)
    }
    fn supports_batch(&self) -> bool {
        self.exec.supports_batch()
    }
    fn lock_key(&self) -> String {
        self.exec.lock_key()
    }
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
        let watch = UnknownOutcome::new(exec, end - 1);
        let exec: &dyn Executor = &watch;
        let step = match kind {
            Kind::NftCreates => self.nft_creates(start, end, exec),
            Kind::NftPlain => self.nft_plain(start, end, exec),
            Kind::NftRemoval => self.nft_removal(start, end, exec, observer),
            Kind::IptApply { undoable } => self.ipt_apply(start, end, undoable, exec),
            Kind::IptRemoval => self.ipt_removal(start, end, exec, observer),
        };
        let step = watch.overrule(step, start);
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
}
