//! The fake's model of a host's ruleset: nft tables, chains, rules and handles per family, and
//! the iptables family's rules per program, table and chain. Serde types, so a test can load a
//! host state and compare with what an apply left ([`FakeExecutor::dump`](super::FakeExecutor::dump)).
//!
//! The nft half follows nft 1.0.6 on Linux 6.1 as a namespace test compares it
//! (tests/fake_model.rs): creates of an existing table succeed silently, of an existing chain
//! echo its old handle, `create` fails "File exists"; a missing table, chain or handle is "No
//! such file or directory"; `delete chain` takes its rules with it and fails "Device or
//! resource busy" only while a rule jumps to it. One difference is on purpose: handles count up
//! across all objects (the kernel counts per table), so tests can name every object by one
//! number; the relative order is the kernel's.

use serde::{Deserialize, Serialize};

use crate::nft::{self, FAMILIES};

/// The whole modelled host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeModel {
    /// nft's ruleset.
    #[serde(default)]
    pub nft: NftModel,
    /// The iptables family's rules.
    #[serde(default)]
    pub xtables: super::xtables::XtModel,
}

/// nft tables in creation order, and the next handle to give out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftModel {
    /// Tables in creation order.
    pub tables: Vec<NftTable>,
    /// The handle the next created object gets.
    pub next_handle: u64,
}

impl Default for NftModel {
    fn default() -> Self {
        NftModel {
            tables: Vec::new(),
            next_handle: 1,
        }
    }
}

/// One nft table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftTable {
    /// `ip`, `ip6`, `inet`, `arp`, `bridge` or `netdev`.
    pub family: String,
    /// The table's name, unquoted.
    pub name: String,
    /// The handle nft echoed for it.
    pub handle: u64,
    /// Chains in creation order.
    pub chains: Vec<NftChain>,
}

/// One nft chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftChain {
    /// The chain's name, unquoted.
    pub name: String,
    /// The handle nft echoed for it.
    pub handle: u64,
    /// A base chain's specification as given (`type filter hook input priority 0; …`, braces
    /// removed).
    #[serde(default)]
    pub spec: Option<String>,
    /// Rules in chain order.
    #[serde(default)]
    pub rules: Vec<NftRule>,
}

/// One nft rule: its handle and its text (the words after the chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRule {
    /// The handle nft echoed for it.
    pub handle: u64,
    /// The rule's words after the chain (and after `position`/`handle`/`index N`).
    pub text: String,
}

/// What one nft command did.
pub(crate) enum Step {
    /// Nothing to echo.
    Silent,
    /// Echo the command with this handle.
    Echo(u64),
    /// Output of a listing.
    Listed(String),
}

/// A failure in nft's words.
fn enoent() -> String {
    "Error: Could not process rule: No such file or directory".to_string()
}

fn unquote(w: &str) -> String {
    w.trim_matches('"').to_string()
}

/// Where a rule goes: `position H`/`handle H` (relative to a rule) or `index N`.
enum Place {
    Default,
    Handle(u64),
    Index(usize),
}

impl NftModel {
    fn table(&self, family: &str, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.family == family && t.name == name)
    }

    fn take_handle(&mut self, fixed: Option<u64>) -> u64 {
        match fixed {
            Some(h) => h,
            None => {
                self.next_handle += 1;
                self.next_handle - 1
            }
        }
    }

    /// Whether any rule of the table jumps or goes to `chain`.
    fn referenced(table: &NftTable, chain: &str) -> bool {
        table.chains.iter().flat_map(|c| &c.rules).any(|r| {
            let w = nft::line_words(&r.text);
            w.windows(2)
                .any(|p| matches!(p[0].as_str(), "jump" | "goto") && unquote(&p[1]) == chain)
        })
    }

    /// Apply one nft command (its words, options first). `lenient`: a chain or rule command
    /// on a table the model does not hold succeeds (creates echo a handle) without being
    /// modelled, for tests that never create their tables.
    pub(crate) fn step(
        &mut self,
        words: &[String],
        fixed: Option<u64>,
        lenient: bool,
        handles: bool,
    ) -> Result<Step, String> {
        let at = words
            .iter()
            .position(|w| !w.starts_with('-'))
            .unwrap_or(words.len());
        let cmd = &words[at..];
        let verb = cmd.first().map(String::as_str).unwrap_or("");
        let object = cmd.get(1).map(String::as_str).unwrap_or("");
        match (verb, object) {
            ("list", "ruleset") => return Ok(Step::Listed(self.listing(None, handles))),
            ("list", "tables") => {
                let mut out = String::new();
                for t in &self.tables {
                    out.push_str(&format!("table {} {}\n", t.family, t.name));
                }
                return Ok(Step::Listed(out));
            }
            ("flush", "ruleset") => {
                self.tables.clear();
                return Ok(Step::Silent);
            }
            _ => {}
        }
        let rest = cmd.get(2..).unwrap_or(&[]);
        let (family, names) = match rest.first() {
            Some(f) if FAMILIES.contains(&f.as_str()) => (f.clone(), &rest[1..]),
            _ => ("ip".to_string(), rest),
        };
        // `delete table F handle H` names the table by handle.
        let table_idx = match names {
            [h, n, ..] if h == "handle" && object == "table" => {
                let n: u64 = n.parse().map_err(|_| enoent())?;
                self.tables
                    .iter()
                    .position(|t| t.family == family && t.handle == n)
            }
            [t, ..] => self.table(&family, &unquote(t)),
            [] => return Err("Error: syntax error, unexpected end of file".to_string()),
        };
        let table_name = names.first().map(|t| unquote(t)).unwrap_or_default();
        match (verb, object) {
            ("add" | "create", "table") => {
                if table_idx.is_some() {
                    return if verb == "create" {
                        Err("Error: Could not process rule: File exists".to_string())
                    } else {
                        Ok(Step::Silent)
                    };
                }
                let handle = self.take_handle(fixed);
                self.tables.push(NftTable {
                    family,
                    name: table_name,
                    handle,
                    chains: Vec::new(),
                });
                Ok(Step::Echo(handle))
            }
            ("delete" | "flush", "table") if table_idx.is_none() && lenient => Ok(Step::Silent),
            ("delete", "table") => {
                let i = table_idx.ok_or_else(enoent)?;
                self.tables.remove(i);
                Ok(Step::Silent)
            }
            ("flush", "table") => {
                let i = table_idx.ok_or_else(enoent)?;
                for c in &mut self.tables[i].chains {
                    c.rules.clear();
                }
                Ok(Step::Silent)
            }
            ("list", "table") => {
                let i = table_idx.ok_or_else(|| {
                    format!("Error: No such file or directory\nlist table {family} {table_name}")
                })?;
                Ok(Step::Listed(self.listing(Some(i), handles)))
            }
            (_, "chain" | "rule") if table_idx.is_none() => {
                if lenient && verb != "list" {
                    let creates = matches!((verb, object), ("add" | "create", "chain"))
                        || matches!((verb, object), ("add" | "insert", "rule"));
                    return Ok(if creates {
                        Step::Echo(self.take_handle(fixed))
                    } else {
                        Step::Silent
                    });
                }
                Err(enoent())
            }
            (_, "chain") => {
                let ti = table_idx.expect("checked above");
                let chain_words = &names[1..];
                self.chain_step(ti, verb, chain_words, fixed)
            }
            ("add" | "insert", "rule") => {
                let ti = table_idx.expect("checked above");
                let chain = names.get(1).map(|c| unquote(c)).ok_or_else(enoent)?;
                let mut body = &names[2..];
                let place = match body {
                    [p, h, tail @ ..] if p == "position" || p == "handle" => {
                        body = tail;
                        Place::Handle(h.parse().map_err(|_| enoent())?)
                    }
                    [p, n, tail @ ..] if p == "index" => {
                        body = tail;
                        Place::Index(n.parse().map_err(|_| enoent())?)
                    }
                    _ => Place::Default,
                };
                let text = body.join(" ");
                let handle_if_ok = self.next_handle;
                let table = &mut self.tables[ti];
                let c = table
                    .chains
                    .iter_mut()
                    .find(|c| c.name == chain)
                    .ok_or_else(enoent)?;
                let at = match place {
                    Place::Default if verb == "add" => c.rules.len(),
                    Place::Default => 0,
                    Place::Handle(h) => {
                        let k = c
                            .rules
                            .iter()
                            .position(|r| r.handle == h)
                            .ok_or_else(enoent)?;
                        if verb == "add" {
                            k + 1
                        } else {
                            k
                        }
                    }
                    Place::Index(n) => {
                        if n >= c.rules.len() {
                            return Err(enoent());
                        }
                        if verb == "add" {
                            n + 1
                        } else {
                            n
                        }
                    }
                };
                let handle = fixed.unwrap_or(handle_if_ok);
                c.rules.insert(at, NftRule { handle, text });
                if fixed.is_none() {
                    self.next_handle += 1;
                }
                Ok(Step::Echo(handle))
            }
            ("delete", "rule") => {
                let ti = table_idx.expect("checked above");
                let chain = names.get(1).map(|c| unquote(c)).ok_or_else(enoent)?;
                let h: u64 = match &names[2..] {
                    [k, h] if k == "handle" => h.parse().map_err(|_| enoent())?,
                    _ => return Err(enoent()),
                };
                let c = self.tables[ti]
                    .chains
                    .iter_mut()
                    .find(|c| c.name == chain)
                    .ok_or_else(enoent)?;
                let k = c
                    .rules
                    .iter()
                    .position(|r| r.handle == h)
                    .ok_or_else(enoent)?;
                c.rules.remove(k);
                Ok(Step::Silent)
            }
            _ => Ok(Step::Silent),
        }
    }

    /// `add|create|delete|flush|list chain` in table `ti`; `rest`: the words after the table.
    fn chain_step(
        &mut self,
        ti: usize,
        verb: &str,
        rest: &[String],
        fixed: Option<u64>,
    ) -> Result<Step, String> {
        let by_handle = match rest {
            [k, h] if k == "handle" => Some(h.parse::<u64>().map_err(|_| enoent())?),
            _ => None,
        };
        let name = rest.first().map(|c| unquote(c)).ok_or_else(enoent)?;
        let found = self.tables[ti].chains.iter().position(|c| match by_handle {
            Some(h) => c.handle == h,
            None => c.name == name,
        });
        match verb {
            "add" | "create" => {
                if let Some(k) = found {
                    return if verb == "create" {
                        Err("Error: Could not process rule: File exists".to_string())
                    } else {
                        Ok(Step::Echo(self.tables[ti].chains[k].handle))
                    };
                }
                let spec = (rest.len() > 1).then(|| {
                    rest[1..]
                        .join(" ")
                        .trim_matches(|c| c == '{' || c == '}' || c == ' ')
                        .to_string()
                });
                let handle = self.take_handle(fixed);
                self.tables[ti].chains.push(NftChain {
                    name,
                    handle,
                    spec,
                    rules: Vec::new(),
                });
                Ok(Step::Echo(handle))
            }
            "delete" => {
                let k = found.ok_or_else(enoent)?;
                let chain = self.tables[ti].chains[k].name.clone();
                if Self::referenced(&self.tables[ti], &chain) {
                    return Err("Error: Could not process rule: Device or resource busy".into());
                }
                self.tables[ti].chains.remove(k);
                Ok(Step::Silent)
            }
            "flush" => {
                let k = found.ok_or_else(enoent)?;
                self.tables[ti].chains[k].rules.clear();
                Ok(Step::Silent)
            }
            _ => Ok(Step::Silent),
        }
    }

    /// nft's text listing of one table (or all), with `# handle N` comments when `handles`.
    fn listing(&self, only: Option<usize>, handles: bool) -> String {
        let h = |n: u64| {
            if handles {
                format!(" # handle {n}")
            } else {
                String::new()
            }
        };
        let mut out = String::new();
        for (i, t) in self.tables.iter().enumerate() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            out.push_str(&format!(
                "table {} {} {{{}\n",
                t.family,
                t.name,
                h(t.handle)
            ));
            for (k, c) in t.chains.iter().enumerate() {
                if k > 0 {
                    out.push('\n');
                }
                out.push_str(&format!("\tchain {} {{{}\n", c.name, h(c.handle)));
                if let Some(spec) = &c.spec {
                    out.push_str(&format!("\t\t{spec}\n"));
                }
                for r in &c.rules {
                    out.push_str(&format!("\t\t{}{}\n", rule_listed(&r.text), h(r.handle)));
                }
                out.push_str("\t}\n");
            }
            out.push_str("}\n");
        }
        out
    }

    /// `nft -j list tables`, in nft's JSON shape.
    pub(crate) fn tables_json(&self) -> String {
        let mut entries = vec![serde_json::json!({"metainfo": {
            "version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1
        }})];
        for t in &self.tables {
            entries.push(serde_json::json!({"table": {
                "family": t.family, "name": t.name, "handle": t.handle
            }}));
        }
        serde_json::json!({ "nftables": entries }).to_string()
    }
}

/// A rule's text as nft lists it: a bare `counter` shows its (zero) counts.
fn rule_listed(text: &str) -> String {
    let words = nft::line_words(text);
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    for (i, w) in words.iter().enumerate() {
        out.push(w);
        if w == "counter" && words.get(i + 1).map(String::as_str) != Some("packets") {
            out.extend(["packets", "0", "bytes", "0"]);
        }
    }
    out.join(" ")
}
