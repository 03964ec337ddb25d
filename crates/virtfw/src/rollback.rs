//! Deriving the undo of a command at the moment it runs (libvirt's auto-rollback).
//!
//! nftables objects can only be deleted exactly by handle, and only the kernel knows the handle,
//! so creates run with `-ae` and the echoed `# handle N` becomes the inverse: see [`crate::nft`].
//! The iptables family (this module) deletes by rule specification, so the inverse is the same
//! arguments with the create option swapped for `--delete`.

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
}
