//! [`LibnftExecutor`] against the real kernel and the real `nft` program, each test in throwaway
//! namespaces: what it prints, how it fails, and the engine's whole flow through it must match
//! the `nft` process.
//!
//! These tests need root and `libnftables.so.1` (Debian's `libnftables1`, which `nftables`
//! depends on); they fail loudly without them rather than checking nothing.

use std::sync::Arc;

use virtfw::batch::{error_line, IgnoredCounter};
use virtfw::executor::{Invocation, Output};
use virtfw::netns::Netns;
use virtfw::{
    ApplyOptions, Backend, Executor, Firewall, Layer, LibnftExecutor, ProcessExecutor,
    TransactionFlags,
};

fn netns() -> Netns {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the libnft tests need root");
    Netns::new("vfln").unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"))
}

fn in_process(ns: &Netns) -> LibnftExecutor {
    let exec = LibnftExecutor::in_netns(ns.name()).unwrap();
    assert!(
        exec.is_in_process(),
        "libnftables.so.1 could not be loaded (install libnftables1)"
    );
    exec
}

fn run(exec: &dyn Executor, argv: &str, stdin: Option<&str>) -> Output {
    let argv: Vec<String> = split(argv);
    exec.run(Invocation {
        argv: &argv,
        stdin: stdin.map(str::as_bytes),
    })
    .unwrap_or_else(|e| panic!("{}: {e}", argv.join(" ")))
}

/// Words split on spaces, except that a `{ … }` tail stays one argument (a chain spec).
fn split(s: &str) -> Vec<String> {
    match s.find(" {") {
        Some(at) => {
            let mut v = split(&s[..at]);
            v.push(s[at + 1..].to_string());
            v
        }
        None => s.split_whitespace().map(String::from).collect(),
    }
}

/// The process id in `# new generation G by process PID (nft)` differs between runs; the rest of
/// the line must not.
fn without_pid(stdout: &str) -> String {
    stdout
        .lines()
        .map(|l| match l.strip_prefix("# new generation ") {
            Some(rest) => {
                let (generation, rest) = rest.split_once(" by process ").expect("by process");
                let (_, name) = rest.split_once(' ').expect("process name");
                format!("# new generation {generation} by process PID {name}\n")
            }
            None => format!("{l}\n"),
        })
        .collect()
}

/// Commands the engine sends (single `-ae` creates, `-f -` batches with and without echo,
/// listings), some failing; each is run by both executors in their own fresh namespace.
const SCRIPT: &[(&str, Option<&str>)] = &[
    ("nft -ae add table ip vt", None),
    (
        "nft -ae add chain ip vt fw { type filter hook forward priority 0; policy accept; }",
        None,
    ),
    (
        "nft -ae add rule ip vt fw ip saddr 10.0.0.1/32 tcp dport 1001 counter accept comment \"one\"",
        None,
    ),
    ("nft -ae insert rule ip vt fw ip saddr 10.0.0.2 accept", None),
    ("nft -ae add table ip vt", None),
    (
        "nft -ae -f -",
        Some(
            "add chain ip vt c2\n\
             add rule ip vt c2 ip saddr 10.1.0.1 tcp dport 2001 accept\n\
             add rule ip vt c2 ip saddr 10.1.0.2 tcp dport 2002 accept\n\
             insert rule ip vt c2 ip saddr 10.1.0.3 drop\n\
             add rule ip vt c2 ip saddr 10.1.0.4 tcp dport 2004 accept\n\
             add table ip6 vt6\n",
        ),
    ),
    ("nft -f -", Some("add rule ip vt c2 counter\n")),
    ("nft -a list ruleset", None),
    ("nft list ruleset", None),
    ("nft -j list tables", None),
    ("nft -a list table ip vt", None),
    ("nft list table ip nosuch", None),
    // Failures: parser, kernel, in a batch at line 2 and line 3, and on the command line.
    (
        "nft -ae -f -",
        Some(
            "add rule ip vt c2 ip saddr 10.2.0.1 accept\n\
             add rule ip vt c2 tcp dport 70000 accept\n\
             add rule ip vt c2 ip saddr 10.2.0.3 accept\n",
        ),
    ),
    (
        "nft -ae -f -",
        Some(
            "add rule ip vt c2 ip saddr 10.3.0.1 accept\n\
             add rule ip vt c2 ip saddr 10.3.0.2 accept\n\
             add rule ip vt c2 jump nosuch\n",
        ),
    ),
    ("nft -ae add rule ip notable c accept", None),
    ("nft add rule ip vt fw acceptt", None),
    ("nft -f -", Some("delete rule ip vt c2 handle 9999\n")),
    // Deletes echo nothing; the rule set is what it was after them.
    ("nft -f -", Some("delete rule ip vt fw handle 3\n")),
    ("nft -ae delete rule ip vt fw handle 2", None),
    ("nft -a list ruleset", None),
    // Options after the command, and an unknown option, go to the program.
    ("nft -a list ruleset -e", None),
    ("nft --numeric list table ip vt", None),
];

fn run_script(exec: &dyn Executor) -> Vec<(String, Output)> {
    SCRIPT
        .iter()
        .map(|(argv, stdin)| (argv.to_string(), run(exec, argv, *stdin)))
        .collect()
}

fn assert_same(libnft: &[(String, Output)], process: &[(String, Output)]) {
    for ((argv, a), (_, b)) in libnft.iter().zip(process) {
        assert_eq!(a.status, b.status, "{argv}\n{a:?}\n{b:?}");
        assert_eq!(without_pid(&a.stdout), without_pid(&b.stdout), "{argv}");
        assert_eq!(a.stderr, b.stderr, "{argv}");
    }
}

#[test]
fn commands_and_batches_print_and_fail_like_the_nft_program() {
    let (ns_lib, ns_proc) = (netns(), netns());
    let libnft = run_script(&in_process(&ns_lib));
    let process = run_script(&ns_proc.executor().unwrap());
    assert_same(&libnft, &process);

    // Spot checks that the comparison compared something real.
    let out = |i: usize| &libnft[i].1;
    assert_eq!(
        without_pid(&out(2).stdout),
        "add rule ip vt fw ip saddr 10.0.0.1 tcp dport 1001 counter packets 0 bytes 0 accept comment \"one\" # handle 2\n\
         # new generation 4 by process PID (nft)\n"
    );
    let batch: Vec<&str> = out(5).stdout.lines().collect();
    assert_eq!(batch.len(), 7, "{batch:?}");
    assert!(
        batch[5].starts_with("add table ip6 vt6 # handle"),
        "{batch:?}"
    );
    assert!(out(9).stdout.starts_with("{\"nftables\": [{\"metainfo\""));
    for (i, line) in [(12, 2), (13, 3)] {
        let o = out(i);
        assert_eq!((o.status, o.stdout.as_str()), (1, ""));
        assert!(o.stderr.starts_with("/dev/stdin:"), "{}", o.stderr);
        assert_eq!(error_line(&o.stderr), Some(line), "{}", o.stderr);
    }
    assert!(out(14).stderr.contains("No such file or directory"));
    assert!(out(20)
        .stderr
        .contains("options must be specified before commands"));
    // The failed batches applied nothing.
    assert_eq!(
        run(&in_process(&ns_lib), "nft list ruleset", None).stdout,
        ns_proc.run(&["nft", "list", "ruleset"]).unwrap()
    );
}

#[test]
fn without_the_library_it_is_the_process_executor() {
    let (ns_lib, ns_proc) = (netns(), netns());
    let exec = LibnftExecutor::with_library("libvirtfw-no-such-nftables.so.9", Some(ns_lib.name()))
        .unwrap();
    assert!(!exec.is_in_process());
    assert_eq!(exec.netns(), Some(ns_lib.name()));
    let fallback = run_script(&exec);
    let process = run_script(&ns_proc.executor().unwrap());
    assert_same(&fallback, &process);
    // The generation line names the nft program: these really were processes.
    assert!(fallback[0].1.stdout.ends_with("(nft)\n"));
    assert!(LibnftExecutor::in_netns("vfln-no-such-namespace").is_err());
}

/// The engine's own tests' firewall: table, base chain, then many rules in another group, a
/// third of them inserts, with an optional failing jump.
fn firewall(rules: usize, bad_at: Option<usize>) -> Firewall {
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, split("add table ip vt"));
    fw.add_cmd(
        Layer::Ipv4,
        split("add chain ip vt gfwd { type filter hook forward priority 0; policy accept; }"),
    );
    fw.add_cmd(Layer::Ipv6, split("add table ip6 vt"));
    fw.add_cmd(Layer::Ipv6, split("add chain ip6 vt c"));
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    for i in 0..rules {
        let verb = if i % 3 == 0 { "insert" } else { "add" };
        if Some(i) == bad_at {
            fw.add_cmd(
                Layer::Ipv4,
                split(&format!("{verb} rule ip vt gfwd jump nosuch")),
            );
        }
        fw.add_cmd(
            Layer::Ipv4,
            split(&format!(
                "{verb} rule ip vt gfwd ip saddr 10.9.{}.{}/32 tcp dport {} counter accept",
                i >> 8,
                i & 255,
                1024 + i
            )),
        );
    }
    fw.add_cmd(
        Layer::Ipv6,
        split("add rule ip6 vt c ip6 saddr 2001:db8::1 drop"),
    );
    fw
}

fn bystander(ns: &Netns) {
    ns.run(&["nft", "add", "table", "inet", "bystander"])
        .unwrap();
    ns.run(&[
        "nft",
        "add",
        "chain",
        "inet",
        "bystander",
        "out",
        "{ type filter hook output priority 10; policy accept; }",
    ])
    .unwrap();
    ns.run(&[
        "nft",
        "add",
        "rule",
        "inet",
        "bystander",
        "out",
        "counter",
        "accept",
    ])
    .unwrap();
}

fn ruleset(ns: &Netns) -> String {
    ns.run(&["nft", "-a", "list", "ruleset"]).unwrap()
}

#[test]
fn the_engine_applies_and_removes_exactly_through_libnftables() {
    for per_command in [false, true] {
        let (ns_lib, ns_proc) = (netns(), netns());
        bystander(&ns_lib);
        bystander(&ns_proc);
        let before = ruleset(&ns_lib);
        let (lib, proc) = (in_process(&ns_lib), ns_proc.executor().unwrap());
        let opts = ApplyOptions::new().per_command(per_command);
        let mut fw_lib = firewall(30, None);
        fw_lib.apply_with(&lib, opts).unwrap();
        let mut fw_proc = firewall(30, None);
        fw_proc.apply_with(&proc, opts).unwrap();
        let during = ruleset(&ns_lib);
        assert!(during.contains("10.9.0.29 tcp dport 1053"), "{during}");
        assert_eq!(during, ruleset(&ns_proc), "per_command={per_command}");
        // The same inverses with the same handles: the echo was read identically.
        let removal = fw_lib.new_from_rollback().unwrap();
        assert_eq!(
            removal.to_xml(),
            fw_proc.new_from_rollback().unwrap().to_xml()
        );
        assert_eq!(removal.command_count(), 35);

        // The removal runs in a later process, from the stored plan, with a fresh executor.
        drop(lib);
        let mut removal = Firewall::from_xml(&removal.to_xml(), "removal.xml").unwrap();
        let counter = IgnoredCounter::default();
        let lib = in_process(&ns_lib);
        removal
            .apply_with(
                &lib,
                ApplyOptions::new()
                    .per_command(per_command)
                    .observer(&counter),
            )
            .unwrap();
        assert_eq!((counter.missing(), counter.failed()), (0, 0));
        assert_eq!(ruleset(&ns_lib), before, "per_command={per_command}");
        lib.close();
    }
}

#[test]
fn a_failing_batch_is_blamed_and_rolled_back_like_with_the_process() {
    let (ns_lib, ns_proc) = (netns(), netns());
    let lib = in_process(&ns_lib);
    let opts = ApplyOptions::new().per_command(false);
    let err_lib = firewall(12, Some(7)).apply_with(&lib, opts).unwrap_err();
    let err_proc = firewall(12, Some(7))
        .apply_with(&ns_proc.executor().unwrap(), opts)
        .unwrap_err();
    assert!(err_lib.to_string().contains("jump nosuch"), "{err_lib}");
    assert_eq!(err_lib.to_string(), err_proc.to_string());
    let plain = |ns: &Netns| ns.run(&["nft", "list", "ruleset"]).unwrap();
    let listing = plain(&ns_lib);
    assert!(
        listing.contains("chain gfwd") && !listing.contains("saddr"),
        "{listing}"
    );
    assert_eq!(listing, plain(&ns_proc));
}

#[test]
fn changes_made_by_another_process_between_calls_are_seen() {
    let ns = netns();
    let lib = in_process(&ns);
    assert!(run(&lib, "nft add table ip vt", None).success());
    assert!(run(&lib, "nft add chain ip vt c", None).success());
    let listing = run(&lib, "nft -a list table ip vt", None).stdout;
    assert!(!listing.contains("accept"), "{listing}");

    // Another program adds a rule and a chain: the cached view must not hide them.
    ns.run(&[
        "nft",
        "add",
        "rule",
        "ip",
        "vt",
        "c",
        "ip",
        "saddr",
        "192.0.2.1",
        "accept",
    ])
    .unwrap();
    ns.run(&["nft", "add", "chain", "ip", "vt", "theirs"])
        .unwrap();
    let listing = run(&lib, "nft -a list table ip vt", None).stdout;
    assert!(
        listing.contains("ip saddr 192.0.2.1 accept # handle 2"),
        "{listing}"
    );
    assert!(listing.contains("chain theirs"), "{listing}");

    // A create into the chain they made gets its handle from the kernel's current counter.
    let out = run(&lib, "nft -ae add rule ip vt theirs counter", None);
    assert!(out.success(), "{out:?}");
    assert!(
        out.stdout
            .starts_with("add rule ip vt theirs counter packets 0 bytes 0 # handle 4\n"),
        "{out:?}"
    );

    // They delete the table: our next listing and batch see it gone.
    ns.run(&["nft", "delete", "table", "ip", "vt"]).unwrap();
    let out = run(&lib, "nft -a list table ip vt", None);
    assert_eq!(out.status, 1, "{out:?}");
    let out = run(&lib, "nft -f -", Some("add rule ip vt c accept\n"));
    assert_eq!(out.status, 1, "{out:?}");
    assert_eq!(error_line(&out.stderr), Some(1), "{}", out.stderr);
    assert!(run(&lib, "nft -ae -f -", Some("add table ip vt\n")).success());
    assert_eq!(
        ns.run(&["nft", "list", "ruleset"]).unwrap(),
        "table ip vt {\n}\n"
    );
}

#[test]
fn calls_from_many_threads_and_namespaces_land_where_they_belong() {
    let namespaces: Vec<Netns> = (0..2).map(|_| netns()).collect();
    let executors: Vec<Arc<LibnftExecutor>> = namespaces
        .iter()
        .map(|ns| Arc::new(in_process(ns)))
        .collect();
    for (k, exec) in executors.iter().enumerate() {
        assert!(run(exec.as_ref(), &format!("nft add table ip ns{k}"), None).success());
        assert!(run(exec.as_ref(), &format!("nft add chain ip ns{k} c"), None).success());
    }
    std::thread::scope(|scope| {
        for (k, exec) in executors.iter().enumerate() {
            for t in 0..3 {
                let exec = Arc::clone(exec);
                scope.spawn(move || {
                    for i in 0..10 {
                        let input = format!("add rule ip ns{k} c ip saddr 10.{k}.{t}.{i} accept\n");
                        let out = run(exec.as_ref(), "nft -ae -f -", Some(&input));
                        assert!(out.success(), "{out:?}");
                        assert!(out.stdout.contains(" # handle "), "{out:?}");
                    }
                });
            }
        }
    });
    for (k, ns) in namespaces.iter().enumerate() {
        let listing = ns.run(&["nft", "list", "ruleset"]).unwrap();
        assert_eq!(listing.matches("accept").count(), 30, "{listing}");
        assert_eq!(
            listing.matches(&format!("10.{k}.")).count(),
            30,
            "{listing}"
        );
        assert!(listing.contains(&format!("table ip ns{k}")), "{listing}");
    }
    // Other programs still run as processes inside the namespace.
    let out = run(executors[0].as_ref(), "ip -o link show lo", None);
    assert!(out.success() && out.stdout.contains("lo:"), "{out:?}");
    let host = ProcessExecutor::new();
    let out = run(&host, "nft list table ip ns0", None);
    assert_ne!(
        out.status, 0,
        "the host's namespace must not have our table: {out:?}"
    );
}

/// Three groups of three creates; command `fail_at` is replaced by one the kernel refuses.
fn plan(fail_at: usize, inherit: bool) -> Firewall {
    let groups: [[&str; 3]; 3] = [
        [
            "add table ip vp",
            "add chain ip vp c0 { type filter hook input priority 0; policy accept; }",
            "add rule ip vp c0 ip saddr 10.0.0.1 accept",
        ],
        [
            "add chain ip vp c1",
            "add rule ip vp c1 counter",
            "insert rule ip vp c0 jump c1",
        ],
        [
            "add table ip6 vp",
            "add chain ip6 vp c2",
            "add rule ip6 vp c2 ip6 saddr 2001:db8::2 drop",
        ],
    ];
    let mut fw = Firewall::new(Backend::Nftables);
    for (g, cmds) in groups.iter().enumerate() {
        fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
        for (i, cmd) in cmds.iter().enumerate() {
            let layer = if g == 2 { Layer::Ipv6 } else { Layer::Ipv4 };
            let cmd = if g * 3 + i == fail_at {
                "add rule ip vp c0 jump vfnosuch"
            } else {
                cmd
            };
            fw.add_cmd(layer, split(cmd));
        }
        if inherit && g > 0 {
            fw.start_rollback(virtfw::RollbackFlags::INHERIT_PREVIOUS);
        }
    }
    fw
}

#[test]
fn a_failure_at_every_position_ends_like_with_the_process() {
    for inherit in [false, true] {
        for fail_at in 0..9 {
            let (ns_lib, ns_proc) = (netns(), netns());
            let opts = ApplyOptions::new().per_command(false);
            let lib = in_process(&ns_lib);
            let err_lib = plan(fail_at, inherit).apply_with(&lib, opts).unwrap_err();
            let err_proc = plan(fail_at, inherit)
                .apply_with(&ns_proc.executor().unwrap(), opts)
                .unwrap_err();
            let case = format!("fail_at={fail_at} inherit={inherit}");
            assert!(
                err_lib.to_string().contains("vfnosuch"),
                "{case}: {err_lib}"
            );
            assert_eq!(err_lib.to_string(), err_proc.to_string(), "{case}");
            let plain = |ns: &Netns| ns.run(&["nft", "list", "ruleset"]).unwrap();
            let listing = plain(&ns_lib);
            assert_eq!(listing, plain(&ns_proc), "{case}");
            // What must be left: nothing with INHERIT_PREVIOUS, else the groups before.
            match (inherit, fail_at / 3) {
                (true, _) | (false, 0) => assert_eq!(listing, "", "{case}"),
                (false, 1) => assert!(listing.contains("10.0.0.1") && !listing.contains("c1")),
                _ => assert!(
                    listing.contains("jump c1") && !listing.contains("ip6"),
                    "{case}"
                ),
            }
        }
    }
}
