//! The library end to end, in a throwaway network namespace (needs root; the host's own
//! firewall is never touched):
//!
//! 1. build a firewall of two groups (the second inherits the first's rollback),
//! 2. apply it, printing each command as it runs,
//! 3. print the resulting ruleset and the removal plan as libvirt-compatible XML,
//! 4. read the plan back from that XML (as a later process would) and apply it,
//! 5. show that the namespace's ruleset is exactly what it was before.
//!
//! ```text
//! cargo run --release -p virtfw --example transaction [nftables|iptables|both]
//! ```
//! (default: both backends, one namespace each). Exit status 0 only if every namespace ends
//! up clean.

use std::process::ExitCode;

use virtfw::netns::Netns;
use virtfw::transcript::command_line;
use virtfw::{
    ApplyObserver, ApplyOptions, Backend, Command, Firewall, Layer, RollbackFlags, TransactionFlags,
};

/// Prints every command as the engine runs it, and every inverse it records.
struct Narrator;

impl ApplyObserver for Narrator {
    fn will_run(&self, group: usize, argv: &[String]) {
        println!("  [group {group}] $ {}", command_line(argv));
    }
    fn inverse_recorded(&self, group: usize, inverse: &Command) {
        println!("  [group {group}]   undo: {}", inverse.args().join(" "));
    }
    fn rolling_back(&self, first: usize, failed: usize) {
        println!("  group {failed} failed: rolling back groups {first}..={failed}");
    }
}

type Error = Box<dyn std::error::Error>;

fn nftables_firewall() -> Firewall {
    let mut fw = Firewall::new(Backend::Nftables);
    // Group 0: a table and its chains; every create records its exact undo (by handle).
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "virtfw_demo"]);
    fw.add_cmd(
        Layer::Ipv4,
        [
            "add",
            "chain",
            "ip",
            "virtfw_demo",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ],
    );
    fw.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "virtfw_demo", "guests"]);
    // Group 1: rules; if any fails, group 0 is rolled back too.
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        "add rule ip virtfw_demo guests ip saddr 192.0.2.0/24 counter accept".split(' '),
    );
    fw.add_cmd(
        Layer::Ipv4,
        "insert rule ip virtfw_demo input iifname lo jump guests".split(' '),
    );
    fw.add_cmd(Layer::Ipv6, "add table ip6 virtfw_demo".split(' '));
    fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
    fw
}

fn iptables_firewall() -> Firewall {
    let mut fw = Firewall::new(Backend::Iptables);
    // Group 0: private chains. `-N` has no automatic inverse, so the rollback is written by hand.
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(Layer::Ipv4, ["--new-chain", "VIRTFW_DEMO"]);
    fw.add_cmd(Layer::Ipv6, ["--new-chain", "VIRTFW_DEMO"]);
    fw.start_rollback(RollbackFlags::empty());
    fw.add_cmd(Layer::Ipv4, ["--delete-chain", "VIRTFW_DEMO"]);
    fw.add_cmd(Layer::Ipv6, ["--delete-chain", "VIRTFW_DEMO"]);
    // Group 1: rules; each insert/append records its `--delete` as it runs.
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(
        Layer::Ipv4,
        "--append VIRTFW_DEMO --source 192.0.2.0/24 --jump ACCEPT".split(' '),
    );
    fw.add_cmd(
        Layer::Ipv4,
        "--insert INPUT --in-interface lo --jump VIRTFW_DEMO".split(' '),
    );
    fw.add_cmd(
        Layer::Ipv6,
        "--append VIRTFW_DEMO --source 2001:db8::/64 --jump ACCEPT".split(' '),
    );
    fw.add_cmd(
        Layer::Ipv6,
        "--insert INPUT --in-interface lo --jump VIRTFW_DEMO".split(' '),
    );
    fw.start_rollback(RollbackFlags::INHERIT_PREVIOUS);
    fw
}

/// The namespace's ruleset as the backend's own tools print it (timestamps dropped).
fn ruleset(ns: &Netns, backend: Backend) -> Result<String, Error> {
    let tools: &[&str] = match backend {
        Backend::Iptables => &["iptables-save", "ip6tables-save"],
        _ => &["nft list ruleset"],
    };
    let mut out = String::new();
    for tool in tools {
        let argv: Vec<&str> = tool.split(' ').collect();
        if tools.len() > 1 {
            out.push_str(&format!("[{tool}]\n"));
        }
        for line in ns.run(&argv)?.lines().filter(|l| !l.starts_with('#')) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (empty)\n".to_string();
    }
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn demo(backend: Backend) -> Result<bool, Error> {
    let ns = Netns::new("virtfw-demo")?;
    println!("=== backend {backend}, in network namespace {}", ns.name());
    if backend == Backend::Iptables {
        // The nf_tables flavour of iptables creates a table and its built-in chain the first
        // time it touches them, and keeps them. Do that up front, so "before" and "after"
        // compare what virtfw did, not what the tool does on first use.
        for tool in ["iptables", "ip6tables"] {
            ns.run(&[tool, "-w", "--policy", "INPUT", "ACCEPT"])?;
        }
    }
    let exec = ns.executor()?;
    let before = ruleset(&ns, backend)?;
    println!("--- ruleset before:\n{}", indent(&before));

    let mut fw = match backend {
        Backend::Iptables => iptables_firewall(),
        _ => nftables_firewall(),
    };
    println!(
        "--- applying {} commands in {} groups:",
        fw.command_count(),
        fw.groups().len()
    );
    let options = ApplyOptions::new().observer(&Narrator);
    fw.apply_with(&exec, options)?;
    println!(
        "--- ruleset after apply:\n{}",
        indent(&ruleset(&ns, backend)?)
    );

    let mut removal = fw.new_from_rollback()?;
    removal.set_name(Some("fwRemoval"));
    let plan = removal.to_xml();
    println!("--- removal plan (libvirt's <firewall> XML):\n{plan}");

    // A later process would read the plan from a file; do the same from the text.
    let mut removal = Firewall::from_xml(&plan, "removal plan")?;
    println!("--- applying the removal plan:");
    removal.apply_with(&exec, options)?;
    let after = ruleset(&ns, backend)?;
    println!("--- ruleset after removal:\n{}", indent(&after));
    let clean = after == before;
    if clean {
        println!("=== {backend}: the namespace is clean (ruleset identical to before)\n");
    } else {
        println!("=== {backend}: NOT CLEAN, the ruleset differs from before\n");
    }
    Ok(clean)
    // `ns` is dropped here: the namespace is deleted.
}

fn main() -> ExitCode {
    let backends = match std::env::args().nth(1).as_deref() {
        None | Some("both") => vec![Backend::Nftables, Backend::Iptables],
        Some("nftables") => vec![Backend::Nftables],
        Some("iptables") => vec![Backend::Iptables],
        Some(other) => {
            eprintln!(
                "transaction: unknown argument '{other}' (expected nftables, iptables or both)"
            );
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("transaction: must run as root (it creates a network namespace)");
        return ExitCode::FAILURE;
    }
    let mut ok = true;
    for backend in backends {
        match demo(backend) {
            Ok(clean) => ok &= clean,
            Err(e) => {
                eprintln!("transaction: {backend}: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
