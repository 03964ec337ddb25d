//! Commands that query callbacks add while a group runs, batched where that is exact.

use tracing::debug;

use crate::executor::{Executor, Output};
use crate::firewall::Firewall;
use crate::model::{Backend, TransactionFlags};
use crate::observer::ApplyObserver;
use crate::run::{argv_for, run_batch, strings, InGroup};
use crate::xtables::restore_line;

use super::plan::{classify_cmds, Kind};
use super::restore::run_family;
use super::Echoed;

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
        let tagged = InGroup(exec, gi);
        let exec: &dyn Executor = &tagged;
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::executor::{FakeExecutor, FakeResponse};
    use crate::model::{Backend, Layer, TransactionFlags};
    use crate::Firewall;

    pub(super) fn setup_like(backend: Backend) -> Firewall {
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
    pub(super) fn commands_callbacks_add_run_as_one_batch_per_transaction() {
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
    pub(super) fn a_failed_batch_of_added_commands_reruns_them_like_libvirt() {
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
}
