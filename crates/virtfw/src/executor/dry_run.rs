//! The executor behind `virtfw apply --dry-run` and `virtfw network plan`: runs nothing,
//! records everything, answers as a fresh host on which every command succeeds.
//!
//! It is deliberately not [`FakeExecutor`](super::FakeExecutor). The fake is a test double: it
//! models nft's failures ("File exists", a missing handle, a non-empty chain), can be scripted
//! to fail and can be loaded with someone else's ruleset, all of which a test wants and a
//! production dry run must never do — a dry run that fails because of a model's opinion, or
//! that changes when the fake grows, would tell the operator something the kernel never said.
//! [`DryRun`] has exactly one behaviour, fixed here: every command succeeds; nothing exists
//! before the run (a listing of a table answers nft's "No such file or directory"); what the
//! run itself created exists afterwards (so the engine's own "does this table exist yet?"
//! listing stays consistent within one plan); creates run with `-e` echo a counting placeholder
//! handle so that the removal plan of the dry run can be shown.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Executor, Invocation, Output};
use crate::error::ExecError;
use crate::nft::{self, NftObject};
use crate::transcript;

/// One recorded run: the argv (program first) and the standard input it was given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Recorded {
    /// Program first, as the engine passed it.
    pub argv: Vec<String>,
    /// The standard input (a batch), if any.
    pub stdin: Option<String>,
}

/// What the dry run itself created, so later listings in the same run show it.
#[derive(Default)]
struct Created {
    /// (family, table) → (table handle, chain name → handle).
    tables: BTreeMap<(String, String), (u64, BTreeMap<String, u64>)>,
    next_handle: u64,
}

impl Created {
    /// Note one create and return the placeholder handle it echoes (an existing table echoes
    /// nothing and an existing chain its old handle, as nft 1.0.6 does).
    fn create(&mut self, create: &nft::NftCreate) -> Option<u64> {
        let key = create.table_key();
        let mut fresh = || {
            self.next_handle += 1;
            self.next_handle
        };
        match create.object {
            NftObject::Table => {
                if self.tables.contains_key(&key) {
                    return None;
                }
                let h = fresh();
                self.tables.insert(key, (h, BTreeMap::new()));
                Some(h)
            }
            NftObject::Chain => {
                let chain = create.key().chain;
                if let Some(&h) = self.tables.get(&key).and_then(|t| t.1.get(&chain)) {
                    return Some(h);
                }
                let h = fresh();
                if let Some(t) = self.tables.get_mut(&key) {
                    t.1.insert(chain, h);
                }
                Some(h)
            }
            NftObject::Rule => Some(fresh()),
        }
    }

    /// `nft -a list table F T`: what this run created, or nft's answer for an absent table.
    fn listing(&self, family: &str, table: &str) -> Output {
        let Some((handle, chains)) = self.tables.get(&(family.to_string(), table.to_string()))
        else {
            return absent(&format!("list table {family} {table}"));
        };
        let mut out = format!("table {family} {table} {{ # handle {handle}\n");
        for (name, h) in chains {
            out.push_str(&format!("\tchain {name} {{ # handle {h}\n\t}}\n"));
        }
        out.push_str("}\n");
        Output::ok(out)
    }

    /// `nft -j list tables`: the tables this run created.
    fn tables_json(&self) -> Output {
        let tables: Vec<serde_json::Value> = self
            .tables
            .iter()
            .map(|((family, name), (handle, _))| {
                serde_json::json!({"table": {"family": family, "name": name, "handle": handle}})
            })
            .collect();
        Output::ok(serde_json::json!({ "nftables": tables }).to_string())
    }
}

/// nft's failure for something that does not exist.
fn absent(what: &str) -> Output {
    Output {
        status: 1,
        stdout: String::new(),
        stderr: format!("Error: No such file or directory\n{what}\n"),
    }
}

/// An [`Executor`] that records every invocation and answers as a fresh host on which
/// everything succeeds (see the module documentation for why it is not the fake).
///
/// It answers `false` to [`Executor::supports_batch`], so the engine shows libvirt's
/// per-command sequence, which is what [`DryRun::transcript`] renders.
#[derive(Default)]
pub struct DryRun {
    log: Mutex<Vec<Recorded>>,
    created: Mutex<Created>,
}

impl DryRun {
    /// A dry run that has recorded nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every invocation so far, in order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// Every argv so far, in order.
    pub fn commands(&self) -> Vec<Vec<String>> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.argv.clone())
            .collect()
    }

    /// What ran, in libvirt's transcript format (`crate::transcript`).
    pub fn transcript(&self) -> String {
        transcript::transcript(&self.commands())
    }

    fn answer(&self, argv: &[String], stdin: Option<&[u8]>) -> Output {
        if argv.first().map(|p| p.rsplit('/').next() == Some("nft")) != Some(true) {
            return Output::default();
        }
        let mut created = self.created.lock().unwrap();
        if let Some((family, table)) = nft::listing_of(argv) {
            return created.listing(&family, &table);
        }
        let options: Vec<&str> = argv[1..]
            .iter()
            .map(String::as_str)
            .take_while(|a| a.starts_with('-'))
            .collect();
        let echo = options
            .iter()
            .any(|o| matches!(*o, "-e" | "-ae" | "--echo"));
        let words = nft::words(&argv[1..]);
        let cmd: Vec<&str> = words
            .iter()
            .map(String::as_str)
            .skip_while(|w| w.starts_with('-'))
            .collect();
        match cmd.as_slice() {
            ["list", "tables", ..] if options.contains(&"-j") => return created.tables_json(),
            ["list", "table", family, table] => {
                return created.listing(family, table.trim_matches('"'))
            }
            ["list", ..] => return absent(&cmd.join(" ")),
            _ => {}
        }
        let lines: Vec<String> = match stdin {
            Some(input) if options.contains(&"-f") => String::from_utf8_lossy(input)
                .lines()
                .map(str::to_string)
                .collect(),
            _ => vec![argv[1..].join(" ")],
        };
        let mut stdout = String::new();
        for line in &lines {
            let Some(create) = nft::line_create(line) else {
                continue;
            };
            if let Some(h) = created.create(&create) {
                if echo {
                    let words = nft::line_words(line);
                    stdout.push_str(&format!(
                        "{} # handle {h}\n",
                        words[create.verb..].join(" ")
                    ));
                }
            }
        }
        Output::ok(stdout)
    }
}

impl Executor for DryRun {
    fn run(&self, invocation: Invocation<'_>) -> Result<Output, ExecError> {
        self.log.lock().unwrap().push(Recorded {
            argv: invocation.argv.to_vec(),
            stdin: invocation
                .stdin
                .map(|s| String::from_utf8_lossy(s).into_owned()),
        });
        Ok(self.answer(invocation.argv, invocation.stdin))
    }

    fn supports_batch(&self) -> bool {
        false
    }
}
