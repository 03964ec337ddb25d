//! What virtfw knows about nft's language and output: the one place that decides what an nft
//! command creates, what undoes it, which handle nft gave it, and what a listing says exists.
//!
//! Every path (per-command apply, batch apply, the CLI's undo of a failed apply, `recover`,
//! `verify`) asks these functions, so they cannot disagree about ownership.
//!
//! * **Words, not arguments.** nft joins its argv with spaces and lexes the result, so
//!   `["add", "rule", "ip t c accept"]` and `["add rule ip t c accept"]` are the same command.
//!   Everything here works on [`words`] of the joined arguments (double-quoted strings are one
//!   word).
//! * **Echo.** A create run with `-ae` prints the created object followed by a trailing
//!   `# handle N`. nft 1.0.6 prints *nothing* for `add table` of an existing table and prints
//!   `add chain … # handle N` with the *existing* chain's handle for `add chain` of an existing
//!   chain. An echo line therefore proves nothing about ownership on its own: [`map_echo`]
//!   combines it with what the table held before (an [`Existing`], from a listing through the
//!   executor) and never guesses.

use std::collections::{BTreeMap, BTreeSet};

use crate::failure::FailureKind;

/// nft address families; a create without one defaults to `ip`, as nft itself does.
pub const FAMILIES: [&str; 6] = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];

/// The kind of nft object a create makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum NftObject {
    /// `table`.
    Table,
    /// `chain`.
    Chain,
    /// `rule`.
    Rule,
}

impl NftObject {
    /// nft's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            NftObject::Table => "table",
            NftObject::Chain => "chain",
            NftObject::Rule => "rule",
        }
    }
}

/// nft's words of `args` joined with spaces (as nft itself joins its argv): whitespace
/// separates, a double-quoted string is one word and keeps its quotes (so a word can be passed
/// back to nft unchanged).
pub fn words(args: &[String]) -> Vec<String> {
    line_words(&args.join(" "))
}

/// nft's words of one command line; see [`words`].
pub fn line_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        if c == '"' {
            quoted = !quoted;
            cur.push(c);
        } else if c.is_whitespace() && !quoted {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A word without its surrounding double quotes (how nft reads a name).
fn name(word: &str) -> &str {
    word.strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .unwrap_or(word)
}

/// A recognised nft create of a table, chain or rule, in nft's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftCreate {
    /// Index of the verb (`add`, `insert`, `create`) among the command's [`words`]; 0 when
    /// no option precedes it.
    pub verb: usize,
    /// The verb as written.
    pub verb_word: String,
    /// What it creates.
    pub object: NftObject,
    /// The family (`ip` when the command names none).
    pub family: String,
    /// The table, as written (quotes kept).
    pub table: String,
    /// The chain (chain and rule creates), as written.
    pub chain: Option<String>,
    /// Whether a rule lands at the back of its chain (`add rule` with no `position`, `index`
    /// or `handle` after the chain).
    pub appends: bool,
}

/// The identity an echo line is matched on: object, family, table, chain (names unquoted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CreateKey {
    /// What was created.
    pub object: NftObject,
    /// Its family.
    pub family: String,
    /// Its table (unquoted).
    pub table: String,
    /// Its chain (unquoted; empty for a table).
    pub chain: String,
}

impl NftCreate {
    /// The key echo lines of this create are matched on.
    pub fn key(&self) -> CreateKey {
        CreateKey {
            object: self.object,
            family: self.family.clone(),
            table: name(&self.table).to_string(),
            chain: self
                .chain
                .as_deref()
                .filter(|_| self.object != NftObject::Table)
                .map(name)
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// `delete <object> <family> [table] [chain] handle N`. The family is always named, so the
    /// inverse stays right when read back later.
    pub fn inverse(&self, handle: u64) -> Vec<String> {
        let mut out = vec![
            "delete".to_string(),
            self.object.as_str().to_string(),
            self.family.clone(),
        ];
        if self.object != NftObject::Table {
            out.push(self.table.clone());
        }
        if self.object == NftObject::Rule {
            out.extend(self.chain.clone());
        }
        out.push("handle".to_string());
        out.push(handle.to_string());
        out
    }

    /// The (family, table) this create touches, with unquoted names.
    pub fn table_key(&self) -> (String, String) {
        (self.family.clone(), name(&self.table).to_string())
    }
}

/// Is this nft command (argv tail) a create of a table, chain or rule? Leading options are
/// skipped (libvirt's rule); the verb and object are read from nft's [`words`].
pub fn nft_create(args: &[String]) -> Option<NftCreate> {
    parse_create(&words(args))
}

/// [`nft_create`] of one line of an `nft -f` batch.
pub fn line_create(line: &str) -> Option<NftCreate> {
    parse_create(&line_words(line))
}

fn parse_create(w: &[String]) -> Option<NftCreate> {
    let verb = w.iter().position(|a| !a.starts_with('-'))?;
    let verb_word = w[verb].as_str();
    if !matches!(verb_word, "add" | "insert" | "create") {
        return None;
    }
    let object = match w.get(verb + 1)?.as_str() {
        "rule" => NftObject::Rule,
        "chain" => NftObject::Chain,
        "table" => NftObject::Table,
        _ => return None,
    };
    let rest = &w[verb + 2..];
    let (family, names) = match rest.first() {
        Some(f) if FAMILIES.contains(&f.as_str()) => (f.clone(), &rest[1..]),
        _ => ("ip".to_string(), rest),
    };
    let table = names.first()?.clone();
    let chain = match object {
        NftObject::Table => None,
        _ => Some(names.get(1)?.clone()),
    };
    let appends = object == NftObject::Rule
        && verb_word == "add"
        && !matches!(
            names.get(2).map(String::as_str),
            Some("position" | "index" | "handle")
        );
    Some(NftCreate {
        verb,
        verb_word: verb_word.to_string(),
        object,
        family,
        table,
        chain,
        appends,
    })
}

/// `args` with the create's `add` verb replaced by `create`, which fails with "File exists"
/// instead of adopting an object someone made after we listed its table.
///
/// The verb is found in nft's words of the joined arguments, as [`nft_create`] finds it (a
/// quote may span items, so an item's own words can disagree). Only the item holding the verb
/// changes; when a quote spans that item's edges the command is given as its words instead,
/// which nft joins back to the same line.
pub fn as_create(args: &[String]) -> Vec<String> {
    let mut all = words(args);
    let Some(k) = all.iter().position(|w| !w.starts_with('-')) else {
        return args.to_vec();
    };
    if all[k] != "add" {
        return args.to_vec();
    }
    // The item holding word k, when its own words are the joined words there (no quote
    // spans its edges): only that item changes, and only its verb.
    for i in 0..args.len() {
        let before = words(&args[..i]).len();
        let own = line_words(&args[i]);
        if before + own.len() > k {
            if before + own.len() == words(&args[..=i]).len() && own[k - before] == "add" {
                let mut item = own;
                item[k - before] = "create".to_string();
                let mut out = args.to_vec();
                out[i] = if item.len() == 1 {
                    item.remove(0)
                } else {
                    item.join(" ")
                };
                return out;
            }
            break;
        }
    }
    all[k] = "create".to_string();
    all
}

/// The handle at the end of one echoed or listed line: its trailing `# handle N`. Only the
/// trailing one counts: a rule's comment may contain `# handle 2`, and a batch echo carries a
/// position `handle P` after the chain name.
pub fn trailing_handle(line: &str) -> Option<u64> {
    let line = line.trim_end();
    let at = line.rfind("# handle ")?;
    let digits = &line[at + "# handle ".len()..];
    // Digits only: `u64::from_str` would also take a sign (`+3`), which nft never prints.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The argv (program first) that lists one table with handles.
pub fn listing_argv(family: &str, table: &str) -> Vec<String> {
    ["nft", "-a", "list", "table", family, table]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// If `argv` (program first, any path) is a [`listing_argv`], its (family, table).
pub fn listing_of(argv: &[String]) -> Option<(String, String)> {
    match argv {
        [p, a, l, t, family, table]
            if p.rsplit('/').next() == Some("nft") && a == "-a" && l == "list" && t == "table" =>
        {
            Some((family.clone(), name(table).to_string()))
        }
        _ => None,
    }
}

/// Whether a failed listing says the table does not exist.
pub fn listing_says_absent(stderr: &str) -> bool {
    failure_kind(stderr) == FailureKind::NotFound
}

/// What an nft failure message says: the object named is not there
/// ([`FailureKind::NotFound`]: "No such file or directory", nft's ENOENT), a `create` met an
/// object that exists ([`FailureKind::Exists`]: "File exists", EEXIST), or something else.
pub fn failure_kind(stderr: &str) -> FailureKind {
    if stderr.contains("No such file or directory") {
        FailureKind::NotFound
    } else if stderr.contains("File exists") {
        FailureKind::Exists
    } else {
        FailureKind::Other
    }
}

/// Handles found in one `nft -a list table …` listing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TableListing {
    /// The table's own handle, when the listing showed it.
    pub table: Option<u64>,
    /// Chain handle by (unquoted) name.
    pub chains: BTreeMap<String, u64>,
    /// Rule handles by chain name.
    pub rules: BTreeMap<String, BTreeSet<u64>>,
}

impl TableListing {
    /// Every chain and rule handle of the table.
    pub fn object_handles(&self) -> BTreeSet<u64> {
        self.chains
            .values()
            .copied()
            .chain(self.rules.values().flatten().copied())
            .collect()
    }
}

/// Net brace depth change of a line, ignoring quoted strings and comments.
fn brace_delta(line: &str) -> i32 {
    let mut d = 0;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => break,
            '{' if !quoted => d += 1,
            '}' if !quoted => d -= 1,
            _ => {}
        }
    }
    d
}

/// Parse `nft -a list table …` output. Tolerant: only block headers and trailing
/// `# handle N` comments are read, so other software's sets, maps and rules never trip it.
pub fn parse_listing(text: &str) -> TableListing {
    let mut out = TableListing::default();
    let mut depth: i32 = 0;
    let mut chain: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        let w = line_words(line);
        let delta = brace_delta(line);
        match depth {
            0 if w.first().map(String::as_str) == Some("table") => {
                out.table = trailing_handle(line)
            }
            // A block opens at depth 1: a chain (remember it) or a set, map, … (skip it).
            1 if delta > 0 => {
                chain = None;
                if let (Some("chain"), Some(n)) = (w.first().map(String::as_str), w.get(1)) {
                    let n = name(n).to_string();
                    if let Some(h) = trailing_handle(line) {
                        out.chains.insert(n.clone(), h);
                    }
                    chain = Some(n);
                }
            }
            2 => {
                if let (Some(c), Some(h)) = (&chain, trailing_handle(line)) {
                    out.rules.entry(c.clone()).or_default().insert(h);
                }
            }
            _ => {}
        }
        depth = (depth + delta).max(0);
        if depth <= 1 && delta < 0 {
            chain = None;
        }
    }
    out
}

/// One table of `nft -j list tables` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTable {
    /// Its family.
    pub family: String,
    /// Its name.
    pub name: String,
    /// Its handle.
    pub handle: u64,
}

/// The shape of nft's JSON output this crate reads; unknown keys and other entries (metainfo,
/// chains, other software's objects) are ignored.
#[derive(serde::Deserialize)]
struct JsonDoc {
    #[serde(default)]
    nftables: Vec<JsonEntry>,
}

#[derive(serde::Deserialize)]
struct JsonEntry {
    #[serde(default)]
    table: Option<JsonTable>,
}

#[derive(serde::Deserialize)]
struct JsonTable {
    family: Option<String>,
    name: Option<String>,
    handle: Option<u64>,
}

/// The tables in `nft -j list tables [FAMILY]` output (JSON because nft 1.0.6 prints no table
/// handles in the text form of `list tables`, even with `-a`). `None` when the text is not
/// nft's JSON document; entries without a family, name or handle are skipped.
pub fn parse_tables_json(text: &str) -> Option<Vec<ListedTable>> {
    let doc: JsonDoc = serde_json::from_str(text).ok()?;
    Some(
        doc.nftables
            .into_iter()
            .filter_map(|e| {
                let t = e.table?;
                Some(ListedTable {
                    family: t.family?,
                    name: t.name?,
                    handle: t.handle?,
                })
            })
            .collect(),
    )
}

/// What existed before an apply, per listed table, plus what the apply itself created since:
/// the facts that decide whether an `add table`/`add chain` made something.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Existing {
    /// (family, table) → its chains, or `None` when the table did not exist.
    tables: BTreeMap<(String, String), Option<BTreeSet<String>>>,
}

/// A listing that neither showed the table nor said it is absent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("listing table {family} {table} failed (status {status}): {stderr}")]
pub struct ListingFailed {
    /// The table's family.
    pub family: String,
    /// The table.
    pub table: String,
    /// nft's exit status.
    pub status: i32,
    /// What nft wrote to standard error.
    pub stderr: String,
}

impl Existing {
    /// The (family, table) that must be listed before `create` runs, if any: table and chain
    /// creates need facts; rules always echo their own new handle.
    pub fn to_list(&self, create: &NftCreate) -> Option<(String, String)> {
        let key = create.table_key();
        (create.object != NftObject::Rule && !self.tables.contains_key(&key)).then_some(key)
    }

    /// Whether (family, table) was listed.
    pub fn listed(&self, family: &str, table: &str) -> bool {
        self.tables
            .contains_key(&(family.to_string(), table.to_string()))
    }

    /// Record the outcome of [`listing_argv`] for (family, table): exit 0 with its output, or
    /// a failure that says the table is absent. Any other failure is an error (and records
    /// nothing). A table listed before keeps its first facts.
    pub fn record_listing(
        &mut self,
        family: &str,
        table: &str,
        status: i32,
        stdout: &str,
        stderr: &str,
    ) -> Result<(), ListingFailed> {
        let facts = if status == 0 {
            Some(parse_listing(stdout).chains.into_keys().collect())
        } else if listing_says_absent(stderr) {
            None
        } else {
            return Err(ListingFailed {
                family: family.to_string(),
                table: table.to_string(),
                status,
                stderr: stderr.trim_end().to_string(),
            });
        };
        self.tables
            .entry((family.to_string(), table.to_string()))
            .or_insert(facts);
        Ok(())
    }

    /// Whether the object `create` makes exists already (before the apply or made by it);
    /// `None` when its table was never listed. Rules are never "existing".
    pub fn exists(&self, create: &NftCreate) -> Option<bool> {
        if create.object == NftObject::Rule {
            return Some(false);
        }
        let chains = self.tables.get(&create.table_key())?;
        Some(match (create.object, chains) {
            (_, None) => false,
            (NftObject::Table, Some(_)) => true,
            (_, Some(chains)) => chains.contains(name(create.chain.as_deref().unwrap_or(""))),
        })
    }

    /// Remember that this apply made what `create` creates (done by [`map_echo`] for every
    /// create it finds ours; a batch planner uses it on a scratch copy).
    pub fn note_created(&mut self, create: &NftCreate) {
        // A rule says nothing about its table (nft would have refused it in a missing one).
        if create.object == NftObject::Rule {
            return;
        }
        let (family, table) = create.table_key();
        let Some(entry) = self.tables.get_mut(&(family, table)) else {
            return;
        };
        let chains = entry.get_or_insert_with(BTreeSet::new);
        if create.object == NftObject::Chain {
            chains.insert(name(create.chain.as_deref().unwrap_or("")).to_string());
        }
    }
}

/// What the echo of one nft run says about one of its creates.
/// Deliberately exhaustive: code that undoes a create must decide for every answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// It created the object with this handle: its inverse is `delete … handle N`.
    Ours(u64),
    /// The table or chain existed before (or this apply made it earlier): no inverse.
    Existed,
    /// The echo does not account for it although it would have made a new object (echo
    /// incomplete or garbled, or the table's facts are unknown): the object may exist with an
    /// unknown handle.
    Unaccounted,
}

/// Map the stdout of one successful `nft -ae` run (one create, or a batch of `creates` in
/// input order) to each create's [`Echo`], and note what was created in `existing`.
///
/// Echo lines (those with a trailing `# handle N`; `# new generation` lines are skipped) are
/// matched to creates by [`CreateKey`] in order. A table or chain that existed consumes a
/// matching echo line if there is one (nft 1.0.6 echoes an existing chain with its old handle)
/// and is [`Echo::Existed`] either way.
pub fn map_echo(creates: &[NftCreate], existing: &mut Existing, stdout: &str) -> Vec<Echo> {
    let echoes: Vec<(Option<CreateKey>, u64)> = stdout
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| trailing_handle(l).map(|h| (line_create(l).map(|c| c.key()), h)))
        .collect();
    let mut next = 0;
    let mut out = Vec::with_capacity(creates.len());
    for create in creates {
        let key = create.key();
        let matched = echoes
            .get(next)
            .filter(|(k, _)| k.as_ref() == Some(&key))
            .map(|&(_, h)| h);
        if matched.is_some() {
            next += 1;
        }
        let echo = match (existing.exists(create), matched) {
            (Some(true), _) => Echo::Existed,
            (Some(false), Some(h)) => Echo::Ours(h),
            // A table or chain whose table was never listed: an echo cannot tell whether it
            // is the old handle or a new one.
            (None, _) | (Some(false), None) => Echo::Unaccounted,
        };
        if matches!(echo, Echo::Ours(_)) {
            existing.note_created(create);
        }
        out.push(echo);
    }
    out
}

/// A removal command `delete <rule|chain|table> <family> [table] [chain] handle N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftDelete {
    /// What it deletes.
    pub object: NftObject,
    /// The family.
    pub family: String,
    /// The table (chains and rules).
    pub table: Option<String>,
    /// The handle.
    pub handle: u64,
}

/// The delete-by-handle command `args` is, if it is one (the form every removal plan of nft
/// creates holds).
pub fn parse_nft_delete(args: &[String]) -> Option<NftDelete> {
    if args.first()? != "delete" || args.len() < 5 {
        return None;
    }
    let (object, names) = match args[1].as_str() {
        "rule" => (NftObject::Rule, 2),
        "chain" => (NftObject::Chain, 1),
        "table" => (NftObject::Table, 0),
        _ => return None,
    };
    if args.len() != 3 + names + 2 || args[3 + names] != "handle" {
        return None;
    }
    Some(NftDelete {
        object,
        family: args[2].clone(),
        table: (names > 0).then(|| args[3].clone()),
        handle: args[4 + names].parse().ok()?,
    })
}

#[cfg(test)]
mod tests;
