//! libvirt's network status file (`/run/libvirt/network/NAME.xml`, spec §4.3): the live
//! `<network>` and the removal plan `<firewall name='fwRemoval'>`, inside `<networkstatus>`.
//!
//! Using libvirt's format means a network started by libvirt ≥ 10.4 can be stopped by virtfw
//! from libvirt's status file and the other way round. virtfw adds one element libvirt ignores,
//! `<virtfw createdBridge='yes' netns='NS' bootId='…' netnsId='…'/>`: whether the bridge is its
//! own to delete, the namespace the network runs in, and the identity of the kernel state the
//! rules live in (see [`StatusIdentity`]).

use crate::def::parse_document_with;
use virtfw::xml::Limits;
use virtfw::{Backend, Firewall};

use crate::def::NetworkDef;
use crate::error::{NetworkError, Result};
use crate::iptables;

/// The name libvirt gives the stored removal plan; a `<firewall>` with another name is not one.
pub const REMOVAL_NAME: &str = "fwRemoval";

/// A running network as recorded in its status file.
#[derive(Debug)]
pub struct NetworkStatus {
    /// The definition the network was started from (libvirt keeps it in the status file).
    pub def: NetworkDef,
    /// The stored removal plan, if the network was started with one.
    pub removal: Option<Firewall>,
    /// virtfw created the bridge at start (and deletes it at stop).
    pub created_bridge: bool,
    /// The network namespace (name under `/run/netns`) the network runs in, if not the
    /// caller's own; stop and status must run there too.
    pub netns: Option<String>,
}

/// Which kernel state a status file describes: the boot it was written in and the identity
/// of the network namespace its rules were made in (as the caller measures it, e.g. the nsfs
/// inode). Its removal plan names objects by handle, and handles are reused by a re-created
/// namespace or after a reboot: a status whose identity no longer matches is stale and must not
/// be run. libvirt's status files carry none (libvirt keeps them under /run, which a reboot
/// clears).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusIdentity {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`); empty if unknown.
    pub boot_id: String,
    /// The network namespace's identity; empty if unknown.
    pub netns_id: String,
}

/// An attribute value, escaped as the engine escapes its documents (what an XML parser would
/// normalise, such as a TAB or LF in a namespace path, is written as a character reference).
fn escape(s: &str) -> String {
    virtfw::xml::escape(s, true)
}

/// Indent the lines of an element's source text by two spaces relative to its closing line,
/// so reading and writing a status file again and again does not drift.
fn reindent(xml: &str, pad: &str) -> String {
    let lines: Vec<&str> = xml.lines().collect();
    let base = lines
        .last()
        .filter(|_| lines.len() > 1)
        .map(|l| l.len() - l.trim_start().len())
        .unwrap_or(0);
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let strip = if i == 0 {
            0
        } else {
            let lead = line.len() - line.trim_start().len();
            lead.min(base)
        };
        out.push_str(pad);
        out.push_str(&line[strip..]);
        out.push('\n');
    }
    out
}

impl NetworkStatus {
    /// The backend the network's rules were made with (the legacy path is iptables).
    pub fn backend(&self) -> Backend {
        self.removal
            .as_ref()
            .map_or(Backend::Iptables, Firewall::backend)
    }

    /// The plan that removes the network's rules: the stored one, or, for a network started
    /// without one (libvirt ≤ 10.3), libvirt's legacy iptables deletions.
    pub fn removal_plan(&self) -> Firewall {
        match &self.removal {
            // A copy: applying records state in the firewall, and the caller keeps `self`.
            Some(plan) => plan.clone_plain(),
            None => iptables::legacy_removal(&self.def),
        }
    }

    /// The status document, as libvirt writes it (2-space indentation), ending in a newline,
    /// without an identity (see [`NetworkStatus::to_xml_stamped`]).
    pub fn to_xml(&self) -> String {
        self.to_xml_with(None)
    }

    /// [`NetworkStatus::to_xml`], stamped with the identity of the kernel state its rules
    /// live in: what virtfw stores for a network it started.
    pub fn to_xml_stamped(&self, identity: &StatusIdentity) -> String {
        self.to_xml_with(Some(identity))
    }

    fn to_xml_with(&self, identity: Option<&StatusIdentity>) -> String {
        let mut out = String::from("<networkstatus>\n");
        // What libvirt writes for a network without QoS reservations.
        out.push_str("  <class_id bitmap='0-2'/>\n");
        out.push_str("  <floor sum='0'/>\n");
        if self.created_bridge || self.netns.is_some() || identity.is_some() {
            out.push_str("  <virtfw");
            if self.created_bridge {
                out.push_str(" createdBridge='yes'");
            }
            if let Some(ns) = &self.netns {
                out.push_str(&format!(" netns='{}'", escape(ns)));
            }
            if let Some(id) = identity {
                out.push_str(&format!(
                    " bootId='{}' netnsId='{}'",
                    escape(&id.boot_id),
                    escape(&id.netns_id)
                ));
            }
            out.push_str("/>\n");
        }
        out.push_str(&reindent(&self.def.xml, "  "));
        if let Some(plan) = &self.removal {
            out.push_str(&plan.to_xml_indented(2));
        }
        out.push_str("</networkstatus>\n");
        out
    }

    /// Read a status file. Like libvirt: the definition is the first `<network>` anywhere; the
    /// removal plan is the first `<firewall>` child of `<networkstatus>`, used only when named
    /// `fwRemoval`; an invalid `<firewall>` makes the whole file fail.
    pub fn from_xml(text: &str, source_name: &str) -> Result<Self> {
        Self::from_xml_stamped(text, source_name).map(|(status, _)| status)
    }

    /// [`NetworkStatus::from_xml`], with the identity the file was stamped with: `None` for a
    /// file without one (libvirt's, or one written before virtfw recorded it). A file with
    /// only one of the two attributes has an identity with the other one empty, which matches
    /// no kernel state.
    pub fn from_xml_stamped(
        text: &str,
        source_name: &str,
    ) -> Result<(Self, Option<StatusIdentity>)> {
        let doc = parse_document_with(text, Limits::DOCUMENT)
            .map_err(|e| NetworkError::syntax(source_name, e))?;
        let root = doc.root_element();
        let netnode = root
            .descendants()
            .find(|n| n.has_tag_name("network"))
            .ok_or_else(|| {
                NetworkError::at(
                    source_name,
                    doc.text_pos_at(root.range().start),
                    "status file has no <network> element",
                )
            })?;
        let def = NetworkDef::from_node(netnode, text, source_name)?;
        let mut removal = None;
        let mut created_bridge = false;
        let mut netns = None;
        let mut identity = None;
        if root.has_tag_name("networkstatus") {
            if let Some(fwnode) = root.children().find(|c| c.has_tag_name("firewall")) {
                let fw = virtfw::xml::parse_firewall_at(text, fwnode.range().start, source_name)?;
                if fw.name() == Some(REMOVAL_NAME) {
                    removal = Some(fw);
                }
            }
            if let Some(own) = root.children().find(|c| c.has_tag_name("virtfw")) {
                created_bridge = own.attribute("createdBridge") == Some("yes");
                netns = own.attribute("netns").map(str::to_string);
                let (boot, ns) = (own.attribute("bootId"), own.attribute("netnsId"));
                if boot.is_some() || ns.is_some() {
                    identity = Some(StatusIdentity {
                        boot_id: boot.unwrap_or_default().to_string(),
                        netns_id: ns.unwrap_or_default().to_string(),
                    });
                }
            }
        }
        let status = NetworkStatus {
            def,
            removal,
            created_bridge,
            netns,
        };
        Ok((status, identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtfw::{FakeExecutor, TransactionFlags};

    const NET: &str = "<network>\n  <name>default</name>\n  <bridge name=\"virbr0\"/>\n  <forward/>\n  <ip address=\"192.168.122.1\" netmask=\"255.255.255.0\">\n    <dhcp>\n      <range start=\"192.168.122.2\" end=\"192.168.122.254\"/>\n    </dhcp>\n  </ip>\n</network>\n";

    #[test]
    fn round_trip_keeps_plan_and_definition() {
        let def = NetworkDef::from_xml(NET, "net.xml").unwrap();
        let mut fw = crate::nftables::network_firewall(&def).unwrap();
        fw.apply(&FakeExecutor::new()).unwrap();
        let mut removal = fw.new_from_rollback().unwrap();
        removal.set_name(Some(REMOVAL_NAME));
        let status = NetworkStatus {
            def,
            removal: Some(removal),
            created_bridge: true,
            netns: Some("ns-1".into()),
        };
        let text = status.to_xml();
        assert!(text.starts_with("<networkstatus>\n  <class_id"));
        assert!(
            text.contains("\n  <network>\n    <name>default</name>\n"),
            "{text}"
        );
        assert!(text.contains(
            "\n  <firewall name='fwRemoval' backend='nftables'>\n    <group ignoreErrors='yes'>\n"
        ));
        let back = NetworkStatus::from_xml(&text, "status.xml").unwrap();
        assert_eq!(back.to_xml(), text, "stable across a round trip");
        assert!(back.created_bridge);
        assert_eq!(back.netns.as_deref(), Some("ns-1"));
        assert_eq!(back.backend(), Backend::Nftables);
        let plan = back.removal_plan();
        assert_eq!(plan.command_count(), 10);
        assert!(plan.groups()[0]
            .flags()
            .contains(TransactionFlags::IGNORE_ERRORS));
        assert_eq!(
            plan.groups()[0].actions()[0].args().join(" "),
            "delete rule ip libvirt_network guest_nat handle 10"
        );
    }

    #[test]
    fn identity_round_trips_and_is_absent_from_unstamped_files() {
        let def = NetworkDef::from_xml(NET, "net.xml").unwrap();
        let status = NetworkStatus {
            def,
            removal: None,
            created_bridge: false,
            netns: None,
        };
        let plain = status.to_xml();
        assert!(!plain.contains("<virtfw"), "{plain}");
        assert_eq!(
            NetworkStatus::from_xml_stamped(&plain, "s").unwrap().1,
            None
        );
        let id = StatusIdentity {
            boot_id: "b-1".into(),
            netns_id: "4:4026531840'<".into(),
        };
        let stamped = status.to_xml_stamped(&id);
        assert!(
            stamped.contains("  <virtfw bootId='b-1' netnsId='4:4026531840&apos;&lt;'/>\n"),
            "{stamped}"
        );
        let (back, got) = NetworkStatus::from_xml_stamped(&stamped, "s").unwrap();
        assert_eq!(got.as_ref(), Some(&id));
        assert_eq!(
            back.to_xml_stamped(&id),
            stamped,
            "stable across a round trip"
        );
        // Half an identity is still one (and matches nothing).
        let half = stamped.replace(" netnsId='4:4026531840&apos;&lt;'", "");
        let got = NetworkStatus::from_xml_stamped(&half, "s")
            .unwrap()
            .1
            .unwrap();
        assert_eq!((got.boot_id.as_str(), got.netns_id.as_str()), ("b-1", ""));
    }

    /// Every command of `plan`, group by group, as `layer: args`.
    fn plan_lines(plan: &Firewall) -> Vec<Vec<String>> {
        plan.groups()
            .iter()
            .map(|g| {
                g.actions()
                    .iter()
                    .map(|c| format!("{}: {}", c.layer(), c.args().join(" ")))
                    .collect()
            })
            .collect()
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn status_without_fw_removal_uses_legacy_iptables() {
        // nat-tftp: one IPv4 address with DHCP and a TFTP root, NAT, virbr0.
        let tftp = NET.replace("<dhcp>", "<tftp root='/srv/tftp'/>\n    <dhcp>");
        let text = format!("<networkstatus>\n  <class_id bitmap='0-2'/>\n{tftp}  <firewall name='other' backend='nftables'/>\n</networkstatus>\n");
        let status = NetworkStatus::from_xml(&text, "s.xml").unwrap();
        assert!(status.removal.is_none());
        assert_eq!(status.backend(), Backend::Iptables);
        let plan = status.removal_plan();
        assert_eq!(plan.backend(), Backend::Iptables);
        assert!(plan
            .groups()
            .iter()
            .all(|g| g.flags() == TransactionFlags::IGNORE_ERRORS));
        // Spec §5.2.7, written out: T1 the checksum delete; T2 the masquerade set 7..1, then
        // the general IPv4 deletes FWX, FWI-reject, FWO-reject, TFTP INP/OUT, INP udp/tcp 53,
        // OUT udp/tcp 53, OUT udp/tcp 68, INP udp/tcp 67. 1 + 7 + 13 commands.
        let t1 = lines(
            "ipv4: --table mangle --delete LIBVIRT_PRT --out-interface virbr0 --protocol udp --destination-port 68 --jump CHECKSUM --checksum-fill",
        );
        let t2 = lines(
            "
            ipv4: --table nat --delete LIBVIRT_PRT --source 192.168.122.0/24 --destination 224.0.0.0/24 --jump RETURN
            ipv4: --table nat --delete LIBVIRT_PRT --source 192.168.122.0/24 --destination 255.255.255.255/32 --jump RETURN
            ipv4: --table nat --delete LIBVIRT_PRT --source 192.168.122.0/24 -p tcp ! --destination 192.168.122.0/24 --jump MASQUERADE --to-ports 1024-65535
            ipv4: --table nat --delete LIBVIRT_PRT --source 192.168.122.0/24 -p udp ! --destination 192.168.122.0/24 --jump MASQUERADE --to-ports 1024-65535
            ipv4: --table nat --delete LIBVIRT_PRT --source 192.168.122.0/24 ! --destination 192.168.122.0/24 --jump MASQUERADE
            ipv4: --table filter --delete LIBVIRT_FWI --destination 192.168.122.0/24 --out-interface virbr0 --match conntrack --ctstate ESTABLISHED,RELATED --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_FWO --source 192.168.122.0/24 --in-interface virbr0 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_FWX --in-interface virbr0 --out-interface virbr0 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_FWI --out-interface virbr0 --jump REJECT
            ipv4: --table filter --delete LIBVIRT_FWO --in-interface virbr0 --jump REJECT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr0 --protocol udp --destination-port 69 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr0 --protocol udp --destination-port 69 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr0 --protocol udp --destination-port 53 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr0 --protocol tcp --destination-port 53 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr0 --protocol udp --destination-port 53 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr0 --protocol tcp --destination-port 53 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr0 --protocol udp --destination-port 68 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr0 --protocol tcp --destination-port 68 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr0 --protocol udp --destination-port 67 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr0 --protocol tcp --destination-port 67 --jump ACCEPT
            ",
        );
        assert_eq!(plan_lines(&plan), [t1, t2]);
    }

    #[test]
    fn legacy_removal_of_a_routed_ipv6_network() {
        // No IPv4 at all: no checksum rule, but the general IPv4 deletes still run (libvirt
        // creates those rules for every network), then the IPv6 ones.
        let def = NetworkDef::from_xml(
            "<network><name>v6</name><bridge name='virbr1'/><forward mode='route'/>\
             <ip family='ipv6' address='2001:db8:1::1' prefix='64'/></network>",
            "v6.xml",
        )
        .unwrap();
        let plan = iptables::legacy_removal(&def);
        let t2 = lines(
            "
            ipv6: --table filter --delete LIBVIRT_FWI --destination 2001:db8:1::/64 --out-interface virbr1 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_FWO --source 2001:db8:1::/64 --in-interface virbr1 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_FWX --in-interface virbr1 --out-interface virbr1 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_FWI --out-interface virbr1 --jump REJECT
            ipv4: --table filter --delete LIBVIRT_FWO --in-interface virbr1 --jump REJECT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr1 --protocol udp --destination-port 53 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr1 --protocol tcp --destination-port 53 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr1 --protocol udp --destination-port 53 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr1 --protocol tcp --destination-port 53 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr1 --protocol udp --destination-port 68 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_OUT --out-interface virbr1 --protocol tcp --destination-port 68 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr1 --protocol udp --destination-port 67 --jump ACCEPT
            ipv4: --table filter --delete LIBVIRT_INP --in-interface virbr1 --protocol tcp --destination-port 67 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_OUT --out-interface virbr1 --protocol udp --destination-port 546 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_INP --in-interface virbr1 --protocol udp --destination-port 547 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_OUT --out-interface virbr1 --protocol udp --destination-port 53 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_OUT --out-interface virbr1 --protocol tcp --destination-port 53 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_INP --in-interface virbr1 --protocol udp --destination-port 53 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_INP --in-interface virbr1 --protocol tcp --destination-port 53 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_FWX --in-interface virbr1 --out-interface virbr1 --jump ACCEPT
            ipv6: --table filter --delete LIBVIRT_FWI --out-interface virbr1 --jump REJECT
            ipv6: --table filter --delete LIBVIRT_FWO --in-interface virbr1 --jump REJECT
            ",
        );
        assert_eq!(plan_lines(&plan), [vec![], t2]);
    }

    #[test]
    fn removal_plan_is_a_copy_of_the_stored_one() {
        let mut fw = Firewall::new(Backend::Nftables);
        fw.set_name(Some(REMOVAL_NAME));
        fw.start_transaction(TransactionFlags::IGNORE_ERRORS);
        fw.add_cmd(
            virtfw::Layer::Ipv4,
            ["delete", "table", "ip", "handle", "7"],
        );
        let status = NetworkStatus {
            def: NetworkDef::from_xml(NET, "net.xml").unwrap(),
            removal: Some(fw),
            created_bridge: false,
            netns: None,
        };
        let copy = status.removal_plan();
        assert_eq!(copy.to_xml(), status.removal.as_ref().unwrap().to_xml());
    }

    #[test]
    fn bad_firewall_element_fails_the_file() {
        let text = format!("<networkstatus>\n{NET}<firewall name='fwRemoval'/>\n</networkstatus>");
        let err = NetworkStatus::from_xml(&text, "s.xml").unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
    }
}
