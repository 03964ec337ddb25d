//! The fuzz targets: each is a `fn(&[u8])` that feeds one public parser and panics when an
//! invariant breaks. The same functions are driven by this crate's runner ([`crate::runner`]),
//! by the corpus replay test, and could be driven by cargo-fuzz (`fuzz/` beside this crate).
//!
//! A target returning normally means "fine": parsers may refuse input with an error, that is
//! their job. A panic (our `assert!`s included) or an abort is a finding.
//!
//! Adding a target is one function here and one line in [`TARGETS`] (plus a corpus directory
//! named after it); see docs/fuzzing.md.

use std::io::Write;

use virtfw::{
    batch, nft, rollback, validate, Backend, FakeExecutor, Firewall, Layer, TransactionFlags,
};
use virtfw_network::{lifecycle, NetworkDef, NetworkStatus};

/// One fuzz target: its name (also its corpus directory), the function, and words the
/// mutator splices in because the parser gives them meaning.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub dictionary: &'static [&'static str],
}

/// Tokens every XML target shares: the element and attribute names of libvirt's formats,
/// character references that change meaning on a round trip, and the hostile words of issue 8.
const XML_WORDS: &[&str] = &[
    "<firewall backend='nftables'>",
    "<firewall backend='iptables'>",
    "<firewall name='fwRemoval' backend='nftables'>",
    "</firewall>",
    "<group>",
    "</group>",
    "<group ignoreErrors='yes'>",
    "<group autoRollback='yes'>",
    "<rollback>",
    "<rollback inheritPrevious='yes'>",
    "</rollback>",
    "<action layer='ipv4'>",
    "<action layer='ipv6'>",
    "<action layer='ethernet'>",
    "<action layer='tc'>",
    "<action layer='ipv4' appended='yes'>",
    "</action>",
    "<args>",
    "</args>",
    "<item>",
    "</item>",
    "<item/>",
    "&#13;",
    "&#10;",
    "&#9;",
    "&#0;",
    "&amp;",
    "&lt;",
    "&apos;",
    "&quot;",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "<?xml version='1.0'?>",
    "<!DOCTYPE x [<!ENTITY e 'ee'>]>",
    "&e;",
    "xmlns:a='urn:a'",
    "'yes'",
    "'no'",
    "\r\n",
    "\r",
    "\"",
    "'",
    ";",
    "#",
    "# handle",
    ":INPUT DROP",
    ":VICTIM -",
    "\"a",
    "b\" ; add table ip extra",
    "accept ; flush ruleset #",
    "lo#",
];

/// Words of libvirt's `<network>` and `<networkstatus>` documents.
const NETWORK_WORDS: &[&str] = &[
    "<network>",
    "</network>",
    "<network ipv6='yes'>",
    "<name>",
    "</name>",
    "<bridge name='virbr0'/>",
    "<bridge name='lo#'/>",
    "<forward/>",
    "<forward mode='nat'>",
    "<forward mode='route'/>",
    "<forward mode='open'/>",
    "<forward dev='eth0'/>",
    "<forward dev='lo accept ; flush ruleset #'/>",
    "</forward>",
    "<interface dev='eth1'/>",
    "<nat ipv6='yes'>",
    "</nat>",
    "<address start='198.51.100.1' end='198.51.100.9'/>",
    "<port start='1024' end='65535'/>",
    "<port start='0' end='70000'/>",
    "<ip address='192.168.122.1' netmask='255.255.255.0'>",
    "<ip address='192.168.122.1' prefix='24'/>",
    "<ip family='ipv6' address='2001:db8::1' prefix='64'/>",
    "<ip family='ipv6' address='fd00::1' prefix='129'/>",
    "</ip>",
    "<dhcp>",
    "</dhcp>",
    "<range start='192.168.122.2' end='192.168.122.254'/>",
    "<host mac='52:54:00:00:00:01' ip='192.168.122.9'/>",
    "<tftp root='/srv/tftp'/>",
    "<dns enable='no'/>",
    "<networkstatus>",
    "</networkstatus>",
    "<class_id bitmap='0-2'/>",
    "<floor sum='0'/>",
    "<virtfw createdBridge='yes'/>",
    "<virtfw netns='ns1'/>",
    "netns='../etc'",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "/33",
];

/// Words of the tools' output that the output parsers look for.
const OUTPUT_WORDS: &[&str] = &[
    "# handle ",
    " # handle 2",
    "# handle 18446744073709551615",
    "# handle 18446744073709551616",
    "# handle -1",
    "handle ",
    "add table ip t",
    "add chain ip t c { type filter hook input priority 0; policy accept; }",
    "add rule ip t c handle 3 counter accept",
    "comment \"# handle 2\"",
    "table ip libvirt_network {",
    "chain guest_nat {",
    "\t}",
    "}",
    "/dev/stdin:",
    "-:",
    ":1:",
    "line ",
    " failed",
    "Error occurred at line: ",
    "Error: Could not process rule: No such file or directory",
    "Error: syntax error, unexpected",
    "iptables-restore: line 2 failed",
    "does a matching rule exist",
    "No chain/target/match by that name",
    "does not exist",
    "^^^^",
    "\n",
    "\t",
    "firewall_backend",
    " = ",
    "\"nftables\"",
    "iptables",
    "none",
];

/// Words of argument vectors (one argument per line in the `command_args` target).
const ARG_WORDS: &[&str] = &[
    "add",
    "insert",
    "create",
    "delete",
    "rule",
    "chain",
    "table",
    "ip",
    "ip6",
    "inet",
    "bridge",
    "netdev",
    "arp",
    "position",
    "index",
    "handle",
    "-I",
    "-A",
    "-D",
    "-N",
    "-X",
    "-F",
    "--insert",
    "--append",
    "--delete",
    "--check",
    "--comment",
    "-j",
    "ACCEPT",
    "INPUT",
    "3",
    "-ae",
    "\n",
    "\"",
    ";",
    "#",
    "{",
    "}",
    "{ type filter hook input priority 0 ; }",
    "*filter",
    "COMMIT",
    ":INPUT",
    "-",
    "\r",
    "\0",
    "\t",
    "lo#",
    "comment",
    "\"# handle 2\"",
];

/// Every fuzz target, in the order `virtfw-fuzz list` shows them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "transaction_xml",
        run: transaction_xml,
        dictionary: XML_WORDS,
    },
    Target {
        name: "network_xml",
        run: network_xml,
        dictionary: NETWORK_WORDS,
    },
    Target {
        name: "status_xml",
        run: status_xml,
        dictionary: NETWORK_WORDS,
    },
    Target {
        name: "nft_echo",
        run: nft_echo,
        dictionary: OUTPUT_WORDS,
    },
    Target {
        name: "nft_echo_map",
        run: nft_echo_map,
        dictionary: OUTPUT_WORDS,
    },
    Target {
        name: "nft_listing",
        run: nft_listing,
        dictionary: OUTPUT_WORDS,
    },
    Target {
        name: "tool_errors",
        run: tool_errors,
        dictionary: OUTPUT_WORDS,
    },
    Target {
        name: "command_args",
        run: command_args,
        dictionary: ARG_WORDS,
    },
    Target {
        name: "command_validation",
        run: command_validation,
        dictionary: ARG_WORDS,
    },
    Target {
        name: "network_conf",
        run: network_conf,
        dictionary: OUTPUT_WORDS,
    },
];

/// The target called `name`, including the runner's self-test targets.
pub fn find(name: &str) -> Option<&'static Target> {
    TARGETS
        .iter()
        .chain(crate::selftest::TARGETS)
        .find(|t| t.name == name)
}

/// The parsers take `&str`; invalid UTF-8 is replaced rather than skipped so that byte-level
/// mutations of valid documents keep reaching the parser.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// A firewall as plain data, for structural comparison (commands' callbacks cannot be compared,
/// and a parsed firewall has none).
fn shape(fw: &Firewall) -> String {
    let mut out = format!("{} {:?}\n", fw.backend(), fw.name());
    for g in fw.groups() {
        out.push_str(&format!("group {:?} {:?}\n", g.flags(), g.rollback_flags()));
        for c in g.actions() {
            out.push_str(&format!("  {c:?}\n"));
        }
        for c in g.rollbacks() {
            out.push_str(&format!("  rollback {c:?}\n"));
        }
    }
    out
}

/// `to_xml` of a parsed firewall must parse again into the same firewall, and writing that
/// again must give the same text: a stored plan means what it meant when it was written.
fn assert_round_trip(fw: &Firewall, what: &str) {
    let xml = fw.to_xml();
    let again = Firewall::from_xml(&xml, "round-trip")
        .unwrap_or_else(|e| panic!("{what}: to_xml output does not parse again: {e}\n{xml}"));
    assert_eq!(
        shape(fw),
        shape(&again),
        "{what}: the firewall changed on a to_xml/from_xml round trip\n{xml}"
    );
    assert_eq!(xml, again.to_xml(), "{what}: to_xml is not stable");
}

/// The transaction file reader (`virtfw apply FILE`, stored plans, libvirt's `fwRemoval`).
pub fn transaction_xml(data: &[u8]) {
    if let Ok(fw) = Firewall::from_xml(&text(data), "fuzz.xml") {
        assert_round_trip(&fw, "transaction");
    }
}

/// An interface name that stays one word for nft and iptables-restore, by the kernel's rules
/// (issue 8, "input that cannot be reinterpreted"): 1–15 bytes, no `/`, whitespace, `#`, `;`,
/// quotes or braces.
fn is_one_interface_word(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name
            .chars()
            .any(|c| c.is_whitespace() || "/#;\"'{}".contains(c))
}

/// A network definition (`virtfw network start FILE`): an accepted definition names its bridge
/// and upstream device with words that cannot change the meaning of a rule, and building its
/// firewall for either backend must not panic; a built firewall round-trips as a plan.
pub fn network_xml(data: &[u8]) {
    let Ok(def) = NetworkDef::from_xml(&text(data), "fuzz.xml") else {
        return;
    };
    check_network(&def);
}

fn check_network(def: &NetworkDef) {
    if def.forward.is_virtual() {
        assert!(
            is_one_interface_word(&def.bridge),
            "accepted bridge name {:?} is not one interface-name word",
            def.bridge
        );
    }
    if let Some(dev) = &def.forward_dev {
        assert!(
            is_one_interface_word(dev),
            "accepted forward dev {dev:?} is not one interface-name word"
        );
    }
    for backend in [Backend::Nftables, Backend::Iptables] {
        if let Ok(fw) = lifecycle::network_firewall(def, backend) {
            assert_round_trip(&fw, "network firewall");
        }
        let _ = lifecycle::plan(def, backend, true);
    }
}

/// A network status file (`/run/libvirt/network/NAME.xml`, written by libvirt or virtfw): what
/// virtfw writes must read back as the same status, and writing it again must not drift.
pub fn status_xml(data: &[u8]) {
    let Ok(status) = NetworkStatus::from_xml(&text(data), "fuzz.xml") else {
        return;
    };
    let xml = status.to_xml();
    let again = NetworkStatus::from_xml(&xml, "round-trip")
        .unwrap_or_else(|e| panic!("status: to_xml output does not parse again: {e}\n{xml}"));
    assert_eq!(status.created_bridge, again.created_bridge, "createdBridge");
    assert_eq!(status.netns, again.netns, "netns\n{xml}");
    assert_eq!(status.def.name, again.def.name, "network name\n{xml}");
    assert_eq!(status.def.bridge, again.def.bridge, "bridge\n{xml}");
    assert_eq!(
        status.removal.as_ref().map(shape),
        again.removal.as_ref().map(shape),
        "removal plan changed on a round trip\n{xml}"
    );
    assert_eq!(xml, again.to_xml(), "status to_xml is not stable");
    // What `network stop` runs: the stored plan, or libvirt's legacy deletions without one.
    let _ = status.backend();
    assert_round_trip(&status.removal_plan(), "status removal plan");
}

/// The decimal digits of `n` must appear in `text` right after a `# handle ` marker (leading
/// zeros allowed): a handle is never invented.
fn handle_is_echoed(text: &str, n: u64) -> bool {
    let digits = n.to_string();
    text.match_indices("# handle ").any(|(at, m)| {
        let rest = &text[at + m.len()..];
        let run: &str = &rest[..rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len())];
        run.trim_start_matches('0') == digits.trim_start_matches('0') && !run.is_empty()
    })
}

/// nft's echo of a create (`nft -ae …`), single command and batch line: the handle read is the
/// `# handle` that ends its line, so a rule whose comment holds `# handle 2` cannot make it
/// read the 2 (issue 8, item 3).
pub fn nft_echo(data: &[u8]) {
    let text = text(data);
    for line in text.lines() {
        if let Some(h) = nft::trailing_handle(line) {
            assert!(
                handle_is_echoed(line, h)
                    && line.trim_end().ends_with(|c: char| c.is_ascii_digit()),
                "trailing_handle read {h}, which is not the `# handle` ending {line:?}"
            );
        }
    }
}

/// The batch echo map (`nft::map_echo`): the input is the batch's create lines, a line `---`,
/// nft's stdout, and optionally `---` and the `nft -a list table` output of every touched
/// table before the batch (without it, each touched table was absent). An object that existed
/// before is never ours, and a handle called ours is one nft printed (issue 8, item 1).
pub fn nft_echo_map(data: &[u8]) {
    let text = text(data);
    let mut parts = text.split("\n---\n");
    let (batch, stdout, before) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next(),
    );
    let creates: Vec<nft::NftCreate> = batch.lines().filter_map(nft::line_create).collect();
    let mut existing = nft::Existing::default();
    for c in &creates {
        let (family, table) = c.table_key();
        let recorded = match before {
            Some(listing) => existing.record_listing(&family, &table, 0, listing, ""),
            None => {
                existing.record_listing(&family, &table, 1, "", "Error: No such file or directory")
            }
        };
        recorded.expect("a listing with status 0, or one that says absent, is recorded");
    }
    let facts = existing.clone();
    let echoes = nft::map_echo(&creates, &mut existing, stdout);
    assert_eq!(echoes.len(), creates.len(), "one answer per create");
    for (c, e) in creates.iter().zip(&echoes) {
        if facts.exists(c) == Some(true) {
            assert_eq!(
                *e,
                nft::Echo::Existed,
                "{c:?} existed before, yet it is called {e:?}"
            );
        }
        if let nft::Echo::Ours(h) = e {
            assert!(
                handle_is_echoed(stdout, *h),
                "{c:?} was given handle {h}, which the echo does not show"
            );
        }
    }
}

/// `nft -a list table …` (and `nft -j list tables`) as verify, the undo and the network code
/// read them: every chain and handle found is in the listing.
pub fn nft_listing(data: &[u8]) {
    let text = text(data);
    let listing = nft::parse_listing(&text);
    for (chain, h) in &listing.chains {
        assert!(
            handle_is_echoed(&text, *h),
            "parse_listing read handle {h} for chain {chain:?}, which the listing does not show"
        );
    }
    for (chain, handles) in &listing.rules {
        assert!(
            text.contains(chain.as_str()),
            "parse_listing invented chain {chain:?}"
        );
        for h in handles {
            assert!(
                handle_is_echoed(&text, *h),
                "parse_listing read handle {h} in chain {chain:?}, which the listing does not show"
            );
        }
    }
    if let Some(h) = listing.table {
        assert!(
            handle_is_echoed(&text, h),
            "table handle {h} is not in the listing"
        );
    }
    for t in nft::parse_tables_json(&text).unwrap_or_default() {
        assert!(
            text.contains(&t.handle.to_string()),
            "parse_tables_json read handle {} that the JSON does not hold",
            t.handle
        );
    }
}

/// The stderr readers of the batch path: the line a tool blames is a number the message shows,
/// and "the object was missing" is a property of the message, not of where it sits.
pub fn tool_errors(data: &[u8]) {
    let text = text(data);
    if let Some(n) = batch::error_line(&text) {
        assert!(
            text.contains(&n.to_string()),
            "error_line read line {n}, which the message does not show"
        );
    }
    // A kind is a property of the message, not of where it sits.
    let prefixed = format!("nft: warning\n{text}");
    assert_eq!(
        virtfw::nft::failure_kind(&text),
        virtfw::nft::failure_kind(&prefixed),
        "nft::failure_kind depends on the message's first line"
    );
    assert_eq!(
        virtfw::xtables::failure_kind(&text),
        virtfw::xtables::failure_kind(&prefixed),
        "xtables::failure_kind depends on the message's first line"
    );
}

/// The classifiers that decide what a command creates and what undoes it (one argument per
/// line): an nft inverse deletes by the given handle, an iptables inverse deletes and is no
/// longer than the create.
pub fn command_args(data: &[u8]) {
    let text = text(data);
    let args: Vec<String> = text.split('\n').map(str::to_string).collect();
    let words = nft::words(&args);
    assert_eq!(
        nft::line_words(&words.join(" ")),
        words,
        "nft words are not stable when joined again"
    );
    if let Some(create) = nft::nft_create(&args) {
        let inverse = create.inverse(42);
        assert_eq!(inverse.first().map(String::as_str), Some("delete"));
        assert_eq!(
            inverse[inverse.len() - 2..],
            ["handle".to_string(), "42".to_string()],
            "nft inverse {inverse:?} does not end in `handle 42`"
        );
        let strict = nft::nft_create(&nft::as_create(&args));
        if create.verb_word == "add" {
            let strict = strict.expect("as_create keeps a create");
            assert_eq!(strict.verb_word, "create");
            assert_eq!(
                strict.key(),
                create.key(),
                "as_create changed what is created"
            );
        }
    }
    if rollback::iptables_is_create(&args) {
        let _ = rollback::iptables_is_append(&args);
        let inverse = rollback::iptables_inverse(&args);
        assert!(
            inverse.iter().any(|a| a == "--delete") && inverse.len() <= args.len(),
            "iptables inverse {inverse:?} of {args:?}"
        );
    }
    let _ = rollback::iptables_is_delete(&args);
    if let Some(check) = rollback::iptables_check(&args) {
        assert!(
            check.iter().any(|a| a == "--check"),
            "iptables check form {check:?} has no --check"
        );
    }
}

/// The argument check that keeps both apply paths equal (`validate::check_command`): the first
/// byte picks the backend and layer, the rest is one argument per line. Whatever it decides,
/// the file path (`to_xml` then `from_xml`) and the API path (`apply`) decide the same, so a
/// command is never accepted on one path and refused on the other; an accepted command survives
/// being stored as XML unchanged.
pub fn command_validation(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let backend = if selector & 1 == 0 {
        Backend::Nftables
    } else {
        Backend::Iptables
    };
    let layer =
        [Layer::Ipv4, Layer::Ipv6, Layer::Ethernet, Layer::Tc][usize::from(selector >> 1) % 4];
    let args: Vec<String> = text(rest).split('\n').map(str::to_string).collect();
    let verdict = validate::check_command(backend, layer, &args);
    let mut fw = Firewall::new(backend);
    fw.start_transaction(TransactionFlags::empty());
    fw.add_cmd(layer, &args);
    let xml = fw.to_xml();
    match Firewall::from_xml(&xml, "validation.xml") {
        Ok(back) => {
            assert!(
                verdict.is_ok(),
                "from_xml accepted {args:?}, which check_command refuses: {verdict:?}"
            );
            assert_eq!(
                shape(&fw),
                shape(&back),
                "an accepted command changed in XML\n{xml}"
            );
        }
        Err(e) => assert!(
            verdict.is_err(),
            "check_command accepts {args:?}, but its stored form does not read back: {e}\n{xml}"
        ),
    }
    let applied = fw.apply(&FakeExecutor::new());
    if let Err(refused) = &verdict {
        assert!(
            matches!(applied, Err(virtfw::Error::UnsafeArgument { item, .. }) if item == refused.item),
            "apply of {args:?} gave {applied:?}, check_command refused item {}",
            refused.item
        );
    } else if let Err(virtfw::Error::UnsafeArgument { .. }) = applied {
        panic!("apply refused {args:?}, which check_command accepts: {applied:?}");
    }
}

/// libvirt's `network.conf` (`firewall_backend = …`); the reader takes a path, so the input is
/// written to a temporary file first.
pub fn network_conf(data: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file for network.conf");
    file.write_all(data).expect("write network.conf");
    let _ = virtfw_network::backend::read_network_conf(file.path());
}
