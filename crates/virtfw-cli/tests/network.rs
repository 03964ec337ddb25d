//! `virtfw network …` end to end: the real binary, a throwaway state directory and a throwaway
//! network namespace per test (never the host's ruleset).

use std::path::Path;
use std::process::{Command, Output};

use virtfw::netns::Netns;

const NAT_NET: &str = "<network>
  <name>clinet</name>
  <bridge name='vfbr0'/>
  <forward mode='nat'/>
  <ip address='192.168.123.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.123.2' end='192.168.123.254'/></dhcp>
  </ip>
  <ip family='ipv6' address='2001:db8:123::1' prefix='64'/>
</network>
";

fn virtfw(state: &Path, netns: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_virtfw"));
    cmd.arg("--state-dir").arg(state);
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    cmd.env("VIRTFW_NETWORK_CONF", state.join("no-network.conf"));
    cmd.args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn has_link(ns: &Netns, name: &str) -> bool {
    ns.run(&["ip", "link", "show", "dev", name]).is_ok()
}

#[test]
fn start_status_stop_in_a_netns() {
    for backend in ["nftables", "iptables"] {
        let ns = Netns::new("vfcli-net").unwrap();
        let state = tempfile::tempdir().unwrap();
        let file = state.path().join("clinet.xml");
        std::fs::write(&file, NAT_NET).unwrap();
        let file = file.to_str().unwrap();

        let out = virtfw(
            state.path(),
            Some(ns.name()),
            &["network", "start", file, "--backend", backend],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(has_link(&ns, "vfbr0"));
        let status_file = state.path().join("networks/clinet.xml");
        let stored = std::fs::read_to_string(&status_file).unwrap();
        assert!(stored.starts_with("<networkstatus>"), "{stored}");
        assert!(stored.contains(&format!("<firewall name='fwRemoval' backend='{backend}'>")));

        // The status file remembers the namespace: no --netns needed from here on.
        let out = virtfw(
            state.path(),
            None,
            &["--json", "network", "status", "clinet"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["all_present"], true, "{v}");
        assert_eq!(v["backend"], backend);
        assert!(v["rules_total"].as_u64().unwrap() > 10);

        let out = virtfw(state.path(), None, &["network", "list"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("clinet"),
            "{}",
            text(&out)
        );

        // Starting it twice is refused (state problem), and changes nothing.
        let out = virtfw(
            state.path(),
            Some(ns.name()),
            &["network", "start", file, "--backend", backend],
        );
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));

        // Drift: flush the NAT rules behind virtfw's back; status says so with exit 3.
        let flush: Vec<&str> = if backend == "nftables" {
            vec![
                "nft",
                "flush",
                "chain",
                "ip",
                "libvirt_network",
                "guest_nat",
            ]
        } else {
            vec!["iptables", "-w", "-t", "nat", "-F", "LIBVIRT_PRT"]
        };
        ns.run(&flush).unwrap();
        let out = virtfw(state.path(), None, &["network", "status", "clinet"]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        let out = virtfw(state.path(), None, &["network", "reload", "clinet"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let out = virtfw(state.path(), None, &["network", "status", "clinet"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));

        let out = virtfw(state.path(), None, &["network", "stop", "clinet"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        assert!(!status_file.exists());
        assert!(!has_link(&ns, "vfbr0"), "the bridge virtfw made is deleted");
        let rules = if backend == "nftables" {
            ns.run(&["nft", "-a", "list", "ruleset"]).unwrap()
        } else {
            ns.run(&["iptables-save"]).unwrap() + &ns.run(&["ip6tables-save"]).unwrap()
        };
        assert!(
            !rules.contains("vfbr0") && !rules.contains("192.168.123"),
            "{rules}"
        );

        let out = virtfw(state.path(), None, &["network", "stop", "clinet"]);
        assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    }
}

#[test]
fn malformed_xml_exits_2_and_changes_nothing() {
    let ns = Netns::new("vfcli-bad").unwrap();
    let state = tempfile::tempdir().unwrap();
    let cases = [
        ("prefix", "<network>\n<name>bad</name>\n<bridge name='vfbad0'/>\n<forward/>\n<ip address='10.9.0.1' prefix='40'/>\n</network>\n", "5:1: Invalid prefix or netmask for 'vfbad0'"),
        ("ports", "<network>\n<name>bad</name>\n<bridge name='vfbad0'/>\n<forward mode='nat'>\n<nat><port start='2000' end='100'/></nat>\n</forward>\n<ip address='10.9.0.1' prefix='24'/>\n</network>\n", "5:6: Invalid port range '2000-100'."),
        ("syntax", "<network>\n<name>bad</name>\n<bridge name='vfbad0'>\n</network>\n", ":4:"),
        ("mode", "<network>\n<name>bad</name>\n<bridge name='vfbad0'/>\n<forward mode='bridge'/>\n</network>\n", "4:1: unsupported <forward mode='bridge'>"),
        ("bridge", "<network>\n<name>bad</name>\n<forward/>\n<ip address='10.9.0.1' prefix='24'/>\n</network>\n", "needs <bridge name="),
    ];
    let before = ns.run(&["nft", "list", "ruleset"]).unwrap();
    for (what, xml, message) in cases {
        let file = state.path().join(format!("{what}.xml"));
        std::fs::write(&file, xml).unwrap();
        let out = virtfw(
            state.path(),
            Some(ns.name()),
            &[
                "network",
                "start",
                file.to_str().unwrap(),
                "--backend",
                "nftables",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{what}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(file.to_str().unwrap()) && stderr.contains(message),
            "{what}: {stderr}"
        );
        assert_eq!(
            ns.run(&["nft", "list", "ruleset"]).unwrap(),
            before,
            "{what}: ruleset changed"
        );
        assert!(!has_link(&ns, "vfbad0"), "{what}: bridge left behind");
        assert!(!state.path().join("networks/bad.xml").exists());
    }
}

#[test]
fn plan_prints_libvirts_transcript() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("clinet.xml");
    std::fs::write(&file, NAT_NET).unwrap();
    let out = virtfw(
        state.path(),
        None,
        &[
            "network",
            "plan",
            file.to_str().unwrap(),
            "--backend",
            "iptables",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(
            "iptables \\\n-w \\\n--table filter \\\n--insert LIBVIRT_INP \\\n--in-interface vfbr0"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("--jump MASQUERADE \\\n--to-ports 1024-65535\n"));
    // Nothing ran: no state was written.
    assert!(!state.path().join("networks").exists());
}
