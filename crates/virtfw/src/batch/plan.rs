//! Planning: which groups (or commands a callback added) can run as one kernel transaction,
//! and in which order a removal batch deletes.

use std::collections::BTreeSet;

use crate::firewall::Group;
use crate::model::{Backend, Command, Layer, TransactionFlags};
use crate::nft::{self, parse_nft_delete};
use crate::xtables::{restore_line, RestoreLine};

/// How a group can be batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
    pub(super) fn merges(self) -> bool {
        !matches!(self, Kind::IptApply { undoable: false })
    }
}

/// nft verbs that change the ruleset and print nothing without `-e`.
pub(super) fn nft_plain_verb(args: &[String]) -> bool {
    matches!(
        args.first().map(String::as_str),
        Some("add" | "insert" | "create" | "delete" | "flush" | "replace" | "rename")
    )
}

/// A line break inside an argument would split the command in a batch file.
pub(super) fn one_line(args: &[String]) -> bool {
    !args.iter().any(|a| a.contains(['\n', '\r']))
}

/// Which kind of batch a group allows, if any.
pub(super) fn classify(backend: Backend, group: &Group) -> Option<Kind> {
    classify_cmds(backend, group.flags, &group.actions)
}

/// Which kind of batch these commands of a group with `flags` allow, if any.
pub(super) fn classify_cmds(
    backend: Backend,
    flags: TransactionFlags,
    actions: &[Command],
) -> Option<Kind> {
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
pub(super) fn front_first(rule_delete: &[bool], appended: &[bool]) -> Vec<usize> {
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
pub(super) fn permute<T: Clone>(items: &[T], order: &[usize]) -> Vec<T> {
    order.iter().map(|&k| items[k].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::executor::FakeExecutor;
    use crate::model::{Backend, Layer, TransactionFlags};
    use crate::Firewall;

    #[test]
    pub(super) fn groups_with_callbacks_or_ignored_commands_stay_per_command() {
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
}
