//! apply → list → show → verify → drift → verify → remove, on both backends, in a throwaway
//! namespace: the ruleset after removal is exactly the one before the apply.

mod common;
use common::*;

fn roundtrip(
    env: &Env,
    file: &std::path::Path,
    name: &str,
    delete_by_hand: &[&str],
    missing_hint: &str,
) {
    let before = env.snapshot();
    let o = env.run(&["apply", path_of(file)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_ne!(env.snapshot(), before, "apply changed nothing");

    let o = env.run(&["list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains(name) && stdout(&o).contains(" ok"),
        "{}",
        text(&o)
    );
    let o = env.run(&["--json", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["plans"][0]["name"], name);
    assert!(v["plans"][0]["commands"].as_u64().unwrap() >= 6, "{v}");

    let o = env.run(&["show", name]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let xml = stdout(&o);
    assert!(
        xml.starts_with("<firewall") && xml.contains("ignoreErrors='yes'"),
        "{xml}"
    );
    virtfw::Firewall::from_xml(&xml, "show").expect("show prints a valid <firewall>");

    let o = env.run(&["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));

    env.ns.run(delete_by_hand).unwrap();
    let o = env.run(&["verify", name]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        stdout(&o).contains("missing:") && stdout(&o).contains(missing_hint),
        "{}",
        text(&o)
    );
    let o = env.run(&["--json", "verify", name]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["missing"], 1, "{v}");

    let o = env.run(&["remove", name]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        stdout(&o).contains("1 object(s) were already gone"),
        "{}",
        text(&o)
    );
    assert!(!plan_exists(env, name));
    assert_eq!(env.snapshot(), before, "ruleset not restored");
    let o = env.run(&["remove", name]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
}

#[test]
fn nftables_roundtrip() {
    let env = Env::new("vfw-rt-nft");
    let file = env.write("web.xml", &nft_tx("web", "vt"));
    // The hand-deleted rule: find its handle in the live table.
    let o = env.run(&["apply", "--dry-run", path_of(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        // The listing that tells whether the table exists, then (absent on the dry run's
        // empty fake host) the create.
        stdout(&o).contains(
            "nft \\\n-a list \\\ntable \\\nip \\\nvt\nnft \\\n-ae create \\\ntable \\\nip \\\nvt"
        ),
        "{}",
        text(&o)
    );
    assert_eq!(env.snapshot(), env.snapshot());
    let before = env.snapshot();
    assert!(!before.contains("vt"), "dry run applied something");

    let before = env.snapshot();
    let o = env.run(&["apply", path_of(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let listing = env
        .ns
        .run(&["nft", "-a", "list", "chain", "ip", "vt", "fwdc"])
        .unwrap();
    let line = listing.lines().find(|l| l.contains("vnet0")).unwrap();
    let handle = line.rsplit("# handle ").next().unwrap().trim().to_string();
    // Undo this first apply and go through the full cycle from a clean state.
    let o = env.run(&["remove", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(env.snapshot(), before);
    // Handles are per table; the re-created table numbers its objects the same way.
    roundtrip(
        &env,
        &file,
        "web",
        &[
            "nft", "delete", "rule", "ip", "vt", "fwdc", "handle", &handle,
        ],
        &format!("handle {handle}"),
    );
}

#[test]
fn iptables_roundtrip() {
    let env = Env::new("vfw-rt-ipt");
    env.prime_iptables();
    let file = env.write("guests.xml", &ipt_tx("guests", 7));
    roundtrip(
        &env,
        &file,
        "guests",
        &[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-s",
            "10.9.7.1/32",
            "!",
            "-d",
            "10.9.0.0/16",
            "-j",
            "MASQUERADE",
        ],
        "MASQUERADE",
    );
}

/// `remove` says exactly how many objects were already gone, on the engine's batch path (one
/// `nft -f`/`*-restore` transaction that fails and is retried without the vanished objects) as
/// on the per-command path.
fn missing_count_is_exact(env: &Env, file: &std::path::Path, name: &str, delete: &dyn Fn()) {
    let before = env.snapshot();
    for batch in [true, false] {
        let mut args = vec!["apply", path_of(file)];
        if !batch {
            args.insert(0, "--no-batch");
        }
        let o = env.run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        delete();
        let mut args = vec!["--json", "remove", name];
        if !batch {
            args.insert(0, "--no-batch");
        }
        let o = env.run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["missing"], 2, "batch={batch}: {v}");
        assert_eq!(v["failed"], 0, "batch={batch}: {v}");
        assert_eq!(
            env.snapshot(),
            before,
            "batch={batch}: ruleset not restored"
        );
    }
}

#[test]
fn nftables_missing_count_is_exact() {
    let env = Env::new("vfw-miss-nft");
    let file = env.write("m.xml", &nft_tx("miss", "mt"));
    let delete = || {
        let listing = env
            .ns
            .run(&["nft", "-a", "list", "chain", "ip", "mt", "fwdc"])
            .unwrap();
        for needle in ["vnet0", "saddr 10.1.0.0/24"] {
            let line = listing.lines().find(|l| l.contains(needle)).unwrap();
            let handle = line.rsplit("# handle ").next().unwrap().trim();
            env.ns
                .run(&[
                    "nft", "delete", "rule", "ip", "mt", "fwdc", "handle", handle,
                ])
                .unwrap();
        }
    };
    missing_count_is_exact(&env, &file, "miss", &delete);
}

#[test]
fn iptables_missing_count_is_exact() {
    let env = Env::new("vfw-miss-ipt");
    env.prime_iptables();
    let file = env.write("m.xml", &ipt_tx("miss", 8));
    let delete = || {
        env.ns
            .run(&[
                "iptables",
                "-w",
                "-D",
                "FORWARD",
                "-s",
                "10.9.8.1/32",
                "-j",
                "ACCEPT",
            ])
            .unwrap();
        env.ns
            .run(&[
                "ip6tables",
                "-w",
                "-D",
                "FORWARD",
                "-s",
                "fd00:8::1/128",
                "-j",
                "ACCEPT",
            ])
            .unwrap();
    };
    missing_count_is_exact(&env, &file, "miss", &delete);
}

/// A removal whose commands cannot run (here: programs whose interpreter is missing, so the
/// executor fails to start them) fails on both paths, and the plan is kept: the rules are
/// still there and a later `remove` can take them away.
#[test]
fn a_removal_that_cannot_run_keeps_the_plan() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("vfw-rt-broken");
    env.prime_iptables();
    let file = env.write("guests.xml", &ipt_tx("guests", 3));
    let before = env.snapshot();
    let o = env.run(&["apply", path_of(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let applied = env.snapshot();
    let broken = env.dir.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for program in [
        "iptables",
        "iptables-restore",
        "ip6tables",
        "ip6tables-restore",
    ] {
        let p = broken.join(program);
        std::fs::write(&p, "#!/nonexistent/interpreter\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Alone on PATH: exec's own search would skip a program it cannot start and find the
    // real one further on.
    let path = broken.display().to_string();
    for no_batch in [false, true] {
        let mut args = vec!["remove", "guests"];
        if no_batch {
            args.insert(0, "--no-batch");
        }
        let o = env.cmd(&args).env("PATH", &path).output().unwrap();
        assert_ne!(
            o.status.code(),
            Some(0),
            "no_batch {no_batch}: {}",
            text(&o)
        );
        assert!(
            plan_exists(&env, "guests"),
            "no_batch {no_batch}: plan deleted"
        );
        assert_eq!(env.snapshot(), applied, "no_batch {no_batch}");
    }
    let o = env.run(&["remove", "guests"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(env.snapshot(), before);
}
