//! libvirt's network status file both ways (spec §4.3): a network started by libvirt ≥ 10.4
//! can be stopped by virtfw from libvirt's status file, and the status file virtfw writes
//! reads under libvirt's loading rules. Kernel parts run in throwaway network namespaces.

use roxmltree::Document;
use virtfw::netns::Netns;
use virtfw::{ApplyOptions, Backend, Firewall};
use virtfw_network::{global, nftables, start, stop, NetworkDef, NetworkStatus};

/// The chains of the ten rules libvirt (state 7) inserts for nat-default, in its removal
/// order: the creation order reversed (spec §4.3's example, handles 10 … 1).
const REMOVAL_CHAINS: [&str; 10] = [
    "guest_nat",
    "guest_nat",
    "guest_nat",
    "guest_nat",
    "guest_nat",
    "guest_input",
    "guest_output",
    "guest_cross",
    "guest_input",
    "guest_output",
];

/// The status file libvirt writes for the default network running with the nftables backend,
/// as its formatter lays it out (2-space indentation, single quotes, the live definition with
/// the elements libvirt adds: uuid, connections, stp/delay, mac, the NAT port range), with the
/// removal object's handles given in removal order.
fn libvirt_status(handles: &[u64]) -> String {
    let mut actions = String::new();
    for (chain, handle) in REMOVAL_CHAINS.iter().zip(handles) {
        actions.push_str(&format!(
            "      <action layer='ipv4'>
        <args>
          <item>delete</item>
          <item>rule</item>
          <item>ip</item>
          <item>libvirt_network</item>
          <item>{chain}</item>
          <item>handle</item>
          <item>{handle}</item>
        </args>
      </action>
"
        ));
    }
    format!(
        "<networkstatus>
  <class_id bitmap='0-2'/>
  <floor sum='0'/>
  <network connections='2'>
    <name>default</name>
    <uuid>6d2e7b58-1f3c-4b86-9a5e-0c4f2d1b7a93</uuid>
    <forward mode='nat'>
      <nat>
        <port start='1024' end='65535'/>
      </nat>
    </forward>
    <bridge name='virbr0' stp='on' delay='0'/>
    <mac address='52:54:00:3a:9c:41'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp>
        <range start='192.168.122.2' end='192.168.122.254'/>
      </dhcp>
    </ip>
  </network>
  <firewall name='fwRemoval' backend='nftables'>
    <group ignoreErrors='yes'>
{actions}    </group>
  </firewall>
</networkstatus>
"
    )
}

fn opts(per_command: bool) -> ApplyOptions<'static> {
    ApplyOptions::new().per_command(per_command)
}

fn ruleset(ns: &Netns) -> String {
    ns.run(&["nft", "-s", "list", "ruleset"]).unwrap()
}

#[test]
fn libvirt_status_file_parses() {
    let handles: Vec<u64> = (1..=10).rev().collect();
    let text = libvirt_status(&handles);
    let status = NetworkStatus::from_xml(&text, "default.xml").unwrap();
    assert_eq!(status.def.name, "default");
    assert_eq!(status.def.bridge, "virbr0");
    assert!(
        !status.created_bridge,
        "libvirt's status has no virtfw element"
    );
    assert_eq!(status.backend(), Backend::Nftables);
    let plan = status.removal_plan();
    assert_eq!(plan.name(), Some("fwRemoval"));
    assert_eq!(plan.groups().len(), 1);
    let cmds: Vec<String> = plan.groups()[0]
        .actions()
        .iter()
        .map(|c| c.args().join(" "))
        .collect();
    assert_eq!(
        cmds[0],
        "delete rule ip libvirt_network guest_nat handle 10"
    );
    assert_eq!(
        cmds[9],
        "delete rule ip libvirt_network guest_output handle 1"
    );
    assert!(plan.groups()[0].actions().iter().all(|c| c.ignore_errors()));
    // The plan is kept in libvirt's bytes: written back, it is the fixture's <firewall>.
    let start = text.find("  <firewall").unwrap();
    let end = text.find("</networkstatus>").unwrap();
    assert_eq!(plan.to_xml_indented(2), text[start..end]);
}

/// Apply the network's nftables rules as libvirt would (global setup, then the network's
/// auto-rollback transaction) and return the handles nft gave them, in removal order.
fn libvirt_like_start(ns: &Netns, def: &NetworkDef, per_command: bool) -> Vec<u64> {
    let exec = ns.executor().unwrap();
    // libvirt makes the bridge first (`iif virbr0` needs the interface).
    ns.run(&["ip", "link", "add", &def.bridge, "type", "bridge"])
        .unwrap();
    let mut fw = nftables::network_firewall(def).unwrap();
    fw.apply_with(&exec, opts(per_command)).unwrap();
    let removal = fw.new_from_rollback().unwrap();
    let cmds = removal.groups()[0].actions();
    let chains: Vec<&str> = cmds.iter().map(|c| c.args()[4].as_str()).collect();
    assert_eq!(
        chains, REMOVAL_CHAINS,
        "virtfw makes libvirt's rules, in its order"
    );
    cmds.iter()
        .map(|c| c.args().last().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn network_started_by_libvirt_is_stopped_from_its_status_file() {
    for per_command in [true, false] {
        let ns = Netns::new("vfnet-lvst").unwrap();
        let exec = ns.executor().unwrap();
        let setup = global::setup(Backend::Nftables, &exec, opts(per_command));
        assert!(setup.ipv4.is_ok() && setup.ipv6.is_ok(), "{setup:?}");
        let before = ruleset(&ns);

        // The definition as libvirt holds it, from its own status file.
        let def = NetworkStatus::from_xml(&libvirt_status(&[0; 10]), "default.xml")
            .unwrap()
            .def;
        let handles = libvirt_like_start(&ns, &def, per_command);
        let running = ruleset(&ns);
        assert_ne!(running, before);
        let text = libvirt_status(&handles);

        let status = NetworkStatus::from_xml(&text, "/run/libvirt/network/default.xml").unwrap();
        let rc = virtfw_network::check(&status, &exec).unwrap();
        assert!(rc.total == 10 && rc.all_present(), "{rc:?}");
        stop(&status, &exec, opts(per_command)).unwrap();
        assert_eq!(
            ruleset(&ns),
            before,
            "per_command={per_command}: stopping from libvirt's status left rules behind"
        );
    }
}

/// libvirt's loading rules, strictly (virnetworkobj.c): the definition is the first `network`
/// element anywhere; if the root is `networkstatus`, its first direct child `firewall` is the
/// removal object, used only when named `fwRemoval`, and parsed with libvirt's ParseXML rules.
fn read_like_libvirt(text: &str) -> (String, Option<Firewall>) {
    let doc = Document::parse(text).unwrap();
    let root = doc.root_element();
    assert!(root.has_tag_name("networkstatus"));
    let network = root
        .descendants()
        .find(|n| n.has_tag_name("network"))
        .expect("a <network>");
    let name = network
        .children()
        .find(|n| n.has_tag_name("name"))
        .and_then(|n| n.text())
        .expect("a <name>")
        .to_string();
    let firewall = root
        .children()
        .find(|n| n.has_tag_name("firewall"))
        .filter(|n| n.attribute("name") == Some("fwRemoval"))
        .map(|n| virtfw::xml::parse_firewall_at(text, n.range().start, "status").unwrap());
    (name, firewall)
}

#[test]
fn status_written_by_virtfw_reads_under_libvirts_rules() {
    for backend in [Backend::Nftables, Backend::Iptables] {
        let ns = Netns::new("vfnet-lvrd").unwrap();
        let exec = ns.executor().unwrap();
        let setup = global::setup(backend, &exec, opts(false));
        assert!(setup.ipv4.is_ok() && setup.ipv6.is_ok(), "{setup:?}");
        let before = ruleset(&ns);
        let def = NetworkStatus::from_xml(&libvirt_status(&[0; 10]), "default.xml")
            .unwrap()
            .def;
        let status = start(def, backend, &exec, opts(false)).unwrap();
        let text = status.to_xml();
        let (name, plan) = read_like_libvirt(&text);
        assert_eq!(
            name, "default",
            "{backend}: the first <network> is the definition"
        );
        let mut plan =
            plan.unwrap_or_else(|| panic!("{backend}: no fwRemoval for libvirt:\n{text}"));
        assert_eq!(plan.backend(), backend);
        assert_eq!(
            plan.to_xml(),
            status.removal.as_ref().unwrap().to_xml(),
            "{backend}: libvirt reads the plan virtfw stored"
        );
        // What libvirt would run at stop removes every rule of the network.
        assert_ne!(ruleset(&ns), before);
        plan.apply(&exec).unwrap();
        assert_eq!(
            ruleset(&ns),
            before,
            "{backend}: libvirt's removal from virtfw's status left rules behind"
        );
    }
}
