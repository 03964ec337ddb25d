//! Input that cannot be reinterpreted: which command arguments are safe to run on both apply
//! paths.
//!
//! A command is an argv vector, but the fast path ([`crate::batch`]) joins commands into text:
//! `nft -f -` reads one line per command (the items joined with spaces, as nft's argv mode
//! joins them itself), and `iptables-restore` reads one line per command inside a
//! `*table … COMMIT` section. An item that means one thing as an argument and another inside
//! such a text would make the two paths disagree, or let a value (a network's interface name,
//! a comment) turn into commands of its own. [`check_command`] refuses such items before
//! anything runs: [`Firewall::apply`](crate::Firewall::apply) calls it for every command (so
//! firewalls built in code get it too) and the XML reader calls it with the position of the
//! `<item>`, so a file is refused with `file:line:col`. Both paths therefore give the same
//! verdict by construction.
//!
//! The rules were established with the real nft 1.0.6 and iptables 1.8.9 (nf_tables) in a
//! throwaway namespace, comparing argv mode with `nft -f -` / `iptables-restore --noflush` of
//! the text virtfw writes:
//!
//! **Every backend and layer.** No NUL, CR or LF in an item: NUL cannot be passed in an argv at
//! all, and CR/LF end a line of a batch file, splitting one command into two.
//!
//! **nftables (not the `tc` layer).** The items joined with spaces must be one command whose
//! words are the ones virtfw sees:
//! * double quotes balanced within each item. nft's quoted string has no escapes
//!   (`"a\"` is the string `a\`) and runs over line ends: the items `"a` / `b" ; add table ip
//!   extra` are an error in argv mode (unterminated string) but in a batch the string swallows
//!   the line break and the next command, and `extra` is created;
//! * no `;` outside a quoted string except inside `{ … }`: `;` starts a new command in both
//!   modes, so one virtfw command would be two nft commands (with one recorded inverse). Inside
//!   a block it separates the block's statements, as in libvirt's
//!   `{ type filter hook forward priority 0; policy accept; }`;
//! * `{` and `}` balanced over the command (outside quotes): an unclosed block in a batch line
//!   goes on on the next line (`add chain … { type filter hook input priority 0 ;` took the
//!   next command's `policy accept ; }`), in argv mode it is an error;
//! * no `#` outside a quoted string: it comments out the rest of the command (argv mode
//!   accepted `counter # accept` as a rule without its verdict);
//! * no `\` outside a quoted string except in nft's escaped asterisk `\*`: a `\` at the end of
//!   a batch line continues the line into the next command (argv mode ignores it);
//! * no empty item: nft joins its arguments with spaces, so an empty one vanishes and every
//!   later word moves one place from where virtfw (which reads commands by position, e.g. to
//!   derive inverses) expects it.
//!
//! Single quotes are not string delimiters in nft 1.0.6 (an error in both modes), a `}`-closed
//! block may hold rules (`add chain ip t c { counter accept ; }` is one command), and keywords
//! used as names are syntax errors in both modes: none of these changes meaning, so none is
//! refused here.
//!
//! **iptables, ip6tables, ebtables.** iptables-restore reads a line by its first character
//! before it tokenizes it: `:CHAIN POLICY` sets a policy or (with `--noflush`, for a user
//! chain and policy `-`) **flushes** the chain — `:VICTIM - -A INPUT -j ACCEPT` flushed
//! someone else's chain and exited 0 —, `*table` starts a section, `COMMIT` commits early,
//! `#` makes the line a comment (exit 0, nothing done). In argv mode the same items are an
//! error (`iptables -w :INPUT DROP` is refused). So the first item that is not part of a
//! `-t`/`--table` option (the restore writer moves those into the section header) must not
//! start with `:`, `*` or `#`, nor be `COMMIT`. (A first item that is no option at all, like
//! `5`, is taken by `-w` as its wait time in argv mode and is a "Bad argument" to
//! iptables-restore; the failed batch is re-run command by command, so both paths agree and
//! it is not refused.) And the command joined must stay below the restore
//! programs' line buffer: they read lines with `fgets` into 10240 bytes, so a longer line is
//! cut and its tail read as a line of its own (a 10258-byte rule line whose tail was
//! `:VICTIM -` flushed `VICTIM`). virtfw allows [`RESTORE_LINE_LIMIT`] bytes, counting two
//! quotes per item. Quotes, backslashes and `#` inside items are handled by the restore writer
//! (it quotes words with blanks or `#` and runs commands with `"`, `'` or `\` one by one), so
//! they are not refused. An empty item is kept: it is a real (empty) argument in argv mode,
//! and the restore writer's `""` reads back as the same empty argument (checked with
//! `--comment ""` on both paths).
//!
//! **tc layer.** Always run one process per command: only the line rule applies.

use crate::error::{Error, Result};
pub use crate::error::{ItemLocation, UnsafeReason};
use crate::firewall::Firewall;
use crate::model::{Backend, Layer};

/// The longest command (items joined with spaces, two quote characters counted per item) the
/// iptables family may carry: well below the restore programs' 10240-byte line buffer.
pub const RESTORE_LINE_LIMIT: usize = 8192;

/// An item refused by [`check_command`]: its index among the command's arguments and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe {
    /// Index of the refused item among the command's arguments.
    pub item: usize,
    /// Why it is refused.
    pub reason: UnsafeReason,
}

/// Decide whether the arguments `args` of a command of `layer` under `backend` mean the same
/// on the per-command and the batch path (see the module docs for the rules and why).
pub fn check_command(backend: Backend, layer: Layer, args: &[String]) -> Result<(), Unsafe> {
    let refuse = |item, reason| Err(Unsafe { item, reason });
    for (i, a) in args.iter().enumerate() {
        for (c, name) in [
            ('\0', "NUL"),
            ('\r', "carriage return"),
            ('\n', "line feed"),
        ] {
            if a.contains(c) {
                return refuse(i, UnsafeReason::LineBreak(name));
            }
        }
        // Other control characters (TAB aside, which every path treats as the space it is):
        // XML 1.0 cannot hold them even as character references, so a removal plan that
        // recorded one could never be read back.
        if let Some(c) = a.chars().find(|&c| c != '\t' && c.is_control()) {
            return refuse(i, UnsafeReason::Control(c as u32));
        }
    }
    if layer == Layer::Tc {
        return Ok(());
    }
    match backend {
        Backend::Nftables => check_nft(args),
        Backend::Iptables => check_restore(args),
        Backend::None => Ok(()),
    }
}

fn check_nft(args: &[String]) -> Result<(), Unsafe> {
    let refuse = |item, reason| Err(Unsafe { item, reason });
    // Items holding the currently open braces, innermost last.
    let mut open: Vec<usize> = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if a.is_empty() {
            return refuse(i, UnsafeReason::Empty);
        }
        let mut quoted = false;
        let mut chars = a.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                quoted = !quoted;
                continue;
            }
            if quoted {
                continue;
            }
            match c {
                ';' if open.is_empty() => return refuse(i, UnsafeReason::Semicolon),
                '#' => return refuse(i, UnsafeReason::Comment),
                '\\' if chars.peek() != Some(&'*') => return refuse(i, UnsafeReason::Backslash),
                '{' => open.push(i),
                '}' if open.pop().is_none() => return refuse(i, UnsafeReason::UnopenedBrace),
                _ => {}
            }
        }
        if quoted {
            return refuse(i, UnsafeReason::UnbalancedQuote);
        }
    }
    match open.first() {
        Some(&i) => refuse(i, UnsafeReason::UnclosedBrace),
        None => Ok(()),
    }
}

fn check_restore(args: &[String]) -> Result<(), Unsafe> {
    let mut first = 0;
    while first + 1 < args.len() && matches!(args[first].as_str(), "-t" | "--table") {
        first += 2;
    }
    if let Some(a) = args.get(first) {
        let kind = match a.chars().next() {
            Some(':') => Some("a chain policy line (setting a policy or flushing the chain)"),
            Some('*') => Some("a table section header"),
            Some('#') => Some("a comment (ignoring the whole command)"),
            _ if a == "COMMIT" => Some("the end of the table section (committing it early)"),
            _ => None,
        };
        if let Some(kind) = kind {
            return Err(Unsafe {
                item: first,
                reason: UnsafeReason::RestoreDirective(kind),
            });
        }
    }
    let len: usize = args.iter().map(|a| a.len() + 3).sum();
    if len > RESTORE_LINE_LIMIT {
        return Err(Unsafe {
            item: args.len() - 1,
            reason: UnsafeReason::TooLong {
                len,
                limit: RESTORE_LINE_LIMIT,
            },
        });
    }
    Ok(())
}

/// The engine error for an item refused by [`check_command`].
pub(crate) fn unsafe_error(
    refused: Unsafe,
    args: &[String],
    group: usize,
    command: usize,
    rollback: bool,
    location: Option<ItemLocation>,
) -> Error {
    Error::UnsafeArgument {
        location,
        group,
        command,
        rollback,
        item: refused.item,
        value: args[refused.item].clone(),
        reason: refused.reason,
    }
}

/// Check every command of `fw` (actions and rollbacks); the first refused item is the error.
pub(crate) fn check_firewall(fw: &Firewall) -> Result<()> {
    for (gi, group) in fw.groups.iter().enumerate() {
        let lists = [(false, &group.actions), (true, &group.rollbacks)];
        for (rollback, list) in lists {
            for (ci, cmd) in list.iter().enumerate() {
                check_command(fw.backend, cmd.layer, &cmd.args)
                    .map_err(|u| unsafe_error(u, &cmd.args, gi, ci, rollback, None))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nft(args: &[&str]) -> Result<(), Unsafe> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        check_command(Backend::Nftables, Layer::Ipv4, &args)
    }

    fn ipt(args: &[&str]) -> Result<(), Unsafe> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        check_command(Backend::Iptables, Layer::Ipv4, &args)
    }

    fn reason(r: Result<(), Unsafe>) -> (usize, UnsafeReason) {
        let u = r.unwrap_err();
        (u.item, u.reason)
    }

    #[test]
    fn libvirt_style_nft_commands_pass() {
        nft(&[
            "add",
            "chain",
            "ip",
            "libvirt_network",
            "forward",
            "{ type filter hook forward priority 0; policy accept; }",
        ])
        .unwrap();
        nft(&[
            "add", "chain", "ip", "t", "c", "{", "type", "filter", "hook", "forward", "priority",
            "filter", ";", "policy", "accept", ";", "}",
        ])
        .unwrap();
        nft(&[
            "add",
            "rule",
            "ip",
            "t",
            "c",
            "counter",
            "comment",
            "\"a # b; {\"",
        ])
        .unwrap();
        nft(&["add", "rule", "ip", "t", "c", "iifname", "eth\\*", "accept"]).unwrap();
        nft(&[
            "insert",
            "rule",
            "ip",
            "t",
            "c",
            "ip saddr 1.2.3.4 counter accept",
        ])
        .unwrap();
    }

    #[test]
    fn nft_boundaries_are_refused() {
        let rule = |tail: &[&'static str]| {
            let mut v = vec!["add", "rule", "ip", "t", "c"];
            v.extend(tail);
            v
        };
        let cases: Vec<(Vec<&str>, usize, UnsafeReason)> = vec![
            (rule(&["comment", "\"a"]), 6, UnsafeReason::UnbalancedQuote),
            (
                rule(&["b\" ; add table ip extra"]),
                5,
                UnsafeReason::UnbalancedQuote,
            ),
            (rule(&["counter", "#", "accept"]), 6, UnsafeReason::Comment),
            (rule(&["counter", "\\"]), 6, UnsafeReason::Backslash),
            (rule(&[";", "flush", "ruleset"]), 5, UnsafeReason::Semicolon),
            (
                rule(&["{", "type", "filter", ";"]),
                5,
                UnsafeReason::UnclosedBrace,
            ),
            (rule(&["}", "{"]), 5, UnsafeReason::UnopenedBrace),
            (
                rule(&["{ policy accept ; }", ";"]),
                6,
                UnsafeReason::Semicolon,
            ),
            (vec!["add", "", "table", "ip", "t"], 1, UnsafeReason::Empty),
        ];
        for (args, item, why) in cases {
            assert_eq!(reason(nft(&args)), (item, why), "{args:?}");
        }
        for bad in ["a\nb", "a\rb", "a\0b"] {
            assert!(matches!(
                reason(nft(&["add", "table", "ip", bad])).1,
                UnsafeReason::LineBreak(_)
            ));
            assert!(matches!(
                reason(ipt(&["-A", bad])).1,
                UnsafeReason::LineBreak(_)
            ));
        }
    }

    #[test]
    fn restore_line_kinds_are_refused_as_first_word() {
        for first in [":INPUT", ":VICTIM", "*nat", "COMMIT", "#x"] {
            let (item, r) = reason(ipt(&[first, "DROP"]));
            assert_eq!(item, 0);
            assert!(matches!(r, UnsafeReason::RestoreDirective(_)), "{first}");
            let (item, _) = reason(ipt(&["-t", "filter", first, "-"]));
            assert_eq!(item, 2);
        }
        ipt(&["--table", "filter", "--insert", "INPUT", "--jump", "ACCEPT"]).unwrap();
        ipt(&[
            "-A",
            "INPUT",
            "-m",
            "comment",
            "--comment",
            "",
            "-j",
            "ACCEPT",
        ])
        .unwrap();
        ipt(&[
            "-A",
            "INPUT",
            "-m",
            "comment",
            "--comment",
            "a \"#\" ; b",
            "-j",
            "ACCEPT",
        ])
        .unwrap();
        let long = "a".repeat(200);
        let mut args = vec!["-A".to_string(), "INPUT".to_string()];
        for _ in 0..60 {
            args.extend([
                "-m".into(),
                "comment".into(),
                "--comment".into(),
                long.clone(),
            ]);
        }
        let u = check_command(Backend::Iptables, Layer::Ipv4, &args).unwrap_err();
        assert!(matches!(u.reason, UnsafeReason::TooLong { .. }), "{u:?}");
    }

    #[test]
    fn tc_commands_only_need_one_line() {
        let args: Vec<String> = ["filter", "add", "dev", "#;{", ""].map(String::from).into();
        check_command(Backend::Nftables, Layer::Tc, &args).unwrap();
    }
}
