//! The public `FakeExecutor` as a model of a host: its answers are compared with the real
//! nft 1.0.6 and iptables 1.8.9 (nf_tables) in throwaway namespaces for representative
//! sequences (status, errno of a failure, relative order of echoed handles, the listing after),
//! and its dump/load lets a library user set up a host state and compare after an apply.
//! The comparison tests need root (they fail loudly without it, like tests/kernel.rs).

use virtfw::executor::{Executor, FakeExecutor, FakeModel, FakeResponse, Invocation, Output};
use virtfw::netns::Netns;
use virtfw::{Backend, Firewall, Layer, TransactionFlags};

/// The only place this file builds an invocation.
fn invocation<'a>(argv: &'a [String], stdin: Option<&'a [u8]>) -> Invocation<'a> {
    Invocation { argv, stdin }
}

fn netns() -> Netns {
    // SAFETY: geteuid has no preconditions and cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the comparison tests need root"
    );
    Netns::new("vffake").unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"))
}

/// One step of a sequence: the argv after the program (split at spaces, except that an item
/// may hold spaces when written as one `|`-separated piece) and optional stdin. `{k}` in
/// either is replaced by the k-th handle echoed so far in the sequence.
struct Step {
    argv: &'static [&'static str],
    stdin: Option<&'static str>,
}

const fn s(argv: &'static [&'static str]) -> Step {
    Step { argv, stdin: None }
}

const fn batch(argv: &'static [&'static str], stdin: &'static str) -> Step {
    Step {
        argv,
        stdin: Some(stdin),
    }
}

/// What a step showed, in terms both the kernel and the model must agree on.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: i32,
    /// The errno phrase of a failure.
    errno: Option<&'static str>,
    /// How many handles it echoed.
    echoed: usize,
    /// The line a restore program blamed.
    line: Option<String>,
}

const ERRNOS: [&str; 5] = [
    "No such file or directory",
    "File exists",
    "Device or resource busy",
    "Bad rule",
    "No chain/target/match",
];

fn substitute(text: &str, handles: &[u64]) -> String {
    let mut out = text.to_string();
    for (k, h) in handles.iter().enumerate().rev() {
        out = out.replace(&format!("{{{k}}}"), &h.to_string());
    }
    out
}

/// Run the steps and return what each showed, every echoed handle, and `listing` run after.
fn play(exec: &dyn Executor, steps: &[Step], listing: &[&str]) -> (Vec<Seen>, Vec<u64>, String) {
    let mut handles = Vec::new();
    let mut seen = Vec::new();
    for step in steps {
        let argv: Vec<String> = step.argv.iter().map(|a| substitute(a, &handles)).collect();
        let stdin = step.stdin.map(|t| substitute(t, &handles));
        let out = exec
            .run(invocation(&argv, stdin.as_deref().map(str::as_bytes)))
            .unwrap();
        let echoed: Vec<u64> = out
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(virtfw::nft::trailing_handle)
            .collect();
        seen.push(Seen {
            status: out.status,
            errno: ERRNOS.iter().copied().find(|e| out.stderr.contains(e)),
            echoed: echoed.len(),
            line: out
                .stderr
                .find("line ")
                .map(|at| out.stderr[at..].split(':').next().unwrap().to_string()),
        });
        handles.extend(echoed);
    }
    let argv: Vec<String> = listing.iter().map(|s| s.to_string()).collect();
    let out = exec.run(invocation(&argv, None)).unwrap();
    (seen, handles, out.stdout)
}

/// The relative order of handles: each replaced by its rank among the distinct values.
fn ranks(handles: &[u64]) -> Vec<usize> {
    let mut distinct: Vec<u64> = handles.to_vec();
    distinct.sort();
    distinct.dedup();
    handles
        .iter()
        .map(|h| distinct.binary_search(h).unwrap())
        .collect()
}

/// Run `steps` against the kernel and the strict model and compare. Table handles are left
/// out of the handle order (the kernel counts them apart from a table's chains and rules).
fn compare(steps: &[Step], listing: &[&str], table_echoes: &[usize]) {
    let ns = netns();
    let real = play(&ns.executor().unwrap(), steps, listing);
    let fake = FakeExecutor::new().strict();
    let model = play(&fake, steps, listing);
    for (k, (r, m)) in real.0.iter().zip(&model.0).enumerate() {
        assert_eq!(r, m, "step {k} ({:?}): kernel vs model", steps[k].argv);
    }
    let keep = |h: &[u64]| -> Vec<u64> {
        h.iter()
            .enumerate()
            .filter(|(k, _)| !table_echoes.contains(k))
            .map(|(_, h)| *h)
            .collect()
    };
    assert_eq!(
        ranks(&keep(&real.1)),
        ranks(&keep(&model.1)),
        "handle order"
    );
    assert_eq!(normalise(&real.2), normalise(&model.2), "listing after");
}

/// iptables -S output: declarations sorted, rules grouped by chain in their order; nft text
/// is kept as it is.
fn normalise(text: &str) -> String {
    if !text.starts_with("-P") && !text.starts_with("-N") {
        return text.to_string();
    }
    let mut decls: Vec<&str> = text.lines().filter(|l| !l.starts_with("-A")).collect();
    decls.sort();
    let mut rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A")).collect();
    rules.sort_by_key(|l| l.split(' ').nth(1).unwrap_or("").to_string());
    format!("{}\n{}", decls.join("\n"), rules.join("\n"))
}

const NFT_LIST: &[&str] = &["nft", "list", "ruleset"];

#[test]
fn nft_creates_and_existing_objects_match_the_kernel() {
    compare(
        &[
            s(&["nft", "-ae", "add", "table", "ip", "t"]),
            s(&["nft", "-ae", "add", "chain", "ip", "t", "c"]),
            s(&["nft", "-ae", "add rule ip t c accept"]),
            s(&["nft", "-ae", "add rule ip t c tcp dport 22 accept"]),
            s(&["nft", "-ae", "insert rule ip t c drop"]),
            s(&["nft", "-ae", "add rule ip t c counter"]),
            // Existing table: silent; existing chain: its old handle; create: File exists.
            s(&["nft", "-ae", "add", "table", "ip", "t"]),
            s(&["nft", "-ae", "add", "chain", "ip", "t", "c"]),
            s(&["nft", "-ae", "create", "table", "ip", "t"]),
            s(&["nft", "-ae", "create", "chain", "ip", "t", "c"]),
            s(&[
                "nft",
                "-ae",
                "add chain ip t base { type filter hook input priority filter; policy accept; }",
            ]),
            s(&["nft", "-ae", "add", "rule", "ip", "t", "nochain", "accept"]),
            s(&["nft", "-ae", "add", "rule", "ip", "nosuch", "c", "accept"]),
        ],
        NFT_LIST,
        &[0],
    );
}

#[test]
fn nft_positions_match_the_kernel() {
    compare(
        &[
            s(&["nft", "add", "table", "ip", "t"]),
            s(&["nft", "-ae", "add", "chain", "ip", "t", "c"]),
            s(&["nft", "-ae", "add rule ip t c ip saddr 10.0.0.1 accept"]),
            s(&["nft", "-ae", "add rule ip t c ip saddr 10.0.0.2 accept"]),
            s(&[
                "nft",
                "-ae",
                "add rule ip t c position {1} ip saddr 10.0.0.3 drop",
            ]),
            s(&[
                "nft",
                "-ae",
                "insert rule ip t c position {2} ip saddr 10.0.0.4 drop",
            ]),
            s(&[
                "nft",
                "-ae",
                "add rule ip t c index 0 ip saddr 10.0.0.5 drop",
            ]),
            s(&[
                "nft",
                "-ae",
                "insert rule ip t c index 1 ip saddr 10.0.0.6 drop",
            ]),
            s(&["nft", "-ae", "add rule ip t c position 999999 accept"]),
        ],
        NFT_LIST,
        &[],
    );
}

#[test]
fn nft_deletes_and_flushes_match_the_kernel() {
    compare(
        &[
            s(&["nft", "-ae", "add", "table", "ip", "t"]),
            s(&["nft", "-ae", "add", "chain", "ip", "t", "c"]),
            s(&["nft", "-ae", "add", "chain", "ip", "t", "d"]),
            s(&["nft", "-ae", "add rule ip t c accept"]),
            s(&["nft", "-ae", "add rule ip t c drop"]),
            s(&["nft", "-ae", "add rule ip t d jump c"]),
            s(&["nft", "delete rule ip t c handle {3}"]),
            // A handle that is not there (any more): No such file or directory, exit 1.
            s(&["nft", "delete rule ip t c handle {3}"]),
            s(&["nft", "delete rule ip t c handle 999999"]),
            // A chain a rule jumps to is busy; one with rules of its own is deleted with them.
            s(&["nft", "delete chain ip t c"]),
            s(&["nft", "flush chain ip t d"]),
            s(&["nft", "delete chain ip t handle {1}"]),
            s(&["nft", "delete chain ip t d"]),
            s(&["nft", "flush chain ip t d"]),
            s(&["nft", "-ae", "add rule ip t c accept"]),
            s(&["nft", "delete table ip handle {0}"]),
            s(&["nft", "delete table ip t"]),
        ],
        NFT_LIST,
        &[0],
    );
}

#[test]
fn nft_batches_are_atomic_like_the_kernel() {
    compare(
        &[
            batch(
                &["nft", "-ae", "-f", "-"],
                "add table ip t\nadd chain ip t c\nadd rule ip t c accept\n",
            ),
            // A bad line: nothing of the batch stays, nothing is echoed.
            batch(
                &["nft", "-ae", "-f", "-"],
                "add chain ip t d\nadd rule ip t d drop\ndelete rule ip t c handle 999999\n",
            ),
            // A check keeps nothing.
            batch(&["nft", "-c", "-f", "-"], "add chain ip t e\n"),
            batch(&["nft", "-c", "-f", "-"], "create table ip t\n"),
            batch(
                &["nft", "-ae", "-f", "-"],
                "add table ip t\nadd chain ip t c\nadd rule ip t c drop\n",
            ),
        ],
        NFT_LIST,
        &[0],
    );
}

#[test]
fn nft_listings_match_the_kernel() {
    let ns = netns();
    let fake = FakeExecutor::new().strict();
    let steps = [
        s(&["nft", "add", "table", "ip", "t"]),
        s(&["nft", "add", "table", "ip6", "u"]),
        s(&["nft", "add", "chain", "ip", "t", "c"]),
        s(&["nft", "add rule ip t c tcp dport 22 accept"]),
    ];
    for listing in [
        &["nft", "-a", "list", "table", "ip", "t"][..],
        &["nft", "list", "table", "ip", "t"],
        &["nft", "list", "tables"],
    ] {
        let real = play(&ns.executor().unwrap(), &steps, listing).2;
        let model = play(&fake, &steps, listing).2;
        let strip = |t: &str| -> String {
            t.lines()
                .map(|l| l.split(" # handle").next().unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&real), strip(&model), "{listing:?}");
        // Same handles on the same lines, relatively.
        let hs = |t: &str| t.lines().filter_map(virtfw::nft::trailing_handle).count();
        assert_eq!(hs(&real), hs(&model));
        ns.run(&["nft", "flush", "ruleset"]).unwrap();
        fake.load(&FakeExecutor::new().dump()).unwrap();
    }
    let steps = &steps[..2];
    let real = play(
        &ns.executor().unwrap(),
        steps,
        &["nft", "-j", "list", "tables"],
    )
    .2;
    let model = play(&fake, steps, &["nft", "-j", "list", "tables"]).2;
    let names = |t: &str| -> Vec<(String, String)> {
        virtfw::nft::parse_tables_json(t)
            .unwrap()
            .into_iter()
            .map(|t| (t.family, t.name))
            .collect()
    };
    assert_eq!(names(&real), names(&model));
    // Absent: status 1, "No such file or directory".
    for exec in [&ns.executor().unwrap() as &dyn Executor, &fake] {
        let argv = virtfw::nft::listing_argv("ip", "absent");
        let out = exec.run(invocation(&argv, None)).unwrap();
        assert_eq!(out.status, 1);
        assert!(virtfw::nft::listing_says_absent(&out.stderr));
    }
}

const IPT_LIST: &[&str] = &["iptables", "-w", "-S"];

#[test]
fn iptables_commands_match_the_tool() {
    compare(
        &[
            s(&["iptables", "-w", "-N", "FOO"]),
            s(&["iptables", "-w", "-N", "FOO"]),
            s(&["iptables", "-w", "-A", "FOO", "-j", "ACCEPT"]),
            s(&["iptables", "-w", "--insert", "INPUT", "--jump", "FOO"]),
            s(&[
                "iptables",
                "-w",
                "-I",
                "INPUT",
                "-s",
                "10.0.0.0/24",
                "-j",
                "DROP",
            ]),
            s(&[
                "iptables", "-w", "-A", "INPUT", "-p", "tcp", "-m", "tcp", "--dport", "22", "-j",
                "ACCEPT",
            ]),
            s(&["iptables", "-w", "-I", "INPUT", "9", "-j", "ACCEPT"]),
            s(&["iptables", "-w", "--check", "INPUT", "-j", "FOO"]),
            s(&["iptables", "-w", "--check", "INPUT", "-j", "DROP"]),
            s(&["iptables", "-w", "-D", "INPUT", "-j", "DROP"]),
            s(&["iptables", "-w", "-A", "NOPE", "-j", "ACCEPT"]),
            s(&["iptables", "-w", "-X", "FOO"]),
            s(&["iptables", "-w", "-F", "FOO"]),
            s(&["iptables", "-w", "--delete", "INPUT", "--jump", "FOO"]),
            s(&["iptables", "-w", "-X", "FOO"]),
            s(&["iptables", "-w", "-F", "NOPE"]),
        ],
        IPT_LIST,
        &[],
    );
}

#[test]
fn restore_sections_commit_one_by_one_like_the_tool() {
    compare(
        &[
            batch(
                &["iptables-restore", "-w", "--noflush"],
                "*filter\n:BAR - [0:0]\n-A BAR -j ACCEPT\n-A INPUT -j BAR\nCOMMIT\n",
            ),
            // The second section's third line fails: the first section stays, the second
            // is rolled back whole, and the line is named.
            batch(
                &["iptables-restore", "-w", "--noflush"],
                "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n*filter\n-A INPUT -j DROP\n-D INPUT -s 1.1.1.1/32 -j ACCEPT\nCOMMIT\n",
            ),
            // --test keeps nothing.
            batch(
                &["iptables-restore", "-w", "--test", "--noflush"],
                "*filter\n-A INPUT -j REJECT\nCOMMIT\n",
            ),
            batch(&["ebtables-restore", "--test"], "*filter\nCOMMIT\n"),
        ],
        IPT_LIST,
        &[],
    );
}

fn run(fake: &FakeExecutor, argv: &[&str]) -> Output {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    fake.run(invocation(&argv, None)).unwrap()
}

/// A library user's test: load a host state, apply, compare the host after; the removal plan
/// brings the host back exactly.
#[test]
fn a_loaded_host_state_is_applied_to_and_restored_exactly() {
    let host = FakeExecutor::new().strict();
    run(&host, &["nft", "add", "table", "inet", "theirs"]);
    run(&host, &["nft", "add chain inet theirs input"]);
    run(&host, &["nft", "add rule inet theirs input accept"]);
    let before_json = host.dump();
    let before: FakeModel = serde_json::from_str(&before_json).unwrap();

    let fake = FakeExecutor::new().strict().with_batching();
    fake.load(&before_json).unwrap();
    assert_eq!(fake.model(), before);
    let mut fw = Firewall::new(Backend::Nftables);
    fw.start_transaction(TransactionFlags::AUTO_ROLLBACK);
    fw.add_cmd(Layer::Ipv4, ["add", "table", "ip", "mine"]);
    fw.add_cmd(Layer::Ipv4, ["add", "chain", "ip", "mine", "c"]);
    fw.add_cmd(Layer::Ipv4, ["add", "rule", "ip", "mine", "c", "drop"]);
    // Adding to someone else's chain: the rule is ours, their chain is not.
    fw.add_cmd(Layer::Ipv4, ["add", "chain", "inet", "theirs", "input"]);
    fw.add_cmd(
        Layer::Ipv4,
        ["insert", "rule", "inet", "theirs", "input", "drop"],
    );
    fw.apply(&fake).unwrap();
    let after = fake.model();
    assert_eq!(after.nft.tables.len(), 2);
    assert_eq!(
        after.nft.tables[0].chains[0]
            .rules
            .iter()
            .map(|r| r.text.as_str())
            .collect::<Vec<_>>(),
        ["drop", "accept"]
    );
    let mut removal = fw.new_from_rollback().unwrap();
    removal.apply(&fake).unwrap();
    let mut back = fake.model();
    back.nft.next_handle = before.nft.next_handle;
    assert_eq!(back, before, "the removal left the host as it was");
    // Removing twice: every handle is gone now, which nft reports and the plan ignores.
    removal.apply(&fake).unwrap();
}

#[test]
fn the_iptables_model_is_used_in_strict_mode_only() {
    let lenient = FakeExecutor::new();
    assert_eq!(
        run(&lenient, &["iptables", "-w", "-D", "INPUT", "-j", "DROP"]).status,
        0
    );
    let strict = FakeExecutor::new().strict();
    let out = run(&strict, &["iptables", "-w", "-D", "INPUT", "-j", "DROP"]);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("Bad rule"), "{}", out.stderr);
    run(
        &strict,
        &[
            "ip6tables",
            "-w",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-j",
            "MASQUERADE",
        ],
    );
    let model = strict.model();
    assert_eq!(
        model.xtables.programs["ip6tables"]["nat"]["POSTROUTING"].rules,
        ["-j MASQUERADE"]
    );
    // Dump and load round-trip.
    let copy = FakeExecutor::new().strict();
    copy.load(&strict.dump()).unwrap();
    assert_eq!(copy.model(), model);
    assert_eq!(
        run(
            &copy,
            &[
                "ip6tables",
                "-w",
                "-t",
                "nat",
                "--check",
                "POSTROUTING",
                "--jump",
                "MASQUERADE"
            ]
        )
        .status,
        0
    );
}

#[test]
fn scripted_answers_win_over_the_model() {
    let fake = FakeExecutor::new()
        .strict()
        .on(
            FakeExecutor::args_contain(&["delete", "handle", "7"]),
            FakeResponse::stdout(""),
        )
        .on(
            FakeExecutor::args_contain(&["-N", "X"]),
            FakeResponse::fail(4, "scripted"),
        );
    // The model would refuse this (no table); the script answers.
    assert_eq!(
        run(
            &fake,
            &["nft", "delete", "rule", "ip", "t", "c", "handle", "7"]
        )
        .status,
        0
    );
    let out = run(&fake, &["iptables", "-w", "-N", "X"]);
    assert_eq!((out.status, out.stderr.as_str()), (4, "scripted"));
    // And the model was not changed by either.
    assert_eq!(fake.model(), FakeModel::default());
    assert_eq!(
        run(
            &fake,
            &["nft", "delete", "rule", "ip", "t", "c", "handle", "8"]
        )
        .status,
        1
    );
}
