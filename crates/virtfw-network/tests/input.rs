//! Network definitions that cannot be reinterpreted: every name that ends up in a command is a
//! kernel interface name and one nft/iptables word, and a definition that is accepted always
//! gives a status file that reads back (a network that starts can be stopped).

use proptest::prelude::*;
use virtfw::validate::check_command;
use virtfw::xml::Limits;
use virtfw::Backend;
use virtfw_network::def::check_ifname;
use virtfw_network::lifecycle::network_firewall;
use virtfw_network::{NetworkDef, NetworkError, NetworkStatus};

fn definition(bridge: &str, forward: &str) -> String {
    format!(
        "<network>\n  <name>n</name>\n  <bridge name='{bridge}'/>\n  {forward}\n  <ip address='192.168.140.1' prefix='24'>\n    <dhcp><range start='192.168.140.2' end='192.168.140.9'/></dhcp>\n  </ip>\n  <ip family='ipv6' address='2001:db8:140::1' prefix='64'/>\n</network>\n"
    )
}

fn attr(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
}

fn refusal(text: &str) -> (u32, String) {
    match NetworkDef::from_xml(text, "net.xml") {
        Err(NetworkError::Definition {
            source_name,
            line,
            message,
            ..
        }) => {
            assert_eq!(source_name, "net.xml");
            (line, message)
        }
        other => panic!("expected a definition error, got {other:?}"),
    }
}

#[test]
fn the_issue_cases_are_refused_with_element_attribute_and_line() {
    let (line, msg) = refusal(&definition(
        "virbr9",
        "<forward mode='nat' dev='lo accept ; flush ruleset #'/>",
    ));
    assert_eq!(line, 4);
    assert!(
        msg.starts_with(
            "invalid interface name \"lo accept ; flush ruleset #\" in attribute 'dev' of <forward>"
        ),
        "{msg}"
    );
    let (line, msg) = refusal(&definition("lo#", ""));
    assert_eq!(line, 3);
    assert!(
        msg.starts_with("invalid interface name \"lo#\" in attribute 'name' of <bridge>"),
        "{msg}"
    );
    // Every <interface dev> is checked, not only the first one used.
    let (line, msg) = refusal(&definition(
        "virbr9",
        "<forward mode='route'><interface dev='eth0'/>\n<interface dev='eth1;'/></forward>",
    ));
    assert_eq!(line, 5);
    assert!(msg.contains("attribute 'dev' of <interface>"), "{msg}");
}

#[test]
fn kernel_rules_for_interface_names() {
    for ok in [
        "virbr0",
        "br-lan",
        "eth0.100",
        "a",
        "x_1",
        "abcdefghijklmno",
        ".x",
    ] {
        assert_eq!(check_ifname(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "abcdefghijklmnop",
        "a/b",
        "a b",
        "a\tb",
        "a:b",
        "-x",
        "lo#",
        "a;b",
        "a\"b",
        "a'b",
        "{a}",
        "a\\b",
        "eth*",
        "eth+",
        "@set",
        "$var",
        "é",
    ] {
        assert!(check_ifname(bad).is_err(), "{bad:?}");
    }
}

/// Names built from the characters that matter to the kernel, nft and iptables.
fn hostile_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            6 => proptest::char::range('a', 'z'),
            2 => proptest::char::range('0', '9'),
            1 => proptest::sample::select(vec![
                '.', '-', '_', '#', ';', '"', '\'', '{', '}', '\\', '*', '+', '@', '$', ' ', '\t',
                '/', ':', '!', '&', '<', '>', '|', 'é'
            ]),
        ],
        0..18,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the names, a definition either is refused at read time, or every command of
    /// its firewall (both backends) passes the engine's argument check and each name is one
    /// word of the allowed characters.
    #[test]
    fn accepted_names_only_make_safe_commands(bridge in hostile_name(), dev in hostile_name()) {
        let text = definition(&attr(&bridge), &format!("<forward mode='nat' dev='{}'/>", attr(&dev)));
        match NetworkDef::from_xml(&text, "net.xml") {
            Err(NetworkError::Definition { message, .. }) => {
                // A blank bridge name is missing (libvirt's words); anything else is named.
                let blank = bridge.trim().is_empty();
                prop_assert!(
                    message.contains("invalid interface name") || (blank && message.contains("needs <bridge")),
                    "{}", message
                );
                prop_assert!(blank || check_ifname(bridge.trim()).is_err() || check_ifname(dev.trim()).is_err());
            }
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
            Ok(def) => {
                for name in [def.bridge.as_str(), def.forward_dev.as_deref().unwrap_or("x")] {
                    prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)), "{:?}", name);
                    prop_assert!((1..=15).contains(&name.len()));
                }
                for backend in [Backend::Nftables, Backend::Iptables] {
                    let fw = network_firewall(&def, backend).unwrap();
                    for group in fw.groups() {
                        for cmd in group.actions().iter().chain(group.rollbacks()) {
                            prop_assert!(
                                check_command(backend, cmd.layer(), cmd.args()).is_ok(),
                                "{:?}", cmd.args()
                            );
                        }
                    }
                }
            }
        }
    }
}

fn nested(depth: usize) -> String {
    format!("{}{}", "<x>".repeat(depth), "</x>".repeat(depth))
}

/// A definition at the definition limit is accepted, and its status file — one level deeper,
/// with the removal plan — parses: a network that starts can always be stopped.
#[test]
fn a_definition_at_the_limit_gives_a_status_file_that_parses() {
    let limit = Limits::DEFINITION.max_depth;
    let deep = |levels: usize| {
        definition("virbr9", "<forward mode='nat'/>").replace(
            "</network>",
            &format!("<description>{}</description>\n</network>", nested(levels)),
        )
    };
    // <network> is 1, <description> 2.
    let def = NetworkDef::from_xml(&deep(limit - 2), "net.xml").unwrap();
    let status = NetworkStatus {
        removal: Some({
            let mut fw = network_firewall(&def, Backend::Nftables).unwrap();
            fw.set_name(Some("fwRemoval"));
            fw
        }),
        def,
        created_bridge: true,
        netns: None,
    };
    let back = NetworkStatus::from_xml(&status.to_xml(), "status.xml").unwrap();
    assert_eq!(back.def.bridge, "virbr9");
    assert!(back.removal.is_some());
    // One level more is refused, naming the line.
    let (line, msg) = refusal(&deep(limit - 1));
    assert_eq!(line, 9);
    assert!(msg.contains("nest more than 64 deep"), "{msg}");
}
