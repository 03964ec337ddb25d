//! libvirt's `<network>` definition: the part of it that decides the firewall.
//!
//! Only what changes rules (or the bridge virtfw manages) is kept; every other element is
//! accepted and ignored, so any definition libvirt accepts for a virtual network reads here.
//! Values are checked while parsing and each error names the element and its line, so a bad
//! file is refused before anything touches the host.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use roxmltree::Node;
use virtfw::xml::{Limits, SyntaxError};

use crate::error::{NetworkError, Result};

/// The `<forward mode>` of a network. Only the first four are virtual networks with a bridge
/// of their own; the others attach guests to host devices and never get firewall rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    /// No `<forward>` element: an isolated network.
    None,
    /// `nat`: guests reach outside through masquerading (libvirt's default network).
    Nat,
    /// `route`: guests' addresses are routed outside unchanged.
    Route,
    /// A routed network whose firewall is left entirely to the administrator.
    Open,
    /// `bridge`: guests join an existing host bridge (no rules).
    Bridge,
    /// `private` (macvtap; no rules).
    Private,
    /// `vepa` (macvtap; no rules).
    Vepa,
    /// `passthrough` (macvtap; no rules).
    Passthrough,
    /// `hostdev` (SR-IOV devices; no rules).
    Hostdev,
}

impl ForwardMode {
    /// The attribute value libvirt uses (`none` for an absent `<forward>`).
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardMode::None => "none",
            ForwardMode::Nat => "nat",
            ForwardMode::Route => "route",
            ForwardMode::Open => "open",
            ForwardMode::Bridge => "bridge",
            ForwardMode::Private => "private",
            ForwardMode::Vepa => "vepa",
            ForwardMode::Passthrough => "passthrough",
            ForwardMode::Hostdev => "hostdev",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "nat" => ForwardMode::Nat,
            "route" => ForwardMode::Route,
            "open" => ForwardMode::Open,
            "bridge" => ForwardMode::Bridge,
            "private" => ForwardMode::Private,
            "vepa" => ForwardMode::Vepa,
            "passthrough" => ForwardMode::Passthrough,
            "hostdev" => ForwardMode::Hostdev,
            _ => return None,
        })
    }

    /// Does libvirt build a bridge and firewall rules for this mode (isolated, nat, route,
    /// open)?
    pub fn is_virtual(self) -> bool {
        matches!(
            self,
            ForwardMode::None | ForwardMode::Nat | ForwardMode::Route | ForwardMode::Open
        )
    }

    /// Does this mode get firewall rules (isolated, nat, route — not open)?
    pub fn has_rules(self) -> bool {
        matches!(
            self,
            ForwardMode::None | ForwardMode::Nat | ForwardMode::Route
        )
    }
}

/// `<forward><nat>`: what guests' traffic is rewritten to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatDef {
    /// `<nat ipv6='yes'>`: masquerade IPv6 too (otherwise IPv6 is routed).
    pub ipv6: bool,
    /// `<address start end>`: SNAT to this address (range) instead of masquerading.
    pub address_start: Option<IpAddr>,
    /// The end of that range (`None`: a single address).
    pub address_end: Option<IpAddr>,
    /// `<port start end>` as written; both 0 (absent) means libvirt's default 1024-65535.
    pub port_start: u32,
    /// The end of the port range.
    pub port_end: u32,
}

impl NatDef {
    /// The source port range for udp/tcp masquerading: libvirt replaces 0/0 by 1024/65535
    /// (keeping guests off the "privileged" ports some services trust), then requires
    /// `start < end < 65536`.
    pub fn port_range(&self) -> Result<(u32, u32)> {
        let (start, end) = if self.port_start == 0 && self.port_end == 0 {
            (1024, 65535)
        } else {
            (self.port_start, self.port_end)
        };
        if start < end && end < 65536 {
            Ok((start, end))
        } else {
            Err(NetworkError::Rules(format!(
                "Invalid port range '{start}-{end}'."
            )))
        }
    }
}

/// One `<ip>` of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpDef {
    /// The host's address on the bridge with the network's prefix (`192.168.122.1/24`).
    pub address: IpNet,
    /// DHCP ranges or hosts are configured (an empty `<dhcp/>` does not count).
    pub dhcp: bool,
    /// `<tftp root>`.
    pub tftp_root: Option<String>,
}

impl IpDef {
    /// Whether this is an IPv4 `<ip>`.
    pub fn is_ipv4(&self) -> bool {
        matches!(self.address, IpNet::V4(_))
    }
    /// Whether this is an IPv6 `<ip>`.
    pub fn is_ipv6(&self) -> bool {
        matches!(self.address, IpNet::V6(_))
    }
    /// The network with host bits cleared, e.g. `192.168.122.0/24` (libvirt's `NET/P`).
    pub fn network(&self) -> IpNet {
        self.address.trunc()
    }
}

/// A parsed `<network>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDef {
    /// `<name>`: names the status file too.
    pub name: String,
    /// `<bridge name>`; required for every virtual mode (virtfw does not invent names).
    pub bridge: String,
    /// `<forward mode>`.
    pub forward: ForwardMode,
    /// `<forward dev>` or the first `<forward><interface dev>`: the upstream device rules are
    /// restricted to.
    pub forward_dev: Option<String>,
    /// `<forward><nat>`: the NAT address and port ranges.
    pub nat: NatDef,
    /// Every `<ip>`, in document order (libvirt's rules follow it).
    pub ips: Vec<IpDef>,
    /// `<network ipv6='yes'>`: IPv6 between guests even without an IPv6 address.
    pub ipv6: bool,
    /// `<dns enable>` (does not change the rules: libvirt opens DNS either way).
    pub dns_enabled: Option<bool>,
    /// The `<network>` element as written, kept to store it in the status file unchanged.
    pub xml: String,
}

/// Parse `text` within `limits` (checked first by the engine's one check: roxmltree recurses),
/// with the position of a syntax error.
pub(crate) fn parse_document_with(
    text: &str,
    limits: Limits,
) -> std::result::Result<roxmltree::Document<'_>, SyntaxError> {
    virtfw::xml::check_limits(text, limits)?;
    roxmltree::Document::parse(text).map_err(|e| SyntaxError {
        line: e.pos().row,
        column: e.pos().col,
        message: e.to_string(),
    })
}

impl NetworkDef {
    /// Parse a document whose root is `<network>`; `source_name` prefixes errors.
    pub fn from_xml(text: &str, source_name: &str) -> Result<Self> {
        let doc = parse_document_with(text, Limits::DEFINITION)
            .map_err(|e| NetworkError::syntax(source_name, e))?;
        let root = doc.root_element();
        if !root.has_tag_name("network") {
            return Err(NetworkError::at(
                source_name,
                doc.text_pos_at(root.range().start),
                format!(
                    "expected a <network> element, found <{}>",
                    root.tag_name().name()
                ),
            ));
        }
        Self::from_node(root, text, source_name)
    }

    /// Parse a `<network>` element inside a larger document (`text` is that document's text).
    pub fn from_node(node: Node, text: &str, source_name: &str) -> Result<Self> {
        Parser { source_name }.network(node, text)
    }

    /// True if the network has an `<ip>` of family IPv4.
    pub fn has_ipv4(&self) -> bool {
        self.ips.iter().any(IpDef::is_ipv4)
    }

    /// True if the network has an `<ip>` of family IPv6.
    pub fn has_ipv6(&self) -> bool {
        self.ips.iter().any(IpDef::is_ipv6)
    }

    /// Does the network need the IPv6 firewall (an IPv6 address, or `ipv6='yes'`)?
    pub fn needs_ipv6_rules(&self) -> bool {
        self.has_ipv6() || self.ipv6
    }

    /// libvirt's "first IPv4 `<ip>` with DHCP or TFTP" (it decides the TFTP rules).
    pub fn first_ipv4_dhcp_or_tftp(&self) -> Option<&IpDef> {
        self.ips
            .iter()
            .find(|ip| ip.is_ipv4() && (ip.dhcp || ip.tftp_root.is_some()))
    }

    /// libvirt's "first IPv4 `<ip>` with DHCP ranges or hosts" (it decides the checksum rule).
    pub fn first_ipv4_dhcp(&self) -> Option<&IpDef> {
        self.ips.iter().find(|ip| ip.is_ipv4() && ip.dhcp)
    }
}

struct Parser<'s> {
    source_name: &'s str,
}

fn pos(node: Node) -> roxmltree::TextPos {
    node.document().text_pos_at(node.range().start)
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

/// Whether `name` is an interface name the kernel accepts that also stays one word of an nft
/// or iptables command; `Err` says what is wrong.
///
/// The kernel's rules (`dev_valid_name`): 1 to 15 bytes (`IFNAMSIZ` with its NUL), not `.` or
/// `..`, no `/`, `:` or whitespace. Interface names go unquoted into nft and iptables argv
/// (`iif virbr0`, `-o eth0`), and nft joins its argv into text, so any character with a meaning
/// there must be refused as well: `<forward dev='lo accept ; flush ruleset #'/>` once wiped a
/// namespace's whole ruleset, and a bridge `lo#` made rules without their verdict. So only
/// ASCII letters, digits, `_`, `-` and `.` are accepted (what real names use: `virbr0`,
/// `br-lan`, `eth0.100`), not as the first character `-` (read as an option). This also keeps
/// out `*` and `+` (nft and iptables wildcards), `@` and `$` (nft set and variable
/// references), quotes, braces, `;`, `#` and `\`.
pub fn check_ifname(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("an interface name has 1 to 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("'.' and '..' are not interface names");
    }
    if name.starts_with('-') {
        return Err("an interface name must not start with '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(
            "only ASCII letters, digits, '_', '-' and '.' are accepted: the name goes into nft and iptables commands as one word",
        );
    }
    Ok(())
}

impl Parser<'_> {
    /// Check the interface name `value` of attribute `dev` of `node` (`<element>`).
    fn ifname(&self, node: Node, element: &str, value: &str) -> Result<()> {
        check_ifname(value).map_err(|why| {
            self.err(
                node,
                format!(
                    "invalid interface name {value:?} in attribute 'dev' of <{element}>: {why}"
                ),
            )
        })
    }

    fn err(&self, node: Node, message: impl Into<String>) -> NetworkError {
        NetworkError::at(self.source_name, pos(node), message)
    }

    fn yes_no(&self, node: Node, attr: &str) -> Result<Option<bool>> {
        match node.attribute(attr) {
            None => Ok(None),
            Some("yes") => Ok(Some(true)),
            Some("no") => Ok(Some(false)),
            Some(other) => Err(self.err(
                node,
                format!(
                    "invalid value '{other}' for attribute '{attr}' of <{}> (expected yes or no)",
                    node.tag_name().name()
                ),
            )),
        }
    }

    fn ip_attr(&self, node: Node, attr: &str) -> Result<Option<IpAddr>> {
        node.attribute(attr)
            .map(|v| {
                v.trim().parse::<IpAddr>().map_err(|_| {
                    self.err(
                        node,
                        format!(
                            "invalid address '{v}' in attribute '{attr}' of <{}>",
                            node.tag_name().name()
                        ),
                    )
                })
            })
            .transpose()
    }

    fn port_attr(&self, node: Node, attr: &str) -> Result<u32> {
        match node.attribute(attr) {
            None => Ok(0),
            Some(v) => v.trim().parse::<u32>().map_err(|_| {
                self.err(
                    node,
                    format!("invalid port '{v}' in attribute '{attr}' of <port>"),
                )
            }),
        }
    }

    fn network(&self, node: Node, text: &str) -> Result<NetworkDef> {
        let name = child(node, "name")
            .and_then(|n| n.text())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.err(node, "network has no <name>"))?
            .to_string();
        if name.contains('/') {
            return Err(self.err(node, format!("network name '{name}' must not contain '/'")));
        }
        // The name names the status file and is written back into it: a control character
        // (a line break, say) would not read back as written.
        if name.chars().any(char::is_control) {
            return Err(self.err(
                node,
                format!("network name {name:?} must not contain control characters"),
            ));
        }
        let ipv6 = self.yes_no(node, "ipv6")?.unwrap_or(false);

        let (forward, forward_dev, nat) = match child(node, "forward") {
            None => (ForwardMode::None, None, NatDef::default()),
            Some(fwd) => self.forward(fwd)?,
        };
        if !forward.is_virtual() {
            return Err(self.err(
                child(node, "forward").unwrap_or(node),
                format!(
                    "unsupported <forward mode='{}'>: only isolated (no <forward>), nat, route and open networks have a bridge and firewall of their own",
                    forward.as_str()
                ),
            ));
        }

        let bridge_node = child(node, "bridge");
        let bridge = bridge_node
            .and_then(|b| b.attribute("name"))
            .map(str::trim)
            .unwrap_or("");
        if bridge.is_empty() {
            return Err(self.err(
                bridge_node.unwrap_or(node),
                format!(
                    "network '{name}' needs <bridge name='…'/> for forward mode '{}'",
                    forward.as_str()
                ),
            ));
        }
        if let Err(why) = check_ifname(bridge) {
            return Err(self.err(
                bridge_node.unwrap_or(node),
                format!("invalid interface name {bridge:?} in attribute 'name' of <bridge>: {why}"),
            ));
        }

        let mut ips = Vec::new();
        for ipnode in node.children().filter(|c| c.has_tag_name("ip")) {
            ips.push(self.ip(ipnode, bridge)?);
        }

        let dns_enabled = match child(node, "dns") {
            Some(dns) => self.yes_no(dns, "enable")?,
            None => None,
        };

        Ok(NetworkDef {
            name,
            bridge: bridge.to_string(),
            forward,
            forward_dev,
            nat,
            ips,
            ipv6,
            dns_enabled,
            xml: text[node.range()].to_string(),
        })
    }

    fn forward(&self, fwd: Node) -> Result<(ForwardMode, Option<String>, NatDef)> {
        let mode = match fwd.attribute("mode") {
            None => ForwardMode::Nat,
            Some(m) => ForwardMode::parse(m.trim()).ok_or_else(|| {
                self.err(
                    fwd,
                    format!("unknown forward mode '{m}' in <forward> (expected nat, route, open, bridge, private, vepa, passthrough or hostdev)"),
                )
            })?,
        };
        // Every interface name given is checked (not only the one used), with its element.
        let mut dev = None;
        let attr = fwd
            .attribute("dev")
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if let Some(d) = attr {
            self.ifname(fwd, "forward", d)?;
            dev = Some(d.to_string());
        }
        for iface in fwd.children().filter(|c| c.has_tag_name("interface")) {
            if let Some(d) = iface.attribute("dev") {
                let d = d.trim();
                self.ifname(iface, "interface", d)?;
                dev.get_or_insert_with(|| d.to_string());
            }
        }
        let mut nat = NatDef::default();
        if let Some(natnode) = child(fwd, "nat") {
            if mode != ForwardMode::Nat {
                return Err(self.err(
                    natnode,
                    format!(
                        "<nat> is only allowed in <forward mode='nat'>, not '{}'",
                        mode.as_str()
                    ),
                ));
            }
            nat.ipv6 = self.yes_no(natnode, "ipv6")?.unwrap_or(false);
            let mut addrs = natnode.children().filter(|c| c.has_tag_name("address"));
            if let Some(a) = addrs.next() {
                if let Some(extra) = addrs.next() {
                    return Err(self.err(extra, "only one <address> is allowed in <nat>"));
                }
                let start = self.ip_attr(a, "start")?.ok_or_else(|| {
                    self.err(a, "<address> in <nat> is missing its 'start' attribute")
                })?;
                let end = self.ip_attr(a, "end")?;
                if !start.is_ipv4() || end.is_some_and(|e| !e.is_ipv4()) {
                    return Err(self.err(a, "only IPv4 addresses are supported in <nat><address>"));
                }
                if end.is_some_and(|e| e < start) {
                    return Err(self.err(
                        a,
                        format!(
                            "<nat><address> range end {} is before start {start}",
                            end.unwrap()
                        ),
                    ));
                }
                nat.address_start = Some(start);
                nat.address_end = end;
            }
            let mut ports = natnode.children().filter(|c| c.has_tag_name("port"));
            if let Some(p) = ports.next() {
                if let Some(extra) = ports.next() {
                    return Err(self.err(extra, "only one <port> is allowed in <nat>"));
                }
                nat.port_start = self.port_attr(p, "start")?;
                nat.port_end = self.port_attr(p, "end")?;
                if nat.port_start != 0 || nat.port_end != 0 {
                    // libvirt checks this only when it builds the rules; checking here as well
                    // refuses the file before anything is touched, with the line at fault.
                    nat.port_range().map_err(|e| self.err(p, e.to_string()))?;
                }
            }
        }
        Ok((mode, dev, nat))
    }

    fn ip(&self, node: Node, bridge: &str) -> Result<IpDef> {
        let family = node.attribute("family").map(str::trim);
        let address = self
            .ip_attr(node, "address")?
            .ok_or_else(|| self.err(node, "<ip> is missing its 'address' attribute"))?;
        match (family, address) {
            (None | Some("ipv4"), IpAddr::V4(_)) | (Some("ipv6"), IpAddr::V6(_)) => {}
            (None, IpAddr::V6(_)) => {
                return Err(self.err(
                    node,
                    format!("<ip address='{address}'> is IPv6 but has no family='ipv6'"),
                ))
            }
            (Some(f @ ("ipv4" | "ipv6")), _) => {
                return Err(self.err(
                    node,
                    format!("<ip address='{address}'> does not match family='{f}'"),
                ))
            }
            (Some(f), _) => {
                return Err(self.err(
                    node,
                    format!("unknown address family '{f}' in <ip> (expected ipv4 or ipv6)"),
                ))
            }
        }
        let bad_prefix = || self.err(node, format!("Invalid prefix or netmask for '{bridge}'"));
        let prefix = match (node.attribute("prefix"), node.attribute("netmask")) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    node,
                    format!("<ip address='{address}'> cannot have both a prefix and a netmask"),
                ))
            }
            (Some(p), None) => p.trim().parse::<u8>().map_err(|_| bad_prefix())?,
            (None, Some(m)) => {
                if address.is_ipv6() {
                    return Err(self.err(
                        node,
                        format!(
                            "netmask is not supported for IPv6 address '{address}', use prefix"
                        ),
                    ));
                }
                let mask: Ipv4Addr = m.trim().parse().map_err(|_| bad_prefix())?;
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(bad_prefix());
                }
                bits.leading_ones() as u8
            }
            (None, None) => match address {
                // libvirt's defaults: the classful prefix for IPv4, /64 for IPv6.
                IpAddr::V4(a) => match a.octets()[0] {
                    0..=127 => 8,
                    128..=191 => 16,
                    192..=223 => 24,
                    _ => return Err(bad_prefix()),
                },
                IpAddr::V6(_) => 64,
            },
        };
        let address = IpNet::new(address, prefix).map_err(|_| bad_prefix())?;
        let dhcp = child(node, "dhcp").is_some_and(|d| {
            d.children()
                .any(|c| c.has_tag_name("range") || c.has_tag_name("host"))
        });
        if let Some(d) = child(node, "dhcp") {
            for r in d.children().filter(|c| c.has_tag_name("range")) {
                for attr in ["start", "end"] {
                    let a = self.ip_attr(r, attr)?.ok_or_else(|| {
                        self.err(
                            r,
                            format!("<range> in <dhcp> is missing its '{attr}' attribute"),
                        )
                    })?;
                    if !address.contains(&a) {
                        return Err(self.err(
                            r,
                            format!(
                                "DHCP range {attr} {a} is not in network {}",
                                address.trunc()
                            ),
                        ));
                    }
                }
            }
            for h in d.children().filter(|c| c.has_tag_name("host")) {
                self.ip_attr(h, "ip")?;
            }
        }
        let tftp_root = child(node, "tftp").map(|t| t.attribute("root").unwrap_or("").to_string());
        if tftp_root.is_some() && address.addr().is_ipv6() {
            return Err(self.err(node, "<tftp> is only supported on IPv4 <ip>"));
        }
        Ok(IpDef {
            address,
            dhcp,
            tftp_root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<NetworkDef> {
        NetworkDef::from_xml(xml, "test.xml")
    }

    #[test]
    fn default_network() {
        let def = parse(
            "<network><name>default</name><bridge name='virbr0'/><forward/>\
             <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>\
             <range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip>\
             <unknown><stuff/></unknown></network>",
        )
        .unwrap();
        assert_eq!(def.name, "default");
        assert_eq!(def.bridge, "virbr0");
        assert_eq!(def.forward, ForwardMode::Nat);
        assert_eq!(def.ips.len(), 1);
        assert_eq!(def.ips[0].network().to_string(), "192.168.122.0/24");
        assert!(def.ips[0].dhcp);
        assert_eq!(def.nat.port_range().unwrap(), (1024, 65535));
        assert!(def.xml.starts_with("<network>") && def.xml.ends_with("</network>"));
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("<network>\n<name>n</name>\n<bridge name='br0'/>\n<ip address='10.0.0.1' prefix='33'/>\n</network>")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.xml:4:1: Invalid prefix or netmask for 'br0'"
        );
        let err = parse("<network><name>n</name><bridge name='br0'/>\n<ip address='10.0.0.1' netmask='255.0.255.0'/></network>")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("test.xml:2:1: Invalid prefix or netmask"),
            "{err}"
        );
        let err = parse("<network><name>n</name><bridge name='br0'/><forward mode='nat'>\n  <nat><port start='2000' end='1000'/></nat></forward></network>")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.xml:2:8: Invalid port range '2000-1000'."
        );
        let err = parse("<network><name>n</name><forward mode='nat'/></network>").unwrap_err();
        assert!(err.to_string().contains("needs <bridge name="), "{err}");
        let err =
            parse("<network><name>n</name><bridge name='b'/><forward mode='wormhole'/></network>")
                .unwrap_err();
        assert!(
            err.to_string().contains("unknown forward mode 'wormhole'"),
            "{err}"
        );
        let err =
            parse("<network><name>n</name><bridge name='b'/><ip address='10.0.0.300'/></network>")
                .unwrap_err();
        assert!(
            err.to_string().contains("invalid address '10.0.0.300'"),
            "{err}"
        );
        let err =
            parse("<network><name>n</name><bridge name='b'/><forward mode='bridge'/></network>")
                .unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported <forward mode='bridge'>"),
            "{err}"
        );
        let err = parse("<network><name>n</name><bridge name='b'/>").unwrap_err();
        assert!(
            matches!(err, NetworkError::Definition { line: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn forward_dev_nat_and_defaults() {
        let def = parse(
            "<network ipv6='yes'><name>n</name><bridge name='b'/>\
             <forward mode='nat'><interface dev='eth1'/><nat ipv6='yes'>\
             <address start='198.51.100.10' end='198.51.100.20'/><port start='500' end='1000'/></nat></forward>\
             <ip address='10.1.2.3'/><ip family='ipv6' address='2001:db8::1'/><dns enable='no'/></network>",
        )
        .unwrap();
        assert_eq!(def.forward_dev.as_deref(), Some("eth1"));
        assert!(def.nat.ipv6 && def.ipv6);
        assert_eq!(def.nat.port_range().unwrap(), (500, 1000));
        assert_eq!(def.ips[0].network().to_string(), "10.0.0.0/8");
        assert_eq!(def.ips[1].network().to_string(), "2001:db8::/64");
        assert_eq!(def.dns_enabled, Some(false));
    }
}
