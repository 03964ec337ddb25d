//! The iptables family (`iptables`, `ip6tables`, `ebtables`): everything virtfw knows about
//! its commands, in one place.
//!
//! * Auto-rollback: the family deletes by rule specification, so the inverse of a create is the
//!   same arguments with the create option swapped for `--delete` ([`iptables_inverse`]).
//!   (nftables objects are deleted by handle instead: see [`crate::nft`].)
//! * `--check` forms that ask the kernel whether a rule is there ([`iptables_check`]).
//! * `*-restore` input: a command as a restore line ([`restore_line`]), the programs and their
//!   options ([`restore_program`]), table sections and which section a failure blames.
//! * What the programs' error output means ([`failure_kind`]).

use crate::failure::{error_line, FailureKind};
use crate::model::{Backend, Layer};

/// Does this iptables/ip6tables/ebtables command create a rule (libvirt: any argument is
/// `--insert`, `-I`, `--append` or `-A`)?
pub fn iptables_is_create(args: &[String]) -> bool {
    args.iter()
        .any(|a| matches!(a.as_str(), "--insert" | "-I" | "--append" | "-A"))
}

/// Does this iptables-family create append (`-A`/`--append`) rather than insert?
pub fn iptables_is_append(args: &[String]) -> bool {
    args.iter().any(|a| matches!(a.as_str(), "--append" | "-A"))
}

/// The same arguments with every create option replaced by `--delete`.
///
/// An insert at an explicit position (`-I CHAIN 3`) would otherwise become "delete rule number
/// 3", which removes whatever rule sits there; the position is dropped so the delete matches the
/// rule by its specification.
pub fn iptables_inverse(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--insert" | "-I" | "--append" | "-A" => {
                out.push("--delete".to_string());
                if let Some(chain) = args.get(i + 1) {
                    out.push(chain.clone());
                    i += 1;
                    let positional = matches!(a, "--insert" | "-I")
                        && args.get(i + 1).is_some_and(|n| is_rule_number(n));
                    if positional {
                        i += 1;
                    }
                }
            }
            _ => out.push(args[i].clone()),
        }
        i += 1;
    }
    out
}

/// Is this the rule number of an insert at a position (`-I CHAIN 3`)? A chain name never is.
fn is_rule_number(arg: &str) -> bool {
    !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit())
}

/// Where the rule command option (`-A`/`--append`, `-I`/`--insert`, `-D`/`--delete`) of an
/// iptables-family command stands. A command line has exactly one command option, so the first
/// one is it; a later lookalike is some option's value (a `--comment -D`, say).
fn iptables_rule_option(args: &[String]) -> Option<usize> {
    args.iter().position(|a| {
        matches!(
            a.as_str(),
            "--append" | "-A" | "--insert" | "-I" | "--delete" | "-D"
        )
    })
}

/// Does this iptables-family command delete a rule by its specification (its command option is
/// `-D`/`--delete`)?
pub fn iptables_is_delete(args: &[String]) -> bool {
    iptables_rule_option(args).is_some_and(|i| matches!(args[i].as_str(), "--delete" | "-D"))
}

/// The `--check` form of an iptables-family rule command: the same arguments with its command
/// option replaced by `--check`, so that exit status 0 says the rule is present. An insert's
/// explicit position (`-I CHAIN 3`) is dropped, as `--check` takes none. `None` when the
/// command does not name a rule (`-N`, `-X`, `-F`, …) or names it by number only (`-D CHAIN 3`:
/// `--check` takes a specification, and the number says nothing about which rule it was).
pub fn iptables_check(args: &[String]) -> Option<Vec<String>> {
    let at = iptables_rule_option(args)?;
    if matches!(args[at].as_str(), "--delete" | "-D")
        && args.get(at + 2).is_some_and(|n| is_rule_number(n))
    {
        return None;
    }
    let positional = matches!(args[at].as_str(), "--insert" | "-I")
        && args.get(at + 2).is_some_and(|n| is_rule_number(n));
    let mut out = Vec::with_capacity(args.len());
    out.extend(args[..at].iter().cloned());
    out.push("--check".to_string());
    out.extend(args.get(at + 1).cloned());
    let rest = (at + if positional { 3 } else { 2 }).min(args.len());
    out.extend(args[rest..].iter().cloned());
    Some(out)
}

/// One command of the iptables family in `*-restore` form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreLine {
    /// The layer (and so the restore program) it belongs to.
    pub layer: Layer,
    /// The table section it goes in.
    pub table: String,
    /// The line, its words quoted for the restore tokenizer.
    pub line: String,
    /// Whether it creates a rule (`-A`/`-I`).
    pub create: bool,
}

/// The restore program and its options for a layer.
pub fn restore_program(layer: Layer) -> Option<(&'static str, &'static [&'static str])> {
    match layer {
        Layer::Ipv4 => Some(("iptables-restore", &["-w", "--noflush"])),
        Layer::Ipv6 => Some(("ip6tables-restore", &["-w", "--noflush"])),
        Layer::Ethernet => Some(("ebtables-restore", &["--noflush"])),
        Layer::Tc => None,
    }
}

/// Quote an argument for the restore tokenizer, or refuse one it cannot carry unchanged.
pub fn restore_word(arg: &str, out: &mut String) -> bool {
    if arg.contains(['"', '\'', '\\', '\n', '\r']) {
        return false;
    }
    if arg.is_empty() || arg.contains([' ', '\t', '#']) {
        out.push('"');
        out.push_str(arg);
        out.push('"');
    } else {
        out.push_str(arg);
    }
    true
}

/// Turn a command into a restore line: the table option becomes the section, exactly one
/// ruleset-changing command option is allowed, anything that lists or checks is refused.
pub fn restore_line(layer: Layer, args: &[String]) -> Option<RestoreLine> {
    restore_program(layer)?;
    let mut table = "filter".to_string();
    let mut line = String::new();
    let mut commands = 0;
    let mut create = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-t" | "--table" => {
                table = args.get(i + 1)?.clone();
                if table.is_empty()
                    || !table
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return None;
                }
                i += 2;
                continue;
            }
            "-A" | "--append" | "-I" | "--insert" => {
                commands += 1;
                create = true;
            }
            "-D" | "--delete" | "-N" | "--new-chain" | "-X" | "--delete-chain" | "-F"
            | "--flush" | "-P" | "--policy" => commands += 1,
            _ if a.starts_with("--table=") => return None,
            "-L" | "--list" | "-S" | "--list-rules" | "-C" | "--check" | "-w" | "--wait" | "-W"
            | "--wait-interval" | "-Z" | "--zero" | "-E" | "--rename-chain" | "-R"
            | "--replace" | "-h" | "--help" | "-V" | "--version" | "--concurrent"
            | "--init-table" | "--atomic-file" | "--atomic-init" | "--atomic-save"
            | "--atomic-commit" | "-L-" => return None,
            _ => {}
        }
        if !line.is_empty() {
            line.push(' ');
        }
        if !restore_word(a, &mut line) {
            return None;
        }
        i += 1;
    }
    (commands == 1).then_some(RestoreLine {
        layer,
        table,
        line,
        create,
    })
}

/// A (program, table) section of an iptables-family batch: one `*table … COMMIT`, the unit the
/// kernel commits atomically.
pub(crate) struct Section<'a> {
    pub(crate) layer: Layer,
    pub(crate) table: String,
    /// (group, action index, args, restore line)
    pub(crate) cmds: Vec<(usize, usize, &'a [String], String)>,
}

/// The argv of the restore program of `layer`.
pub(crate) fn restore_argv(layer: Layer) -> Vec<String> {
    let (program, lead) = restore_program(layer).expect("restore layer");
    let mut argv = vec![program.to_string()];
    argv.extend(lead.iter().map(|s| s.to_string()));
    argv
}

/// The input of one restore process made of several sections, each `*table`, its lines,
/// `COMMIT`; with the (first, last) input line numbers (1-based) each section occupies.
///
/// Public (with [`parse_family_input`] and [`restore_committed`]) so that a journal reader
/// decides which sections of a journalled restore run committed by the engine's own rule.
pub fn family_input(parts: &[(&str, Vec<&str>)]) -> (String, Vec<(usize, usize)>) {
    let mut input = String::new();
    let mut spans = Vec::with_capacity(parts.len());
    let mut line = 1;
    for (table, lines) in parts {
        input.push('*');
        input.push_str(table);
        input.push('\n');
        for l in lines {
            input.push_str(l);
            input.push('\n');
        }
        input.push_str("COMMIT\n");
        let last = line + lines.len() + 1;
        spans.push((line, last));
        line = last + 1;
    }
    (input, spans)
}

/// The section (table) and line an iptables-family command becomes in the batch path's
/// `*-restore` input, exactly as [`family_input`] writes it; `None` for a command the batch
/// path never sends through a restore program.
///
/// Public so that a journal reader can map each line of a journalled restore input back to
/// the transaction command it was made from (the CLI's undo derives every undo argv from that
/// command, identical to the engine's rollback argv, never from the restore text).
pub fn restore_form(layer: Layer, args: &[String]) -> Option<(String, String)> {
    restore_line(layer, args).map(|l| (l.table, l.line))
}

/// A restore input read back by [`parse_family_input`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreInput {
    /// (table, lines) of each `*table … COMMIT` section, in input order.
    pub sections: Vec<(String, Vec<String>)>,
    /// The (first, last) input line (1-based) of each section, as [`family_input`] returns.
    pub spans: Vec<(usize, usize)>,
}

/// The sections of a restore input that [`family_input`] wrote, with its spans; `None` when
/// `input` is not exactly such an input (it is written back and compared, so a section read
/// here is one the program was given).
pub fn parse_family_input(input: &str) -> Option<RestoreInput> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut open = false;
    for line in input.lines() {
        match line.strip_prefix('*') {
            Some(table) if !open => {
                sections.push((table.to_string(), Vec::new()));
                open = true;
            }
            _ if open && line == "COMMIT" => open = false,
            _ if open => sections.last_mut()?.1.push(line.to_string()),
            _ => return None,
        }
    }
    if open {
        return None;
    }
    let parts: Vec<(&str, Vec<&str>)> = sections
        .iter()
        .map(|(t, lines)| (t.as_str(), lines.iter().map(String::as_str).collect()))
        .collect();
    let (written, spans) = family_input(&parts);
    (written == input).then_some(RestoreInput { sections, spans })
}

/// How many leading sections of a restore run with section `spans` (from [`family_input`])
/// committed, as far as its exit tells: all on exit 0; after a failure blaming one of its
/// lines, the sections before that line's section (the program stops there). `None`: a
/// failure that names no line of the input, which only the kernel can settle (the engine asks
/// `--check`).
pub fn restore_committed(spans: &[(usize, usize)], status: i32, stderr: &str) -> Option<usize> {
    if status == 0 {
        return Some(spans.len());
    }
    blamed(spans, stderr).map(|(k, _)| k)
}

/// Where a failed multi-section restore stopped: the section (index into the parts) holding
/// the line the program blamed and that line's offset among the section's commands (`None`
/// for its `*table` or `COMMIT` line). The program exits at the first failure; every section
/// before it committed (each `COMMIT` is its own kernel transaction), the blamed one was
/// rolled back whole, later ones never ran. `None`: the program named no line we know.
pub(crate) fn blamed(spans: &[(usize, usize)], stderr: &str) -> Option<(usize, Option<usize>)> {
    let n = error_line(stderr)?;
    let k = spans.iter().position(|&(a, b)| a <= n && n <= b)?;
    let (a, b) = spans[k];
    Some((k, (n > a && n < b).then(|| n - a - 1)))
}

/// The full argv of the `--check` form of `args` under `layer` (program and its lead options
/// first; see [`iptables_check`]).
pub fn check_argv(layer: Layer, args: &[String]) -> Option<Vec<String>> {
    let check = iptables_check(args)?;
    let (program, lead) = layer.program(Backend::Iptables);
    let mut argv = vec![program.to_string()];
    argv.extend(lead.iter().map(|s| s.to_string()));
    argv.extend(check);
    Some(argv)
}

/// What a failure message of an iptables-family program (or its restore form) says: the
/// object to delete was not there ([`FailureKind::NotFound`]), the one to create exists
/// already ([`FailureKind::Exists`]), or something else.
pub fn failure_kind(stderr: &str) -> FailureKind {
    const NOT_FOUND: [&str; 4] = [
        "No such file or directory",
        "does a matching rule exist",
        "No chain/target/match by that name",
        "does not exist",
    ];
    const EXISTS: [&str; 2] = ["Chain already exists", "File exists"];
    if NOT_FOUND.iter().any(|m| stderr.contains(m)) {
        FailureKind::NotFound
    } else if EXISTS.iter().any(|m| stderr.contains(m)) {
        FailureKind::Exists
    } else {
        FailureKind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn swaps_iptables_creates() {
        assert_eq!(
            iptables_inverse(&v("--table filter --insert LIBVIRT_INP --jump ACCEPT")),
            v("--table filter --delete LIBVIRT_INP --jump ACCEPT")
        );
        assert_eq!(
            iptables_inverse(&v("-A INPUT -j DROP")),
            v("--delete INPUT -j DROP")
        );
        assert_eq!(
            iptables_inverse(&v("-I INPUT 3 -j DROP")),
            v("--delete INPUT -j DROP")
        );
        assert!(iptables_is_create(&v(
            "-t nat -A POSTROUTING -j MASQUERADE"
        )));
        assert!(!iptables_is_create(&v("-N CHAIN")));
        assert!(iptables_is_append(&v(
            "-t nat --append POSTROUTING -j MASQUERADE"
        )));
        assert!(!iptables_is_append(&v("--insert INPUT -j DROP")));
    }

    #[test]
    fn checks_replace_the_one_command_option() {
        assert_eq!(
            iptables_check(&v("iptables -w --delete FWD -s 1.2.3.4 -j ACCEPT")),
            Some(v("iptables -w --check FWD -s 1.2.3.4 -j ACCEPT"))
        );
        assert_eq!(
            iptables_check(&v("--table nat --insert POSTROUTING -j MASQUERADE")),
            Some(v("--table nat --check POSTROUTING -j MASQUERADE"))
        );
        assert_eq!(
            iptables_check(&v("-A INPUT -j DROP")),
            Some(v("--check INPUT -j DROP"))
        );
        assert_eq!(
            iptables_check(&v("-I INPUT 3 -j DROP")),
            Some(v("--check INPUT -j DROP"))
        );
        // Only the command option: a later lookalike is an option's value and stays.
        assert_eq!(
            iptables_check(&v("-D INPUT -m comment --comment -A -j DROP")),
            Some(v("--check INPUT -m comment --comment -A -j DROP"))
        );
        assert_eq!(iptables_check(&v("iptables -w -X FWD")), None);
        assert_eq!(iptables_check(&v("-N CHAIN")), None);
    }

    #[test]
    fn a_delete_by_rule_number_has_no_check() {
        // `--check FWD 2` would be an invalid command, and the number names no rule.
        assert_eq!(iptables_check(&v("-w -D FWD 2")), None);
        assert_eq!(iptables_check(&v("-t nat --delete POSTROUTING 1")), None);
        // A delete by specification still has one.
        assert_eq!(
            iptables_check(&v("-D FWD -p tcp --dport 2 -j DROP")),
            Some(v("--check FWD -p tcp --dport 2 -j DROP"))
        );
    }

    #[test]
    fn recognises_deletes_by_their_command_option() {
        assert!(iptables_is_delete(&v("iptables -w --delete FWD -j ACCEPT")));
        assert!(iptables_is_delete(&v(
            "-t nat -D POSTROUTING -j MASQUERADE"
        )));
        assert!(!iptables_is_delete(&v(
            "-I INPUT -m comment --comment -D -j DROP"
        )));
        assert!(!iptables_is_delete(&v("-X CHAIN")));
    }

    #[test]
    fn restore_lines_quote_and_refuse() {
        let v = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let l = restore_line(
            Layer::Ipv4,
            &v("--table nat --insert LIBVIRT_PRT -j MASQUERADE"),
        )
        .unwrap();
        assert_eq!(
            (l.table.as_str(), l.line.as_str(), l.create),
            ("nat", "--insert LIBVIRT_PRT -j MASQUERADE", true)
        );
        let mut args = v("-A INPUT -m comment --comment");
        args.push("a b".into());
        assert_eq!(
            restore_line(Layer::Ipv6, &args).unwrap().line,
            "-A INPUT -m comment --comment \"a b\""
        );
        assert!(restore_line(Layer::Ipv4, &v("-L INPUT")).is_none());
        assert!(restore_line(Layer::Ipv4, &v("--list-rules")).is_none());
        assert!(restore_line(Layer::Tc, &v("-A X")).is_none());
        assert!(restore_line(Layer::Ipv4, &["-A".into(), "X".into(), "it's".into()]).is_none());
    }

    #[test]
    fn failures_are_classified() {
        assert_eq!(
            failure_kind("iptables: Bad rule (does a matching rule exist in that chain?)."),
            FailureKind::NotFound
        );
        assert_eq!(
            failure_kind("iptables: No chain/target/match by that name."),
            FailureKind::NotFound
        );
        assert_eq!(
            failure_kind("iptables: Chain already exists."),
            FailureKind::Exists
        );
        assert_eq!(failure_kind("iptables: Resource busy"), FailureKind::Other);
    }
}
