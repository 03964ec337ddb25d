//! libvirt's network status file (`/run/libvirt/network/NAME.xml`, spec §4.3): the live
//! `<network>` and the removal plan `<firewall name='fwRemoval'>`, inside `<networkstatus>`.
//!
//! Using libvirt's format means a network started by libvirt ≥ 10.4 can be stopped by virtfw
//! from libvirt's status file and the other way round. virtfw adds one element libvirt ignores,
//! `<virtfw createdBridge='yes'/>`, to remember that the bridge is its own to delete.

use roxmltree::Document;
use virtfw::{Backend, Firewall};

use crate::def::NetworkDef;
use crate::error::{NetworkError, Result};
use crate::iptables;

/// The name libvirt gives the stored removal plan; a `<firewall>` with another name is not one.
pub const REMOVAL_NAME: &str = "fwRemoval";

/// A running network as recorded in its status file.
#[derive(Debug)]
pub struct NetworkStatus {
    pub def: NetworkDef,
    /// The stored removal plan, if the network was started with one.
    pub removal: Option<Firewall>,
    /// virtfw created the bridge at start (and deletes it at stop).
    pub created_bridge: bool,
    /// The network namespace (name under `/run/netns`) the network runs in, if not the
    /// caller's own; stop and status must run there too.
    pub netns: Option<String>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
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
            Some(plan) => {
                // A copy: applying consumes nothing, but the caller may want to keep `self`.
                Firewall::from_xml(&plan.to_xml(), "stored removal plan")
                    .expect("a plan we wrote reads back")
            }
            None => iptables::legacy_removal(&self.def),
        }
    }

    /// The status document, as libvirt writes it (2-space indentation), ending in a newline.
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<networkstatus>\n");
        // What libvirt writes for a network without QoS reservations.
        out.push_str("  <class_id bitmap='0-2'/>\n");
        out.push_str("  <floor sum='0'/>\n");
        if self.created_bridge || self.netns.is_some() {
            out.push_str("  <virtfw");
            if self.created_bridge {
                out.push_str(" createdBridge='yes'");
            }
            if let Some(ns) = &self.netns {
                out.push_str(&format!(" netns='{}'", escape(ns)));
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
        let doc = Document::parse(text).map_err(|e| NetworkError::Definition {
            source_name: source_name.to_string(),
            line: e.pos().row,
            column: e.pos().col,
            message: e.to_string(),
        })?;
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
        if root.has_tag_name("networkstatus") {
            if let Some(fwnode) = root.children().find(|c| c.has_tag_name("firewall")) {
                let fw = virtfw::xml::parse_firewall_element(fwnode, source_name)?;
                if fw.name() == Some(REMOVAL_NAME) {
                    removal = Some(fw);
                }
            }
            if let Some(own) = root.children().find(|c| c.has_tag_name("virtfw")) {
                created_bridge = own.attribute("createdBridge") == Some("yes");
                netns = own.attribute("netns").map(str::to_string);
            }
        }
        Ok(NetworkStatus {
            def,
            removal,
            created_bridge,
            netns,
        })
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
    fn status_without_fw_removal_uses_legacy_iptables() {
        let text = format!("<networkstatus>\n  <class_id bitmap='0-2'/>\n{NET}  <firewall name='other' backend='nftables'/>\n</networkstatus>\n");
        let status = NetworkStatus::from_xml(&text, "s.xml").unwrap();
        assert!(status.removal.is_none());
        assert_eq!(status.backend(), Backend::Iptables);
        let plan = status.removal_plan();
        assert_eq!(plan.backend(), Backend::Iptables);
        // checksum group, then 7 masquerade deletes + 2 filter + 11 general IPv4.
        assert_eq!(plan.groups()[0].actions().len(), 1);
        assert_eq!(plan.groups()[1].actions().len(), 18);
        let first = plan.groups()[1].actions()[0].args().join(" ");
        assert_eq!(first, "--table nat --delete LIBVIRT_PRT --source 192.168.122.0/24 --destination 224.0.0.0/24 --jump RETURN");
        let last = plan.groups()[1].actions()[17].args().join(" ");
        assert_eq!(last, "--table filter --delete LIBVIRT_INP --in-interface virbr0 --protocol tcp --destination-port 67 --jump ACCEPT");
    }

    #[test]
    fn bad_firewall_element_fails_the_file() {
        let text = format!("<networkstatus>\n{NET}<firewall name='fwRemoval'/>\n</networkstatus>");
        let err = NetworkStatus::from_xml(&text, "s.xml").unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
    }
}
