//! Deriving the undo of a command at the moment it runs (libvirt's auto-rollback).
//!
//! nftables objects can only be deleted exactly by handle, and only the kernel knows the handle,
//! so creates run with `-ae` and the echoed `# handle N` becomes the inverse. The iptables family
//! deletes by rule specification, so the inverse is the same arguments with the create option
//! swapped for `--delete`.

/// nft address families; a create without one defaults to `ip`, as nft itself does.
const NFT_FAMILIES: [&str; 6] = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];

/// The kind of nft object a create makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftObject {
    Table,
    Chain,
    Rule,
}

impl NftObject {
    pub fn as_str(self) -> &'static str {
        match self {
            NftObject::Table => "table",
            NftObject::Chain => "chain",
            NftObject::Rule => "rule",
        }
    }
}

/// A recognised nft create: where its verb is and what it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftCreate {
    /// Index of the verb (`add`, `insert`, `create`) in the stored args.
    pub verb: usize,
    pub object: NftObject,
}

/// Is this nft command a create of a rule, chain or table (libvirt's rule: skip leading options,
/// look at the verb and the object type)?
pub fn nft_create(args: &[String]) -> Option<NftCreate> {
    if args.len() < 2 {
        return None;
    }
    let verb = args[..args.len() - 1]
        .iter()
        .position(|a| !a.starts_with('-'))?;
    if !matches!(args[verb].as_str(), "add" | "insert" | "create") {
        return None;
    }
    let object = match args.get(verb + 1)?.as_str() {
        "rule" => NftObject::Rule,
        "chain" => NftObject::Chain,
        "table" => NftObject::Table,
        _ => return None,
    };
    Some(NftCreate { verb, object })
}

/// Does this nft create append a rule (`add rule` with no `position`, `index` or `handle`
/// after the chain), so that it lands at the back of its chain?
pub fn nft_is_append(args: &[String], create: NftCreate) -> bool {
    if create.object != NftObject::Rule || args[create.verb] != "add" {
        return false;
    }
    // nft joins its arguments with spaces: look at words, not arguments.
    let words: Vec<&str> = args[create.verb + 2..]
        .iter()
        .flat_map(|a| a.split_whitespace())
        .collect();
    let names = match words.first() {
        Some(f) if NFT_FAMILIES.contains(f) => 3,
        _ => 2,
    };
    !matches!(
        words.get(names).copied(),
        Some("position" | "index" | "handle")
    )
}

/// The handle nft echoed: the digits after the first `# handle ` (single-command output).
pub fn parse_handle(stdout: &str) -> Option<u64> {
    let at = stdout.find("# handle ")?;
    let digits: &str = &stdout[at + "# handle ".len()..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The handle at the end of one echoed line of a batch: the trailing `# handle N`. Batch echo
/// puts a *position* `handle P` after the chain name, which must not be mistaken for it.
pub fn parse_trailing_handle(line: &str) -> Option<u64> {
    let line = line.trim_end();
    let at = line.rfind("# handle ")?;
    line[at + "# handle ".len()..].parse().ok()
}

/// `delete <object> <family> [table] [chain] handle N` for a create and its handle.
///
/// The family may be omitted in the create (nft then uses `ip`); the inverse always names it, so
/// it stays correct when read back later.
pub fn nft_inverse(args: &[String], create: NftCreate, handle: u64) -> Vec<String> {
    let rest = &args[create.verb + 2..];
    let (family, names) = match rest.first() {
        Some(f) if NFT_FAMILIES.contains(&f.as_str()) => (f.as_str(), &rest[1..]),
        _ => ("ip", rest),
    };
    let keep = match create.object {
        NftObject::Table => 0,
        NftObject::Chain => 1,
        NftObject::Rule => 2,
    };
    let mut inverse = vec![
        "delete".to_string(),
        create.object.as_str().to_string(),
        family.to_string(),
    ];
    inverse.extend(names.iter().take(keep).cloned());
    inverse.push("handle".to_string());
    inverse.push(handle.to_string());
    inverse
}

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
    fn recognises_creates() {
        assert_eq!(
            nft_create(&v("insert rule ip t c accept")),
            Some(NftCreate {
                verb: 0,
                object: NftObject::Rule
            })
        );
        assert_eq!(
            nft_create(&v("-c add table ip t")),
            Some(NftCreate {
                verb: 1,
                object: NftObject::Table
            })
        );
        assert_eq!(nft_create(&v("list table ip t")), None);
        assert_eq!(nft_create(&v("add set ip t s")), None);
        assert_eq!(nft_create(&v("delete rule ip t c handle 3")), None);
        assert_eq!(nft_create(&v("add")), None);
    }

    #[test]
    fn builds_inverses() {
        let args = v("insert rule ip libvirt_network guest_nat counter return");
        let c = nft_create(&args).unwrap();
        assert_eq!(
            nft_inverse(&args, c, 5309),
            v("delete rule ip libvirt_network guest_nat handle 5309")
        );
        let args = v("add chain ip6 libvirt_network guest_input");
        assert_eq!(
            nft_inverse(&args, nft_create(&args).unwrap(), 7),
            v("delete chain ip6 libvirt_network handle 7")
        );
        let args = v("add table ip libvirt_network");
        assert_eq!(
            nft_inverse(&args, nft_create(&args).unwrap(), 3),
            v("delete table ip handle 3")
        );
        let args = v("add rule t c accept");
        assert_eq!(
            nft_inverse(&args, nft_create(&args).unwrap(), 4),
            v("delete rule ip t c handle 4")
        );
    }

    #[test]
    fn parses_handles() {
        assert_eq!(
            parse_handle(
                "add rule ip t c accept # handle 12\n# new generation 4 by process 9 (nft)\n"
            ),
            Some(12)
        );
        assert_eq!(parse_handle("nothing here"), None);
        assert_eq!(parse_handle("# handle x"), None);
        assert_eq!(
            parse_trailing_handle("add rule ip T C handle 2 ip saddr 10.2.0.2 accept # handle 3"),
            Some(3)
        );
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
    fn recognises_appends() {
        let append = |s: &str| {
            let args = v(s);
            nft_is_append(&args, nft_create(&args).unwrap())
        };
        assert!(append("add rule ip t c accept"));
        assert!(append("add rule t c ip saddr 1.2.3.4 accept"));
        assert!(append("-c add rule ip6 t c counter"));
        assert!(!append("insert rule ip t c accept"));
        assert!(!append("add rule ip t c position 4 accept"));
        assert!(!append("add rule t c index 0 accept"));
        assert!(!append("add rule inet t c handle 7 accept"));
        assert!(!append("add chain ip t c"));
        assert!(!append("add table ip t"));
        let joined = vec![
            "add".to_string(),
            "rule".into(),
            "ip t c position 3 drop".into(),
        ];
        assert!(!nft_is_append(&joined, nft_create(&joined).unwrap()));
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
