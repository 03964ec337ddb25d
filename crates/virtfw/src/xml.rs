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
use crate::validate;

/// Escape `s` for element text (`attribute == false`) or a single-quoted attribute value.
///
/// Besides the five markup characters, every character an XML parser would normalise is
/// written as a character reference, so that what is read back is what was written: a raw CR
/// in text is read as LF (line-end normalisation), and TAB, LF and CR in an attribute value
/// are read as spaces (attribute-value normalisation). libvirt's own documents contain none of
/// them, so its golden files stay byte-identical.
fn escape(s: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\n' if attribute => out.push_str("&#10;"),
            '\t' if attribute => out.push_str("&#9;"),
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
        let _ = writeln!(out, "{pad}    <item>{}</item>", escape(arg, false));
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

/// How big and how deep a document may be before it is parsed.
///
/// roxmltree parses recursively: a document nested some 12,500 elements deep overflowed the
/// 8 MiB main stack of a release build and aborted the process instead of failing, and a debug
/// build on a 2 MiB thread (the test harness's) overflowed at about 375 levels. So the depth is
/// measured first by a streaming scan that does not recurse, and the size before that. The
/// limits are far above any real document (a 10,000-rule plan is a few MB; libvirt's and
/// virtfw's documents nest fewer than 10 elements) and well below what the parser takes on a
/// 2 MiB stack even unoptimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted text, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted element nesting (the root element is depth 1).
    pub max_depth: usize,
}

impl Limits {
    /// Plans, transactions, status files, journals.
    pub const DOCUMENT: Limits = Limits {
        max_bytes: 256 << 20,
        max_depth: 128,
    };
    /// Network definitions: lower than [`Limits::DOCUMENT`], because a status file wraps the
    /// definition in more levels (`<networkstatus>`) and more text (the removal plan), and a
    /// network that starts must always be stoppable.
    pub const DEFINITION: Limits = Limits {
        max_bytes: 64 << 20,
        max_depth: 64,
    };
}

/// The 1-based line and column of byte `offset` of `text`.
fn text_pos(text: &str, offset: usize) -> (u32, u32) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line as u32, column as u32)
}

/// Refuse `text` if it is larger or deeper than `limits`, or declares a document type (a DTD's
/// entities could expand to more depth than the text shows; none of virtfw's or libvirt's
/// documents has one). The scan is a loop over quick-xml's events, never recursive.
fn check_limits(text: &str, limits: Limits) -> std::result::Result<(), SyntaxError> {
    let at = |offset: usize, message: String| {
        let (line, column) = text_pos(text, offset);
        SyntaxError {
            line,
            column,
            message,
        }
    };
    if text.len() > limits.max_bytes {
        return Err(at(
            0,
            format!(
                "document is {} bytes, more than the limit of {} bytes",
                text.len(),
                limits.max_bytes
            ),
        ));
    }
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = false;
    let mut depth = 0usize;
    loop {
        let start = reader.buffer_position() as usize;
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(_)) => {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(at(
                        start,
                        format!(
                            "elements nest more than {} deep (the limit for this document)",
                            limits.max_depth
                        ),
                    ));
                }
            }
            Ok(quick_xml::events::Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(quick_xml::events::Event::DocType(_)) => {
                return Err(at(
                    start,
                    "document type declarations (<!DOCTYPE …>) are not accepted".into(),
                ))
            }
            Ok(quick_xml::events::Event::Eof) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                // Malformed: roxmltree reports it in its own words, but only if it cannot nest
                // deeper than allowed before it gets there. Each further level needs a '<'.
                let offset = reader.buffer_position() as usize;
                let rest = text.as_bytes()[offset.min(text.len())..]
                    .iter()
                    .filter(|&&b| b == b'<')
                    .count();
                if depth + rest <= limits.max_depth {
                    return Ok(());
                }
                return Err(at(offset, e.to_string()));
            }
        }
    }
}

/// Parse `text` as an XML document within [`Limits::DOCUMENT`], with the position of a syntax
/// error.
pub fn parse_document(text: &str) -> std::result::Result<Document<'_>, SyntaxError> {
    parse_document_with(text, Limits::DOCUMENT)
}

/// [`parse_document`] within `limits`, checked before the document is parsed.
pub fn parse_document_with(
    text: &str,
    limits: Limits,
) -> std::result::Result<Document<'_>, SyntaxError> {
    check_limits(text, limits)?;
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
            let _ = write!(out, " name='{}'", escape(name, true));
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
            // A group without actions is kept by the reader only when it has a <rollback>
            // (libvirt's reader skips an action-less <group>): write one, even empty, so that
            // reading gives back exactly these groups and group indices stay the same (the
            // CLI's journal copy of a transaction is read back to undo a failed apply).
            if group.actions.is_empty() && group.rollbacks.is_empty() && !inherit {
                let _ = writeln!(out, "{inner}<rollback/>");
            }
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

/// Where a command sits in the firewall being read, to name it in errors.
struct Slot {
    backend: Backend,
    group: usize,
    command: usize,
    rollback: bool,
}

fn parse_action(
    node: Node,
    source: &str,
    group_ignores: bool,
    slot: Slot,
) -> Result<Option<Command>> {
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
    let item_nodes: Vec<Node> = args.children().filter(|c| c.has_tag_name("item")).collect();
    let items: Vec<String> = item_nodes
        .iter()
        .map(|c| c.text().unwrap_or("").to_string())
        .collect();
    if items.is_empty() {
        return Err(Error::xml(
            source,
            node.document().text_pos_at(args.range().start),
            "Invalid firewall command has 0 arguments",
        ));
    }
    if let Err(refused) = validate::check_command(slot.backend, layer, &items) {
        let at = node
            .document()
            .text_pos_at(item_nodes[refused.item].range().start);
        let location = validate::ItemLocation {
            source_name: source.to_string(),
            line: at.row,
            column: at.col,
        };
        return Err(validate::unsafe_error(
            refused,
            &items,
            slot.group,
            slot.command,
            slot.rollback,
            Some(location),
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
        let slot = |command, rollback| Slot {
            backend,
            group: fw.groups.len(),
            command,
            rollback,
        };
        for anode in gnode.children().filter(|c| c.has_tag_name("action")) {
            let at = slot(group.actions.len(), false);
            if let Some(cmd) = parse_action(anode, source, ignores, at)? {
                group.actions.push(cmd);
            }
        }
        if let Some(rnode) = rollback_node {
            if tristate(rnode, "inheritPrevious", source)? == Some(true) {
                group.rollback_flags |= RollbackFlags::INHERIT_PREVIOUS;
            }
            for anode in rnode.children().filter(|c| c.has_tag_name("action")) {
                let at = slot(group.rollbacks.len(), true);
                if let Some(cmd) = parse_action(anode, source, true, at)? {
                    group.rollbacks.push(cmd);
                }
            }
        }
        fw.push_group(group);
    }
    Ok(fw)
}
