//! Crash safety for a library user, end to end, in a throwaway network namespace and a
//! temporary state directory (needs root; the host's own firewall is never touched):
//!
//! 1. open a store and recover at start (what a VM manager does every time it starts),
//! 2. apply a transaction through it: journalled, its removal plan stored as "vm1",
//! 3. list and verify the stored plan against the live ruleset,
//! 4. remove it, and show that the namespace's ruleset is exactly what it was before.
//!
//! ```text
//! cargo run -p virtfw-store --example crash_safe
//! ```
//! Kill it anywhere between 1 and 4 (keep the state directory by setting `STATE_DIR`) and run
//! it again: the recovery of step 1 undoes the half-done apply or finishes the removal.

use std::process::ExitCode;

use virtfw::netns::Netns;
use virtfw::Firewall;
use virtfw_store::{Store, StoreOptions};

const TRANSACTION: &str = r#"<firewall name='vm1' backend='nftables'>
  <group autoRollback='yes'>
    <action layer='ipv4'><args><item>add</item><item>table</item><item>ip</item><item>vmm_demo</item></args></action>
    <action layer='ipv4'><args><item>add</item><item>chain</item><item>ip</item><item>vmm_demo</item><item>forward</item><item>{ type filter hook forward priority 0; policy accept; }</item></args></action>
    <action layer='ipv4'><args><item>add</item><item>rule</item><item>ip</item><item>vmm_demo</item><item>forward</item><item>ip</item><item>saddr</item><item>192.168.122.0/24</item><item>accept</item></args></action>
  </group>
</firewall>
"#;

type Error = Box<dyn std::error::Error>;

fn run(ns: &Netns, state_dir: &std::path::Path) -> Result<bool, Error> {
    let before = ns.run(&["nft", "list", "ruleset"])?;
    // 1. Open and recover: a journal left by a killed run is settled before anything else.
    let store = Store::open(
        state_dir,
        StoreOptions::new().netns(Some(ns.name().to_string())),
    );
    let recovered = store.recover()?;
    println!("recover: {}", recovered.to_string().trim_end());
    if let Some(e) = recovered.error() {
        return Err(e.into());
    }
    // 2. Apply: every command journalled before it runs; the removal plan stored on success.
    let mut fw = Firewall::from_xml(TRANSACTION, "vm1.xml")?;
    println!("{}", store.apply(&mut fw, "vm1")?);
    // 3. What is stored, and is it all still there? (The reports serialise as the CLI's --json.)
    print!("{}", store.list()?);
    let verified = store.verify(&[])?;
    print!("{verified}");
    println!("as JSON: {}", serde_json::to_string(&verified)?);
    // 4. Remove exactly what was created.
    println!("{}", store.remove("vm1")?);
    let after = ns.run(&["nft", "list", "ruleset"])?;
    Ok(!verified.drift() && verified.problem.is_none() && before == after)
}

fn main() -> ExitCode {
    let ns = match Netns::new("vfw-store-ex") {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("cannot create a throwaway namespace (root needed): {e}");
            return ExitCode::FAILURE;
        }
    };
    let (state_dir, keep) = match std::env::var_os("STATE_DIR") {
        Some(dir) => (std::path::PathBuf::from(dir), true),
        None => (
            std::env::temp_dir().join(format!("virtfw-store-example-{}", std::process::id())),
            false,
        ),
    };
    println!(
        "throwaway namespace {}, state directory {}",
        ns.name(),
        state_dir.display()
    );
    let result = run(&ns, &state_dir);
    if !keep {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    match result {
        Ok(true) => {
            println!("clean: the ruleset is exactly what it was before the apply");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("NOT clean");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
