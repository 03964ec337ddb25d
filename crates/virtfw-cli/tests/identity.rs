//! Identity of kernel state, through the built binary: a network status or a plan made in a
//! namespace that was deleted and re-created, or before a reboot, is stale and never run; a
//! libvirt status file (no identity) runs only in the namespace `--netns` names; `--netns`
//! values that cannot be a network namespace are usage errors. Every namespace is a throwaway
//! one made here; "the caller's namespace" is another throwaway one, entered with
//! `ip netns exec`.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{ipt_tx, nft_tx, stderr, stdout, text, Env, Netns, BIN};

/// `virtfw --state-dir STATE [--netns NS] ARGS…`, run in the namespace `caller` (via
/// `ip netns exec`) when one is given.
fn virtfw_in(caller: Option<&str>, state: &Path, netns: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = match caller {
        Some(c) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", c, BIN]);
            cmd
        }
        None => Command::new(BIN),
    };
    cmd.arg("--state-dir").arg(state);
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    cmd.env("VIRTFW_NETWORK_CONF", state.join("no-network.conf"));
    cmd.args(args).output().unwrap()
}

fn virtfw(state: &Path, netns: Option<&str>, args: &[&str]) -> Output {
    virtfw_in(None, state, netns, args)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out));
}

/// Delete the namespace `ns` and make a new one under the same name (the `Netns` value deletes
/// the new one at the end).
fn recreate(ns: &Netns) {
    ip(&["netns", "del", ns.name()]);
    ip(&["netns", "add", ns.name()]);
    ip(&["-n", ns.name(), "link", "set", "lo", "up"]);
}

/// Everything a refused command must leave alone: the whole nft ruleset (iptables-nft's rules
/// included) without counters, and the links.
fn snapshot(ns: &Netns) -> String {
    ns.run(&["nft", "-s", "list", "ruleset"]).unwrap() + &ns.run(&["ip", "-o", "link"]).unwrap()
}

fn network(name: &str, bridge: &str, third: u8) -> String {
    format!(
        "<network>\n  <name>{name}</name>\n  <bridge name='{bridge}'/>\n  <forward mode='nat'/>\n  \
         <ip address='192.168.{third}.1' netmask='255.255.255.0'>\n    \
         <dhcp><range start='192.168.{third}.2' end='192.168.{third}.254'/></dhcp>\n  </ip>\n\
         </network>\n"
    )
}

fn write(dir: &Path, file: &str, content: &str) -> String {
    let p = dir.join(file);
    std::fs::write(&p, content).unwrap();
    p.display().to_string()
}

fn assert_refused_as_stale(out: &Output, name: &str) {
    assert_eq!(out.status.code(), Some(4), "{}", text(out));
    let err = stderr(out);
    assert!(err.contains("stale"), "{err}");
    assert!(err.contains(&format!("--forget {name}")), "{err}");
}

#[test]
fn a_network_of_a_recreated_namespace_is_stale_and_never_run() {
    for backend in ["nftables", "iptables"] {
        let ns = Netns::new("vfid-net").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = write(dir.path(), "a.xml", &network("neta", "vfida0", 141));
        let b = write(dir.path(), "b.xml", &network("netb", "vfidb0", 142));
        let start = |file: &str| {
            let out = virtfw(
                &state,
                Some(ns.name()),
                &["network", "start", file, "--backend", backend],
            );
            assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        };
        start(&a);
        let status_a = state.join("networks/neta.xml");
        let stamped = std::fs::read_to_string(&status_a).unwrap();
        assert!(
            stamped.contains(" bootId='") && stamped.contains(" netnsId='"),
            "{stamped}"
        );

        recreate(&ns);
        start(&b);
        let before = snapshot(&ns);
        assert!(before.contains("vfidb0"), "{before}");

        // Without --netns (the status names the namespace) and with it: refused, exit 4.
        for netns in [None, Some(ns.name())] {
            let out = virtfw(&state, netns, &["network", "stop", "neta"]);
            assert_refused_as_stale(&out, "neta");
            let out = virtfw(&state, netns, &["network", "reload", "neta"]);
            assert_refused_as_stale(&out, "neta");
        }
        // A reload of every network refuses before touching any.
        let out = virtfw(&state, None, &["network", "reload"]);
        assert_refused_as_stale(&out, "neta");
        assert_eq!(
            snapshot(&ns),
            before,
            "{backend}: a refused command changed the kernel"
        );
        assert!(
            status_a.exists(),
            "the stale status is kept until forgotten"
        );

        // Shown as stale, not checked.
        let out = virtfw(&state, None, &["network", "status", "neta"]);
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));
        assert!(stdout(&out).contains("STALE"), "{}", text(&out));
        let out = virtfw(&state, None, &["--json", "network", "list"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = v["networks"].as_array().unwrap();
        let row = |n: &str| rows.iter().find(|r| r["network"] == n).unwrap().clone();
        assert!(
            row("neta")["stale"]
                .as_str()
                .unwrap()
                .contains("re-created"),
            "{v}"
        );
        assert_eq!(row("netb")["stale"], serde_json::Value::Null, "{v}");
        assert_eq!(row("netb")["all_present"], true, "{v}");
        // A new network of the same name is refused while the stale status holds the name.
        let out = virtfw(
            &state,
            Some(ns.name()),
            &["network", "start", &a, "--backend", backend],
        );
        assert_refused_as_stale(&out, "neta");

        // --forget drops the status and runs nothing.
        let out = virtfw(&state, None, &["network", "stop", "--forget", "neta"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!status_a.exists());
        assert_eq!(snapshot(&ns), before, "{backend}: --forget ran something");

        let out = virtfw(&state, None, &["network", "stop", "netb"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let after = snapshot(&ns);
        assert!(
            !after.contains("vfidb0") && !after.contains("192.168.142"),
            "{backend}: {after}"
        );
    }
}

#[test]
fn a_plan_of_a_recreated_namespace_is_stale_and_never_run() {
    for backend in ["nftables", "iptables"] {
        let env = Env::new("vfid-plan");
        // The same transaction under two names: the second one's objects get the very handles
        // (nft) or rule specs (iptables) the first one's plan names.
        let tx = |name: &str| match backend {
            "nftables" => nft_tx(name, "idt"),
            _ => ipt_tx(name, 7),
        };
        let apply = |name: &str| {
            let file = env.write(&format!("{name}.xml"), &tx(name));
            let out = env.run(&["apply", file.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        };
        apply("first");
        recreate(&env.ns);
        apply("second");
        let before = snapshot(&env.ns);

        let out = env.run(&["remove", "first"]);
        assert_refused_as_stale(&out, "first");
        // Also when the plan's namespace comes from the plan alone.
        let out = virtfw(&env.state(), None, &["remove", "first"]);
        assert_refused_as_stale(&out, "first");
        assert_eq!(
            snapshot(&env.ns),
            before,
            "{backend}: the refused remove ran"
        );
        let out = virtfw(&env.state(), None, &["list"]);
        assert!(stdout(&out).contains("stale"), "{}", text(&out));

        let out = env.run(&["remove", "--forget", "first"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!common::plan_exists(&env, "first"));
        assert_eq!(
            snapshot(&env.ns),
            before,
            "{backend}: --forget ran something"
        );

        let out = env.run(&["remove", "second"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert_ne!(
            snapshot(&env.ns),
            before,
            "{backend}: the live plan removed nothing"
        );
    }
}

/// Replace the value of `key` in `text`: `key` is the text up to the value's opening quote.
fn replace_value(text: &str, key: &str, quote: char, value: &str) -> String {
    let start = text
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        + key.len();
    let end = start + text[start..].find(quote).unwrap();
    format!("{}{value}{}", &text[..start], &text[end..])
}

#[test]
fn a_status_and_a_plan_from_another_boot_are_stale() {
    let env = Env::new("vfid-boot");
    let state = env.state();
    let net = env.write("c.xml", &network("netc", "vfidc0", 143));
    let out = env.run(&[
        "network",
        "start",
        net.to_str().unwrap(),
        "--backend",
        "nftables",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let tx = env.write("p.xml", &nft_tx("p", "bootp"));
    let out = env.run(&["apply", tx.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let other_boot = "00000000-0000-4000-8000-000000000000";
    let status_file = state.join("networks/netc.xml");
    let status = std::fs::read_to_string(&status_file).unwrap();
    std::fs::write(
        &status_file,
        replace_value(&status, "bootId='", '\'', other_boot),
    )
    .unwrap();
    let plan_file = state.join("plans/p.plan");
    let plan = std::fs::read_to_string(&plan_file).unwrap();
    std::fs::write(
        &plan_file,
        replace_value(&plan, "\"boot_id\": \"", '"', other_boot),
    )
    .unwrap();
    let before = snapshot(&env.ns);

    let out = virtfw(&state, None, &["network", "list"]);
    assert!(
        stdout(&out).contains("STALE (made before the last reboot)"),
        "{}",
        text(&out)
    );
    let out = virtfw(&state, None, &["network", "status", "netc"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let out = virtfw(&state, None, &["network", "stop", "netc"]);
    assert_refused_as_stale(&out, "netc");
    let out = virtfw(&state, None, &["list"]);
    assert!(
        stdout(&out).contains("stale: made before the last reboot"),
        "{}",
        text(&out)
    );
    let out = virtfw(&state, None, &["remove", "p"]);
    assert_refused_as_stale(&out, "p");
    assert_eq!(
        snapshot(&env.ns),
        before,
        "a refused command changed the kernel"
    );

    for args in [
        &["network", "stop", "--forget", "netc"][..],
        &["remove", "--forget", "p"],
    ] {
        let out = virtfw(&state, None, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    assert!(!status_file.exists() && !plan_file.exists());
    assert_eq!(snapshot(&env.ns), before);
}

/// The status file of `name` as libvirt writes it: virtfw's element (identity, namespace,
/// bridge ownership) taken out.
fn as_libvirt_status(state: &Path, name: &str) -> String {
    let path = state.join(format!("networks/{name}.xml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("<virtfw "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text, "no virtfw element in {text}");
    kept
}

#[test]
fn a_libvirt_status_runs_only_in_the_namespace_given() {
    for backend in ["nftables", "iptables"] {
        let target = Netns::new("vfid-lvt").unwrap();
        let caller = Netns::new("vfid-lvc").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let def = write(dir.path(), "d.xml", &network("netd", "vfidd0", 144));
        // The same network in both fresh namespaces: the same rules, the same handles.
        let (st_target, st_caller) = (dir.path().join("target"), dir.path().join("caller"));
        for (st, ns) in [(&st_target, &target), (&st_caller, &caller)] {
            let out = virtfw(
                st,
                Some(ns.name()),
                &["network", "start", &def, "--backend", backend],
            );
            assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        }
        // (iptables rules are deleted by their spec. The tables' own handles can differ: the
        // IPv4 and IPv6 setups run at the same time; rule handles are per table.)
        if backend == "nftables" {
            let handles = |ns: &Netns| {
                let t = ns
                    .run(&["nft", "-a", "-s", "list", "table", "ip", "libvirt_network"])
                    .unwrap();
                t.split_once('\n').unwrap().1.to_string()
            };
            assert_eq!(
                handles(&target),
                handles(&caller),
                "the same rules and handles"
            );
        }
        let libvirt = as_libvirt_status(&st_target, "netd");
        let state = dir.path().join("run");
        std::fs::create_dir_all(state.join("networks")).unwrap();
        std::fs::write(state.join("networks/netd.xml"), &libvirt).unwrap();
        let caller_before = snapshot(&caller);
        let target_before = snapshot(&target);

        // Status, from the caller's namespace, looks into the one given.
        let out = virtfw_in(
            Some(caller.name()),
            &state,
            Some(target.name()),
            &["--json", "network", "status", "netd"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["netns"], target.name(), "{v}");
        assert_eq!(v["stamped"], false, "{v}");

        let out = virtfw_in(
            Some(caller.name()),
            &state,
            Some(target.name()),
            &["network", "stop", "netd"],
        );
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", text(&out));
        assert_eq!(
            snapshot(&caller),
            caller_before,
            "{backend}: the caller's namespace was touched"
        );
        assert!(caller_before.contains("192.168.144"), "{caller_before}");
        let target_after = snapshot(&target);
        assert_ne!(target_after, target_before, "{backend}: nothing removed");
        assert!(
            !target_after.contains("192.168.144"),
            "{backend}: the network's rules stayed in the namespace given: {target_after}"
        );
    }
}

#[test]
fn a_libvirt_status_reloaded_in_a_namespace_is_stored_as_ours() {
    let target = Netns::new("vfid-lrt").unwrap();
    let caller = Netns::new("vfid-lrc").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let def = write(dir.path(), "e.xml", &network("nete", "vfide0", 145));
    let st_target = dir.path().join("target");
    let out = virtfw(
        &st_target,
        Some(target.name()),
        &["network", "start", &def, "--backend", "nftables"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state = dir.path().join("run");
    std::fs::create_dir_all(state.join("networks")).unwrap();
    std::fs::write(
        state.join("networks/nete.xml"),
        as_libvirt_status(&st_target, "nete"),
    )
    .unwrap();
    let caller_before = snapshot(&caller);

    let out = virtfw_in(
        Some(caller.name()),
        &state,
        Some(target.name()),
        &["network", "reload", "nete"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stored = std::fs::read_to_string(state.join("networks/nete.xml")).unwrap();
    assert!(
        stored.contains(&format!("netns='{}'", target.name())) && stored.contains("bootId='"),
        "{stored}"
    );
    // A --netns contradicting the record is refused (exit 2), nothing run.
    let target_before = snapshot(&target);
    let out = virtfw_in(
        None,
        &state,
        Some(caller.name()),
        &["network", "stop", "nete"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("--netns"), "{}", text(&out));
    assert_eq!(snapshot(&target), target_before);
    // With --netns filtering, list shows only the networks of that namespace.
    let out = virtfw(&state, Some(caller.name()), &["--json", "network", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["networks"].as_array().unwrap().len(), 0, "{v}");
    // Now recorded: stopped in the target namespace from the caller's without --netns.
    let out = virtfw_in(
        Some(caller.name()),
        &state,
        None,
        &["network", "stop", "nete"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        snapshot(&caller),
        caller_before,
        "the caller's namespace was touched"
    );
    assert!(!snapshot(&target).contains("192.168.145"));
}

#[test]
fn bad_netns_values_are_usage_errors_naming_the_argument() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let tx = write(dir.path(), "t.xml", &nft_tx("t", "badns"));
    let net = write(dir.path(), "n.xml", &network("netf", "vfidf0", 146));
    let long = "n".repeat(300);
    let commands: [&[&str]; 5] = [
        &["apply", &tx],
        &["remove", "t"],
        &["verify"],
        &["network", "start", &net, "--backend", "nftables"],
        &["network", "stop", "netf"],
    ];
    for value in ["", ".", "..", "a/b", "/etc/passwd", &long] {
        for args in commands {
            let out = virtfw(&state, Some(value), args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{value:?} {args:?}: {}",
                text(&out)
            );
            let err = stderr(&out);
            assert!(err.contains("--netns"), "{value:?} {args:?}: {err}");
            assert!(!err.contains("refused"), "{value:?} {args:?}: {err}");
        }
    }
    // Nothing was even stored.
    assert!(!state.join("plans").exists() && !state.join("networks").exists());
}
