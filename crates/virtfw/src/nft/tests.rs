//! nft words, creates, inverses, echoes and listings.

use super::*;

fn v(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn listed(tables: &[(&str, &str, Option<&str>)]) -> Existing {
    let mut e = Existing::default();
    for (f, t, listing) in tables {
        match listing {
            Some(text) => e.record_listing(f, t, 0, text, "").unwrap(),
            None => e
                .record_listing(f, t, 1, "", "Error: No such file or directory\n")
                .unwrap(),
        }
    }
    e
}

#[test]
fn words_join_items_and_keep_quotes() {
    let one = v("add rule ip q c counter accept");
    let several = vec![
        "add".to_string(),
        "rule".into(),
        "ip q c counter accept".into(),
    ];
    let whole = vec!["add rule ip q c counter accept".to_string()];
    assert_eq!(words(&several), one);
    assert_eq!(words(&whole), one);
    assert_eq!(
        line_words(r#"add rule ip t c comment "a  b" accept"#),
        vec!["add", "rule", "ip", "t", "c", "comment", "\"a  b\"", "accept"]
    );
    let c1 = nft_create(&one).unwrap();
    assert_eq!(nft_create(&several).unwrap(), c1);
    assert_eq!(nft_create(&whole).unwrap(), c1);
    assert_eq!(c1.inverse(7), v("delete rule ip q c handle 7"));
}

#[test]
fn recognises_creates_and_builds_inverses() {
    let c = nft_create(&v("-c add table ip t")).unwrap();
    assert_eq!((c.verb, c.object), (1, NftObject::Table));
    assert_eq!(nft_create(&v("list table ip t")), None);
    assert_eq!(nft_create(&v("add set ip t s")), None);
    assert_eq!(nft_create(&v("add")), None);
    let c = nft_create(&v("add chain ip6 libvirt_network guest_input")).unwrap();
    assert_eq!(c.inverse(7), v("delete chain ip6 libvirt_network handle 7"));
    let c = nft_create(&v("add table ip libvirt_network")).unwrap();
    assert_eq!(c.inverse(3), v("delete table ip handle 3"));
    let c = nft_create(&v("add rule t c accept")).unwrap();
    assert_eq!(c.inverse(4), v("delete rule ip t c handle 4"));
    let c = nft_create(&v(
        "insert rule ip libvirt_network guest_nat counter return",
    ))
    .unwrap();
    assert_eq!(
        c.inverse(5309),
        v("delete rule ip libvirt_network guest_nat handle 5309")
    );
}

#[test]
fn recognises_appends() {
    let append = |s: &str| nft_create(&v(s)).unwrap().appends;
    assert!(append("add rule ip t c accept"));
    assert!(append("add rule t c ip saddr 1.2.3.4 accept"));
    assert!(append("-c add rule ip6 t c counter"));
    assert!(!append("insert rule ip t c accept"));
    assert!(!append("add rule ip t c position 4 accept"));
    assert!(!append("add rule t c index 0 accept"));
    assert!(!append("add rule inet t c handle 7 accept"));
    assert!(!append("add chain ip t c"));
    let joined = vec![
        "add".to_string(),
        "rule".into(),
        "ip t c position 3 drop".into(),
    ];
    assert!(!nft_create(&joined).unwrap().appends);
}

#[test]
fn create_verb_replaces_only_the_verb() {
    assert_eq!(as_create(&v("add table ip t")), v("create table ip t"));
    assert_eq!(
        as_create(&[
            "add chain ip t c".to_string(),
            "{ type filter hook input priority 0; }".into()
        ]),
        vec![
            "create chain ip t c".to_string(),
            "{ type filter hook input priority 0; }".into()
        ]
    );
    assert_eq!(as_create(&v("-c add table t")), v("-c create table t"));
}

#[test]
fn trailing_handle_only() {
    assert_eq!(
        trailing_handle("add rule ip T C handle 2 ip saddr 10.2.0.2 accept # handle 3"),
        Some(3)
    );
    assert_eq!(
        trailing_handle(r##"add rule ip t c accept comment "x # handle 2" # handle 9"##),
        Some(9)
    );
    assert_eq!(
        trailing_handle(r##"add rule ip t c accept comment "# handle 2""##),
        None
    );
    assert_eq!(trailing_handle("nothing"), None);
}

const LISTING: &str = "table inet myweb { # handle 5\n\
        \tset s { # handle 2\n\t\ttype ipv4_addr\n\t\telements = { 1.2.3.4 }\n\t}\n\
        \tchain input { # handle 1\n\t\ttype filter hook input priority filter; policy accept;\n\
        \t\tip saddr @s counter packets 0 bytes 0 accept comment \"# handle 99\" # handle 3\n\t}\n}\n";

#[test]
fn listing_parse_is_tolerant() {
    let l = parse_listing(LISTING);
    assert_eq!(l.table, Some(5));
    assert_eq!(l.chains.get("input"), Some(&1));
    assert_eq!(l.rules["input"].iter().copied().collect::<Vec<_>>(), [3]);
    assert!(!l.chains.contains_key("s"));
    let text = "table ip t { # handle 1\n\tset s { # handle 4\n\t\ttype ipv4_addr\n\t\telements = { 1.1.1.1 }\n\t}\n\n\tchain c { # handle 1\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tip saddr { 1.2.3.4, 5.6.7.8 } accept # handle 3\n\t\tmeta mark 1 comment \"odd { text\" # handle 9\n\t}\n\tchain d { # handle 5\n\t\taccept # handle 6\n\t}\n}\n";
    let h = parse_listing(text);
    assert_eq!(h.table, Some(1));
    assert_eq!(h.chains.get("c"), Some(&1));
    assert_eq!(h.chains.get("d"), Some(&5));
    assert_eq!(h.rules["c"].iter().copied().collect::<Vec<_>>(), vec![3, 9]);
    assert_eq!(h.rules["d"].iter().copied().collect::<Vec<_>>(), vec![6]);
    assert!(!h.rules.contains_key("s"));
}

/// nft 1.0.6, per command: an existing table echoes nothing, an existing chain echoes its
/// old handle; both are "existed", a new rule in it is ours.
#[test]
fn existing_table_and_chain_are_not_ours() {
    let mut e = listed(&[("inet", "myweb", Some(LISTING))]);
    let table = nft_create(&v("add table inet myweb")).unwrap();
    assert_eq!(map_echo(&[table], &mut e, ""), [Echo::Existed]);
    let chain = nft_create(&v("add chain inet myweb input")).unwrap();
    assert_eq!(
            map_echo(
                std::slice::from_ref(&chain),
                &mut e,
                "add chain inet myweb input { type filter hook input priority filter; policy accept; } # handle 1\n# new generation 9 by process 1 (nft)\n"
            ),
            [Echo::Existed]
        );
    // A future nft that echoes nothing for it: the same answer.
    assert_eq!(map_echo(&[chain], &mut e, ""), [Echo::Existed]);
    let rule = nft_create(&v("add rule inet myweb input accept")).unwrap();
    assert_eq!(
        map_echo(
            &[rule],
            &mut e,
            "add rule inet myweb input accept # handle 4\n"
        ),
        [Echo::Ours(4)]
    );
}

#[test]
fn batch_echo_skips_silent_creates_and_positions() {
    let mut e = listed(&[(
        "ip",
        "T",
        Some("table ip T { # handle 1\n\tchain C { # handle 2\n\t}\n}\n"),
    )]);
    let creates: Vec<NftCreate> = [
        "add table ip T",
        "add chain ip T C",
        "add chain ip T D { type filter hook forward priority 0; policy accept; }",
        "add rule ip T D ip saddr 10.1.0.1 accept",
        "add rule ip T C handle 2 accept comment \"# handle 2\"",
    ]
    .iter()
    .map(|s| line_create(s).unwrap())
    .collect();
    let echo = "add chain ip T C # handle 2\n\
            add chain ip T D { type filter hook forward priority filter; policy accept; } # handle 3\n\
            add rule ip T D ip saddr 10.1.0.1 accept # handle 4\n\
            add rule ip T C handle 2 accept comment \"# handle 2\" # handle 5\n\
            # new generation 14 by process 3990 (nft)\n";
    assert_eq!(
        map_echo(&creates, &mut e, echo),
        [
            Echo::Existed,
            Echo::Existed,
            Echo::Ours(3),
            Echo::Ours(4),
            Echo::Ours(5)
        ]
    );
    // What this apply made is remembered: a second `add chain` of D is not ours either.
    let again = line_create("add chain ip T D").unwrap();
    assert_eq!(
        map_echo(&[again], &mut e, "add chain ip T D # handle 3\n"),
        [Echo::Existed]
    );
}

#[test]
fn incomplete_echo_is_unaccounted_never_guessed() {
    let mut e = listed(&[("ip", "t", None)]);
    let creates: Vec<NftCreate> = ["add table ip t", "add chain ip t c", "add rule ip t c drop"]
        .iter()
        .map(|s| line_create(s).unwrap())
        .collect();
    // The echo file lost its tail (e.g. ENOSPC): only the table is accounted for.
    assert_eq!(
        map_echo(&creates, &mut e.clone(), "add table ip t # handle 8\n"),
        [Echo::Ours(8), Echo::Unaccounted, Echo::Unaccounted]
    );
    // Garbled: no line matches.
    assert_eq!(
        map_echo(&creates, &mut e.clone(), "garbage # handle 3\n"),
        [Echo::Unaccounted; 3]
    );
    // A table never listed: an echo cannot prove it new.
    let mut blind = Existing::default();
    assert_eq!(
        map_echo(&creates[..1], &mut blind, "add table ip t # handle 8\n"),
        [Echo::Unaccounted]
    );
    assert_eq!(
            map_echo(&creates, &mut e, "add table ip t # handle 8\nadd chain ip t c # handle 1\nadd rule ip t c drop # handle 2\n"),
            [Echo::Ours(8), Echo::Ours(1), Echo::Ours(2)]
        );
}

#[test]
fn table_list_json_is_read_tolerantly() {
    let t = parse_tables_json(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "ip", "name": "a", "handle": 4, "flags": ["dormant"]}}, {"table": {"family": "ip6", "name": "b", "handle": 5}}, {"table": {"family": "ip", "name": "c"}}, {"chain": {}}]}"#,
        )
        .unwrap();
    let got: Vec<(&str, &str, u64)> = t
        .iter()
        .map(|t| (t.family.as_str(), t.name.as_str(), t.handle))
        .collect();
    assert_eq!(got, [("ip", "a", 4), ("ip6", "b", 5)]);
    assert_eq!(parse_tables_json("not json"), None);
}

#[test]
fn listing_failure_other_than_absent_is_an_error() {
    let mut e = Existing::default();
    assert!(e
        .record_listing("ip", "t", 1, "", "Error: Operation not permitted")
        .is_err());
    assert!(!e.listed("ip", "t"));
    assert_eq!(
        listing_of(&listing_argv("inet", "myweb")),
        Some(("inet".to_string(), "myweb".to_string()))
    );
}
