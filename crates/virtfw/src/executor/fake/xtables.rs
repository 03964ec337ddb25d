//! The fake's model of the iptables family (`iptables`, `ip6tables`, `ebtables`): per program,
//! table and chain, the rules as their rule specification, with the tools' answers for the
//! commands the engine uses (`-I`/`-A`/`-D`/`--check`/`-N`/`-X`/`-F`/`-P`/`-S`) and
//! `*-restore --noflush`, whose `*table … COMMIT` sections commit one by one.
//!
//! Rule specifications are compared as words after spelling long options short (`--jump` is
//! `-j`, …); the real tools compare parsed rules, so two specs that differ otherwise (an
//! address with and without `/32`) are two rules here. Jump targets are not resolved.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Per program (`iptables`, `ip6tables`, `ebtables`), per table, per chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XtModel {
    /// program → table → chain name → chain.
    pub programs: BTreeMap<String, BTreeMap<String, BTreeMap<String, XtChain>>>,
}

/// One chain: its policy (built-in chains) and its rules in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XtChain {
    /// A built-in chain's policy; `None` for a user chain.
    #[serde(default)]
    pub policy: Option<String>,
    /// Rule specifications in chain order (long options spelled short).
    pub rules: Vec<String>,
}

/// The built-in chains of a program's table.
fn builtin(program: &str, table: &str) -> &'static [&'static str] {
    match (program, table) {
        ("ebtables", "filter") => &["INPUT", "FORWARD", "OUTPUT"],
        ("ebtables", "nat") => &["PREROUTING", "OUTPUT", "POSTROUTING"],
        ("ebtables", "broute") => &["BROUTING"],
        (_, "filter") => &["INPUT", "FORWARD", "OUTPUT"],
        (_, "nat") => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        (_, "mangle") => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        (_, "raw") => &["PREROUTING", "OUTPUT"],
        (_, "security") => &["INPUT", "FORWARD", "OUTPUT"],
        _ => &[],
    }
}

fn short(opt: &str) -> &str {
    match opt {
        "--jump" => "-j",
        "--goto" => "-g",
        "--source" => "-s",
        "--destination" => "-d",
        "--protocol" => "-p",
        "--in-interface" => "-i",
        "--out-interface" => "-o",
        "--match" => "-m",
        o => o,
    }
}

/// A program's table with its built-in chains made on first touch, as iptables-nft does.
fn table_mut<'m>(
    model: &'m mut XtModel,
    program: &str,
    table: &str,
) -> Option<&'m mut BTreeMap<String, XtChain>> {
    let builtins = builtin(program, table);
    if builtins.is_empty() {
        return None;
    }
    let t = model
        .programs
        .entry(program.to_string())
        .or_default()
        .entry(table.to_string())
        .or_default();
    for b in builtins {
        t.entry(b.to_string()).or_insert_with(|| XtChain {
            policy: Some("ACCEPT".to_string()),
            rules: Vec::new(),
        });
    }
    Some(t)
}

/// The tool's failure: status and message (without the program prefix).
pub(crate) type XtError = (i32, String);

fn no_chain() -> XtError {
    (1, "No chain/target/match by that name.".to_string())
}

/// Run one command (the words after the program and its `-w`/`--concurrent`) on the model;
/// returns its standard output. `lenient`: a chain the model does not hold, or a rule to delete
/// it does not hold, is accepted (for tests that never created them).
pub(crate) fn step(
    model: &mut XtModel,
    program: &str,
    args: &[String],
    lenient: bool,
) -> Result<String, XtError> {
    let mut table = "filter".to_string();
    let mut command: Option<(String, Option<String>)> = None;
    let mut number: Option<usize> = None;
    let mut spec: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-w" | "--wait" | "--concurrent" => {}
            "-W" | "--wait-interval" => i += 1,
            "-t" | "--table" => {
                table = args.get(i + 1).cloned().unwrap_or_default();
                i += 1;
            }
            "-A" | "--append" | "-I" | "--insert" | "-D" | "--delete" | "-C" | "--check" | "-N"
            | "--new-chain" | "-X" | "--delete-chain" | "-F" | "--flush" | "-P" | "--policy"
            | "-S" | "--list-rules" | "-L" | "--list" => {
                let verb = match a {
                    "--append" => "-A",
                    "--insert" => "-I",
                    "--delete" => "-D",
                    "--check" => "-C",
                    "--new-chain" => "-N",
                    "--delete-chain" => "-X",
                    "--flush" => "-F",
                    "--policy" => "-P",
                    "--list-rules" => "-S",
                    "--list" => "-L",
                    v => v,
                };
                let chain = args.get(i + 1).filter(|c| !c.starts_with('-')).cloned();
                if chain.is_some() {
                    i += 1;
                }
                if matches!(verb, "-I" | "-D") {
                    if let Some(n) = args.get(i + 1).and_then(|n| n.parse::<usize>().ok()) {
                        number = Some(n);
                        i += 1;
                    }
                }
                command = Some((verb.to_string(), chain));
            }
            _ => spec.push(short(a).to_string()),
        }
        i += 1;
    }
    let Some((verb, chain)) = command else {
        return Err((2, "no command specified".to_string()));
    };
    let rule = spec.join(" ");
    let t = table_mut(model, program, &table).ok_or_else(|| {
        (
            3,
            format!("can't initialize {program} table `{table}': Table does not exist"),
        )
    })?;
    let chain_name = chain.clone().unwrap_or_default();
    let builtins = builtin(program, &table);
    match verb.as_str() {
        "-N" => {
            if t.contains_key(&chain_name) {
                if lenient {
                    return Ok(String::new());
                }
                return Err((1, "Chain already exists.".to_string()));
            }
            t.insert(chain_name, XtChain::default());
            Ok(String::new())
        }
        "-X" => match chain {
            None => {
                t.retain(|name, c| builtins.contains(&name.as_str()) || !c.rules.is_empty());
                Ok(String::new())
            }
            Some(name) => {
                if builtins.contains(&name.as_str()) {
                    return Err(no_chain());
                }
                match t.get(&name) {
                    None if lenient => Ok(String::new()),
                    None => Err(no_chain()),
                    Some(c) if !c.rules.is_empty() => Err((
                        4,
                        format!("CHAIN_DEL failed (Device or resource busy): chain {name}"),
                    )),
                    Some(_) => {
                        t.remove(&name);
                        Ok(String::new())
                    }
                }
            }
        },
        "-F" => {
            match chain {
                None => t.values_mut().for_each(|c| c.rules.clear()),
                Some(name) => match t.get_mut(&name) {
                    Some(c) => c.rules.clear(),
                    None if lenient => {}
                    None => return Err(no_chain()),
                },
            }
            Ok(String::new())
        }
        "-P" => {
            match t.get_mut(&chain_name) {
                Some(c) => c.policy = spec.first().cloned(),
                None if lenient => {}
                None => return Err(no_chain()),
            }
            Ok(String::new())
        }
        "-S" | "-L" => {
            let mut out = String::new();
            for (name, c) in t.iter() {
                if chain.as_ref().is_some_and(|n| n != name) {
                    continue;
                }
                match &c.policy {
                    Some(p) => out.push_str(&format!("-P {name} {p}\n")),
                    None => out.push_str(&format!("-N {name}\n")),
                }
            }
            for (name, c) in t.iter() {
                if chain.as_ref().is_some_and(|n| n != name) {
                    continue;
                }
                for r in &c.rules {
                    out.push_str(&format!("-A {name} {r}\n"));
                }
            }
            Ok(out)
        }
        "-A" | "-I" | "-D" | "-C" => {
            let Some(c) = t.get_mut(&chain_name) else {
                return if lenient {
                    Ok(String::new())
                } else if verb == "-D" || verb == "-C" {
                    Err((
                        1,
                        "Bad rule (does a matching rule exist in that chain?).".to_string(),
                    ))
                } else {
                    Err(no_chain())
                };
            };
            match verb.as_str() {
                "-A" => c.rules.push(rule),
                "-I" => {
                    let at = number.unwrap_or(1).saturating_sub(1);
                    if at > c.rules.len() {
                        return Err((1, "Index of insertion too big.".to_string()));
                    }
                    c.rules.insert(at, rule);
                }
                _ => {
                    let found = match number {
                        Some(n) if spec.is_empty() => (n >= 1 && n <= c.rules.len()).then(|| n - 1),
                        _ => c.rules.iter().position(|r| *r == rule),
                    };
                    match (found, verb.as_str()) {
                        (Some(k), "-D") => {
                            c.rules.remove(k);
                        }
                        (Some(_), _) => {}
                        (None, "-D") if lenient => {}
                        (None, _) => {
                            return Err((
                                1,
                                "Bad rule (does a matching rule exist in that chain?).".to_string(),
                            ))
                        }
                    }
                }
            }
            Ok(String::new())
        }
        _ => Ok(String::new()),
    }
}

/// Words of one restore line: whitespace separates, double quotes group.
fn restore_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `*-restore --noflush [--test]` of `input` for `program` (`iptables`, …): each section is
/// applied to a copy of its table and kept only at its `COMMIT`; the first failing line rolls
/// its section back and stops the run, naming the line as the tools do. `test`: nothing is
/// kept.
pub(crate) fn restore(
    model: &mut XtModel,
    program: &str,
    input: &str,
    test: bool,
    lenient: bool,
) -> Result<(), XtError> {
    let restore = format!("{program}-restore");
    let mut section: Option<(String, XtModel)> = None;
    for (n, raw) in input.lines().enumerate() {
        let n = n + 1;
        let line = raw.trim();
        let fail = |msg: &str| (1, format!("{restore}: line {n} failed: {msg}"));
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            if builtin(program, t).is_empty() {
                return Err(fail("Table does not exist"));
            }
            section = Some((t.to_string(), model.clone()));
            continue;
        }
        let Some((table, work)) = section.as_mut() else {
            return Err(fail("no table specified"));
        };
        if line == "COMMIT" {
            if !test {
                *model = std::mem::take(work);
            }
            section = None;
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            // `:CHAIN POLICY [p:b]`: a new user chain is made, an existing one flushed.
            let name = decl.split_whitespace().next().unwrap_or_default();
            let t = table_mut(work, program, table).expect("checked at *table");
            let c = t.entry(name.to_string()).or_default();
            c.rules.clear();
            continue;
        }
        let mut args = vec!["-t".to_string(), table.clone()];
        args.extend(restore_words(line));
        step(work, program, &args, lenient).map_err(|(_, msg)| fail(&msg))?;
    }
    if section.is_some() {
        return Err((
            1,
            format!(
                "{restore}: COMMIT expected at line {}",
                input.lines().count() + 1
            ),
        ));
    }
    Ok(())
}
