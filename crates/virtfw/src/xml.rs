//! libvirt's `<firewall>` XML, byte for byte, plus a backward-compatible extension for whole
//! transactions.
//!
//! A removal plan written here is what libvirt writes, and one written by libvirt parses here.
//! Transaction files may also carry, on `<group>`, `autoRollback='yes'` and a
//! `<rollback inheritPrevious='yes'>` child with `<action>` elements, and `<action>` may carry
//! `appended='yes'` (the command deletes a rule that was appended, see
//! [`Command::appended`]); libvirt's parser ignores all three, and the formatter only writes
//! them when they are set, so plans of inserted rules (all of libvirt's) stay identical.

use std::fmt::Write;

use roxmltree::{Document, Node};

use crate::error::{Error, Result};
use crate::firewall::{Firewall, Group};
use crate::model::{Backend, Command, Layer, RollbackFlags, TransactionFlags};

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn write_action(out: &mut String, pad: &str, cmd: &Command, show_ignore: bool) {
    let _ = write!(out, "{pad}<action layer='{}'", cmd.layer);
    if show_ignore {
        out.push_str(" ignoreErrors='yes'");
    }
    if cmd.appended {
        out.push_str(" appended='yes'");
    }
    out.push_str(">\n");
    let _ = writeln!(out, "{pad}  <args>");
    for arg in &cmd.args {
        let _ = writeln!(out, "{pad}    <item>{}</item>", escape(arg));
    }
    let _ = writeln!(out, "{pad}  </args>");
    let _ = writeln!(out, "{pad}</action>");
}

/// Why a text is not a well-formed XML document, and where (1-based line and column).
///
/// Every document virtfw reads (plans, transactions, network definitions, status files) reports
/// syntax errors the same way; each caller turns this into its own error type with the name of
/// the file at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl SyntaxError {
    /// This error as the engine's [`Error::Xml`] for `source_name`.
    pub fn into_error(self, source_name: &str) -> Error {
        Error::Xml {
            source_name: source_name.to_string(),
            line: self.line,
            column: self.column,
            message: self.message,
        }
    }
}

/// Parse `text` as an XML document, with the position of a syntax error.
pub fn parse_document(text: &str) -> std::result::Result<Document<'_>, SyntaxError> {
    Document::parse(text).map_err(|e| SyntaxError {
        line: e.pos().row,
        column: e.pos().col,
        message: e.to_string(),
    })
}

impl Firewall {
    /// The `<firewall>` element, ending in a newline.
    pub fn to_xml(&self) -> String {
        self.to_xml_indented(0)
    }

    /// The `<firewall>` element indented by `indent` spaces (libvirt embeds it in
    /// `<networkstatus>` at 2).
    pub fn to_xml_indented(&self, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut out = String::new();
        let _ = write!(out, "{pad}<firewall");
        if let Some(name) = &self.name {
            let _ = write!(out, " name='{}'", escape(name));
        }
        let _ = write!(out, " backend='{}'", self.backend);
        if self.groups.is_empty() {
            out.push_str("/>\n");
            return out;
        }
        out.push_str(">\n");
        for group in &self.groups {
            let group_ignores = group.flags.contains(TransactionFlags::IGNORE_ERRORS);
            let _ = write!(out, "{pad}  <group");
            if group_ignores {
                out.push_str(" ignoreErrors='yes'");
            }
            if group.flags.contains(TransactionFlags::AUTO_ROLLBACK) {
                out.push_str(" autoRollback='yes'");
            }
            out.push_str(">\n");
            let inner = format!("{pad}    ");
            for cmd in &group.actions {
                write_action(&mut out, &inner, cmd, cmd.ignore_errors && !group_ignores);
            }
            let inherit = group
                .rollback_flags
                .contains(RollbackFlags::INHERIT_PREVIOUS);
            if !group.rollbacks.is_empty() || inherit {
                let _ = write!(out, "{inner}<rollback");
                if inherit {
                    out.push_str(" inheritPrevious='yes'");
                }
                out.push_str(">\n");
                let deeper = format!("{inner}  ");
                for cmd in &group.rollbacks {
                    write_action(&mut out, &deeper, cmd, false);
                }
                let _ = writeln!(out, "{inner}</rollback>");
            }
            let _ = writeln!(out, "{pad}  </group>");
        }
        let _ = writeln!(out, "{pad}</firewall>");
        out
    }

    /// Parse a document whose root is `<firewall>`. `source_name` (a file name, `-` for
    /// standard input) prefixes every error, with the line and column at fault.
    pub fn from_xml(text: &str, source_name: &str) -> Result<Firewall> {
        let doc = parse_document(text).map_err(|e| e.into_error(source_name))?;
        let root = doc.root_element();
        if !root.has_tag_name("firewall") {
            return Err(Error::xml(
                source_name,
                doc.text_pos_at(root.range().start),
                format!(
                    "expected a <firewall> element, found <{}>",
                    root.tag_name().name()
                ),
            ));
        }
        parse_firewall_element(root, source_name)
    }
}

fn tristate(node: Node, attr: &str, source: &str) -> Result<Option<bool>> {
    match node.attribute(attr) {
        None => Ok(None),
        Some("yes") => Ok(Some(true)),
        Some("no") => Ok(Some(false)),
        Some(other) => Err(Error::xml(
            source,
            node.document().text_pos_at(node.range().start),
            format!(
                "invalid value '{other}' for attribute '{attr}' of <{}> (expected yes or no)",
                node.tag_name().name()
            ),
        )),
    }
}

fn parse_action(node: Node, source: &str, group_ignores: bool) -> Result<Option<Command>> {
    let pos = || node.document().text_pos_at(node.range().start);
    let Some(args) = node.children().find(|c| c.has_tag_name("args")) else {
        return Ok(None);
    };
    let ignore = tristate(node, "ignoreErrors", source)?.unwrap_or(false);
    let appended = tristate(node, "appended", source)?.unwrap_or(false);
    let layer: Layer = node
        .attribute("layer")
        .ok_or_else(|| Error::xml(source, pos(), "<action> is missing its 'layer' attribute"))?
        .parse()
        .map_err(|e: Error| Error::xml(source, pos(), e.to_string()))?;
    let items: Vec<String> = args
        .children()
        .filter(|c| c.has_tag_name("item"))
        .map(|c| c.text().unwrap_or("").to_string())
        .collect();
    if items.is_empty() {
        return Err(Error::xml(
            source,
            node.document().text_pos_at(args.range().start),
            "Invalid firewall command has 0 arguments",
        ));
    }
    Ok(Some(
        Command::new(layer, items)
            .with_ignore_errors(ignore || group_ignores)
            .with_appended(appended),
    ))
}

/// Parse a `<firewall>` element found inside a larger document (e.g. libvirt's
/// `<networkstatus>`).
pub fn parse_firewall_element(node: Node, source: &str) -> Result<Firewall> {
    let pos = || node.document().text_pos_at(node.range().start);
    let backend: Backend = node
        .attribute("backend")
        .ok_or_else(|| {
            Error::xml(
                source,
                pos(),
                "<firewall> is missing its 'backend' attribute",
            )
        })?
        .parse()
        .map_err(|e: Error| Error::xml(source, pos(), e.to_string()))?;
    let mut fw = Firewall::new(backend);
    fw.set_name(node.attribute("name"));
    for gnode in node.children().filter(|c| c.has_tag_name("group")) {
        let mut rollback_nodes = gnode.children().filter(|c| c.has_tag_name("rollback"));
        let rollback_node = rollback_nodes.next();
        if let Some(second) = rollback_nodes.next() {
            return Err(Error::xml(
                source,
                node.document().text_pos_at(second.range().start),
                "<group> has more than one <rollback>",
            ));
        }
        if rollback_node.is_none() && !gnode.children().any(|c| c.has_tag_name("action")) {
            // libvirt skips a group without actions. One with a <rollback> (which libvirt
            // never writes; the API can build it, and `to_xml` writes it) is kept, actions
            // empty: its rollback must still run, and its index counts when a later group's
            // rollback inherits the previous ones.
            continue;
        }
        let mut flags = TransactionFlags::empty();
        if tristate(gnode, "ignoreErrors", source)? == Some(true) {
            flags |= TransactionFlags::IGNORE_ERRORS;
        }
        if tristate(gnode, "autoRollback", source)? == Some(true) {
            flags |= TransactionFlags::AUTO_ROLLBACK;
        }
        let mut group = Group {
            flags,
            ..Group::default()
        };
        let ignores = flags.contains(TransactionFlags::IGNORE_ERRORS);
        for anode in gnode.children().filter(|c| c.has_tag_name("action")) {
            if let Some(cmd) = parse_action(anode, source, ignores)? {
                group.actions.push(cmd);
            }
        }
        if let Some(rnode) = rollback_node {
            if tristate(rnode, "inheritPrevious", source)? == Some(true) {
                group.rollback_flags |= RollbackFlags::INHERIT_PREVIOUS;
            }
            for anode in rnode.children().filter(|c| c.has_tag_name("action")) {
                if let Some(cmd) = parse_action(anode, source, true)? {
                    group.rollbacks.push(cmd);
                }
            }
        }
        fw.push_group(group);
    }
    Ok(fw)
}
