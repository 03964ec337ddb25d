//! Helpers shared by the batch tests.

use crate::executor::FakeExecutor;
use crate::model::{Backend, Layer, TransactionFlags};
use crate::{Applied, ApplyOptions, Firewall};

pub(crate) fn nft_firewall() -> Firewall {
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

pub(crate) fn rollbacks(fw: &Firewall) -> Vec<Vec<Vec<String>>> {
    fw.groups()
        .iter()
        .map(|g| g.rollbacks().iter().map(|c| c.args().to_vec()).collect())
        .collect()
}

/// Batching allowed, whatever the environment says (these tests are about the batch path).
pub(crate) fn batched(fw: &mut Firewall, fake: &FakeExecutor) -> crate::Result<Applied> {
    fw.apply_with(fake, ApplyOptions::new().per_command(false))
}

pub(crate) fn per_command(fw: &mut Firewall, fake: &FakeExecutor) -> crate::Result<Applied> {
    fw.apply_with(fake, ApplyOptions::new().per_command(true))
}

/// The stdin lines of the last batch the fake ran.
pub(crate) fn last_batch(fake: &FakeExecutor) -> Vec<String> {
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
