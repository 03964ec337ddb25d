//! `virtfw demo`: the whole job, end to end, in a throwaway network namespace and a temporary
//! state directory — apply a multi-group transaction on nftables and on iptables, show the live
//! ruleset and the stored removal plan, verify, remove, and check the namespace is clean again.

use std::path::PathBuf;

use virtfw::netns::Netns;

use crate::commands::{self, Ctx};
use virtfw_store::{Result, Store, StoreError, EXIT_OK};

const NFT_DEMO: &str = r#"<firewall name='demo-nft' backend='nftables'>
  <group autoRollback='yes'>
    <action layer='ipv4'><args><item>add</item><item>table</item><item>ip</item><item>virtfw_demo</item></args></action>
    <action layer='ipv4'><args><item>add</item><item>chain</item><item>ip</item><item>virtfw_demo</item><item>forward</item><item>{ type filter hook forward priority 0; policy accept; }</item></args></action>
  </group>
  <group autoRollback='yes'>
    <rollback inheritPrevious='yes'/>
    <action layer='ipv4'><args><item>insert</item><item>rule</item><item>ip</item><item>virtfw_demo</item><item>forward</item><item>ip</item><item>saddr</item><item>192.168.122.0/24</item><item>accept</item></args></action>
    <action layer='ipv4'><args><item>add</item><item>rule</item><item>ip</item><item>virtfw_demo</item><item>forward</item><item>ip</item><item>daddr</item><item>192.168.122.0/24</item><item>ct</item><item>state</item><item>related,established</item><item>accept</item></args></action>
  </group>
</firewall>
"#;

const IPT_DEMO: &str = r#"<firewall name='demo-ipt' backend='iptables'>
  <group autoRollback='yes'>
    <action layer='ipv4'><args><item>--table</item><item>filter</item><item>--append</item><item>FORWARD</item><item>--source</item><item>192.168.122.0/24</item><item>--jump</item><item>ACCEPT</item></args></action>
    <action layer='ipv6'><args><item>--table</item><item>filter</item><item>--append</item><item>FORWARD</item><item>--source</item><item>fd00::/64</item><item>--jump</item><item>ACCEPT</item></args></action>
  </group>
  <group autoRollback='yes'>
    <rollback inheritPrevious='yes'/>
    <action layer='ipv4'><args><item>--table</item><item>nat</item><item>--insert</item><item>POSTROUTING</item><item>--source</item><item>192.168.122.0/24</item><item>!</item><item>--destination</item><item>192.168.122.0/24</item><item>--jump</item><item>MASQUERADE</item></args></action>
  </group>
</firewall>
"#;

fn snapshot(ns: &Netns) -> Result<String> {
    let mut out = String::new();
    for argv in [
        &["nft", "list", "ruleset"][..],
        &["iptables", "-w", "-S"],
        &["iptables", "-w", "-t", "nat", "-S"],
        &["ip6tables", "-w", "-S"],
    ] {
        out.push_str(
            &ns.run(argv)
                .map_err(|e| StoreError::Failed(format!("demo: {e}")))?,
        );
    }
    Ok(out)
}

fn step(title: &str) {
    println!("\n=== {title}");
}

/// Run the demo; exit non-zero when anything is off.
pub(crate) fn run(ctx: &Ctx) -> Result<i32> {
    let ns = Netns::new("virtfw-demo").map_err(|e| StoreError::Failed(format!("demo: {e}")))?;
    let dir = std::env::temp_dir().join(format!("virtfw-demo-{}", std::process::id()));
    let result = run_in(ctx, &ns, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(ctx: &Ctx, ns: &Netns, dir: &PathBuf) -> Result<i32> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::io("demo temp dir", e))?;
    let options = ctx
        .store
        .options()
        .clone()
        .netns(Some(ns.name().to_string()));
    let demo = Ctx {
        store: Store::open(dir.join("state"), options),
        json: false,
    };
    println!(
        "virtfw demo in throwaway namespace {} with state dir {}",
        ns.name(),
        demo.store.dir().display()
    );
    // iptables-nft creates its tables and built-in chains on first use and never deletes them;
    // create them first so that "clean again" can be an exact comparison.
    for (prog, table, chain) in [
        ("iptables", "filter", "FORWARD"),
        ("iptables", "nat", "POSTROUTING"),
        ("ip6tables", "filter", "FORWARD"),
    ] {
        for op in ["-A", "-D"] {
            ns.run(&[prog, "-w", "-t", table, op, chain, "-j", "ACCEPT"])
                .map_err(|e| StoreError::Failed(format!("demo: {e}")))?;
        }
    }
    let before = snapshot(ns)?;
    for (name, xml) in [("demo-nft", NFT_DEMO), ("demo-ipt", IPT_DEMO)] {
        let file = dir.join(format!("{name}.xml"));
        std::fs::write(&file, xml).map_err(|e| StoreError::io("demo file", e))?;
        step(&format!("virtfw apply {}", file.display()));
        let args = crate::cli::ApplyArgs {
            file,
            name: None,
            dry_run: false,
            check: false,
        };
        commands::apply(&demo, &args)?;
    }
    step("live ruleset (nft list ruleset)");
    print!(
        "{}",
        ns.run(&["nft", "list", "ruleset"])
            .map_err(|e| StoreError::Failed(e.to_string()))?
    );
    step("virtfw list");
    commands::list(&demo)?;
    for name in ["demo-nft", "demo-ipt"] {
        step(&format!("virtfw show {name}"));
        commands::show(&demo, name)?;
    }
    step("virtfw verify");
    let code = commands::verify(&demo, &[])?;
    if code != EXIT_OK {
        return Err(StoreError::Failed(
            "demo: verify found drift right after apply".into(),
        ));
    }
    for name in ["demo-nft", "demo-ipt"] {
        step(&format!("virtfw remove {name}"));
        commands::remove(&demo, name, false, false)?;
    }
    let after = snapshot(ns)?;
    step("namespace clean again?");
    if before == after {
        println!("yes: the ruleset is exactly what it was before the applies");
        Ok(EXIT_OK)
    } else {
        println!("NO. Before:\n{before}\nAfter:\n{after}");
        Err(StoreError::Failed(
            "demo: the ruleset differs after removal".into(),
        ))
    }
}
