//! Does every object a plan would remove still exist in the live ruleset?
//!
//! nftables: list only the tables the plan touches (`nft -a list table FAMILY NAME`) and look
//! for each handle in its table and chain. The listing is parsed tolerantly: only block headers
//! and trailing `# handle N` comments are read, so other software's rules never trip it.
//! iptables family: run the delete's `--check` twin; exit 0 means the rule is there.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use virtfw::executor::Invocation;
use virtfw::nft::{self, TableListing};
use virtfw::{Backend, Executor, Firewall};

use crate::undo::check_of_delete;

/// One object of a plan that is not in the ruleset.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MissingObject {
    /// The plan command that would remove it.
    pub command: String,
    /// Why it counts as missing (the listing's or `--check`'s answer).
    pub reason: String,
}

/// What `verify` found for one plan.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlanCheck {
    /// Objects looked for.
    pub checked: usize,
    /// Commands that are not object deletes (e.g. hand-written flushes): not checkable.
    pub unchecked: usize,
    /// Objects not found.
    pub missing: Vec<MissingObject>,
    /// Why the plan could not be checked (a firewall program could not be run, a listing
    /// failed for another reason than "no such table"): not drift, a problem (exit 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Run `argv`; when it cannot run at all (the program is missing, say) that is recorded as
/// the report's error, never as a missing object.
fn run(
    exec: &dyn Executor,
    argv: &[String],
    error: &RefCell<Option<String>>,
) -> Option<(i32, String, String)> {
    match exec.run(Invocation { argv, stdin: None }) {
        Ok(o) => Some((o.status, o.stdout, o.stderr)),
        Err(e) => {
            error
                .borrow_mut()
                .get_or_insert_with(|| format!("cannot run {}: {e}", argv[0]));
            None
        }
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Verify one removal plan against the ruleset seen through `exec`.
pub(crate) fn verify_plan(fw: &Firewall, exec: &dyn Executor) -> PlanCheck {
    let mut report = PlanCheck::default();
    let error = RefCell::new(None);
    let cmds: Vec<&virtfw::Command> = fw.groups().iter().flat_map(|g| g.actions()).collect();
    match fw.backend() {
        Backend::Nftables => verify_nft(&cmds, exec, &mut report, &error),
        Backend::Iptables => {
            for cmd in cmds {
                let (p, lead) = cmd.layer().program(Backend::Iptables);
                let argv: Vec<String> = std::iter::once(p)
                    .chain(lead.iter().copied())
                    .map(String::from)
                    .chain(cmd.args().iter().cloned())
                    .collect();
                let Some(check) = check_of_delete(&argv) else {
                    report.unchecked += 1;
                    continue;
                };
                report.checked += 1;
                match run(exec, &check, &error) {
                    Some((0, _, _)) => {}
                    Some((_, _, err)) => report.missing.push(MissingObject {
                        command: virtfw::transcript::command_line(&argv),
                        reason: err.trim().to_string(),
                    }),
                    None => {}
                }
            }
        }
        _ => report.unchecked += cmds.len(),
    }
    report.error = error.into_inner();
    if report.error.is_some() {
        // What could be checked says nothing certain: report the error alone.
        report.missing.clear();
    }
    report
}

/// An nft object delete: `delete KIND FAMILY [TABLE [CHAIN]] handle N`.
struct NftDelete<'a> {
    kind: &'a str,
    family: &'a str,
    names: &'a [String],
    handle: u64,
}

fn parse_nft_delete(args: &[String]) -> Option<NftDelete<'_>> {
    if args.first()? != "delete" || args.len() < 5 {
        return None;
    }
    let n = args.len();
    if args[n - 2] != "handle" {
        return None;
    }
    Some(NftDelete {
        kind: &args[1],
        family: &args[2],
        names: &args[3..n - 2],
        handle: args[n - 1].parse().ok()?,
    })
}

type Listings = BTreeMap<(String, String), Option<TableListing>>;

/// `nft -a list table FAMILY NAME`, parsed, listed at most once per table (`None`: no table).
fn listing<'m>(
    listings: &'m mut Listings,
    exec: &dyn Executor,
    family: &str,
    table: &str,
    error: &RefCell<Option<String>>,
) -> Option<&'m TableListing> {
    listings
        .entry((family.to_string(), table.to_string()))
        .or_insert_with(|| {
            let argv = nft::listing_argv(family, table);
            match run(exec, &argv, error) {
                Some((0, text, _)) => Some(nft::parse_listing(&text)),
                Some((_, _, stderr)) if !nft::listing_says_absent(&stderr) => {
                    error.borrow_mut().get_or_insert_with(|| {
                        format!(
                            "{} failed: {}",
                            virtfw::transcript::command_line(&argv),
                            stderr.trim_end()
                        )
                    });
                    None
                }
                _ => None,
            }
        })
        .as_ref()
}

/// The tables of `family` by handle, from one `nft -j list tables FAMILY`: names and handles
/// only, no table's contents ([`nft::parse_tables_json`]). `None` when the listing fails or
/// cannot be read.
fn table_handles(
    exec: &dyn Executor,
    family: &str,
    error: &RefCell<Option<String>>,
) -> Option<BTreeMap<u64, String>> {
    let (status, text, _) = run(exec, &strs(&["nft", "-j", "list", "tables", family]), error)?;
    if status != 0 {
        return None;
    }
    Some(
        nft::parse_tables_json(&text)?
            .into_iter()
            .filter(|t| t.family == family)
            .map(|t| (t.handle, t.name))
            .collect(),
    )
}

fn verify_nft(
    cmds: &[&virtfw::Command],
    exec: &dyn Executor,
    report: &mut PlanCheck,
    error: &RefCell<Option<String>>,
) {
    let deletes: Vec<(String, Option<NftDelete>)> = cmds
        .iter()
        .map(|c| {
            (
                virtfw::transcript::command_line(
                    &std::iter::once("nft".to_string())
                        .chain(c.args().iter().cloned())
                        .collect::<Vec<_>>(),
                ),
                parse_nft_delete(c.args()),
            )
        })
        .collect();
    // The tables the plan names, by family; listed once each.
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in deletes.iter().filter_map(|(_, d)| d.as_ref()) {
        if let Some(t) = d.names.first() {
            names
                .entry(d.family.to_string())
                .or_default()
                .insert(t.clone());
        }
    }
    let mut listings: Listings = BTreeMap::new();
    let mut table_lists: BTreeMap<String, Option<BTreeMap<u64, String>>> = BTreeMap::new();
    for (line, d) in &deletes {
        let Some(d) = d else {
            report.unchecked += 1;
            continue;
        };
        report.checked += 1;
        let found = match (d.kind, d.names) {
            ("table", []) => {
                // A table deleted by handle alone: the tables the plan names (their listings
                // are already there for the plan's chain and rule deletes), else the family's
                // table list with handles. Other software's tables are never listed.
                let named = names.get(d.family).is_some_and(|tables| {
                    tables.iter().any(|t| {
                        listing(&mut listings, exec, d.family, t, error)
                            .is_some_and(|h| h.table == Some(d.handle))
                    })
                });
                named
                    || table_lists
                        .entry(d.family.to_string())
                        .or_insert_with(|| table_handles(exec, d.family, error))
                        .as_ref()
                        .is_some_and(|tables| tables.contains_key(&d.handle))
            }
            ("chain", [t]) => listing(&mut listings, exec, d.family, t, error)
                .is_some_and(|h| h.chains.values().any(|&x| x == d.handle)),
            ("rule", [t, c]) => listing(&mut listings, exec, d.family, t, error)
                .is_some_and(|h| h.rules.get(c).is_some_and(|r| r.contains(&d.handle))),
            _ => {
                report.checked -= 1;
                report.unchecked += 1;
                continue;
            }
        };
        if !found {
            report.missing.push(MissingObject {
                command: line.clone(),
                reason: format!("no {} with handle {} in the live ruleset", d.kind, d.handle),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use virtfw::executor::Output;
    use virtfw::netns::Netns;
    use virtfw::{Layer, ProcessExecutor, TransactionFlags};

    /// Runs for real and remembers every argv.
    struct Recording {
        inner: ProcessExecutor,
        argvs: Mutex<Vec<Vec<String>>>,
    }

    impl Executor for Recording {
        fn run(&self, inv: Invocation<'_>) -> Result<Output, virtfw::ExecError> {
            self.argvs.lock().unwrap().push(inv.argv.to_vec());
            self.inner.run(inv)
        }
    }

    fn table_handle(ns: &Netns, family: &str, table: &str) -> u64 {
        let text = ns
            .run(&["nft", "-a", "list", "table", family, table])
            .unwrap();
        nft::parse_listing(&text).table.unwrap()
    }

    fn plan(deletes: &[Vec<String>]) -> Firewall {
        let mut fw = Firewall::new(Backend::Nftables);
        fw.start_transaction(TransactionFlags::IGNORE_ERRORS);
        for d in deletes {
            fw.add_cmd(Layer::Ipv4, d.clone());
        }
        fw
    }

    #[test]
    fn table_deleted_by_handle_is_found_without_listing_other_tables() {
        let ns = Netns::new("vfw-verify").unwrap();
        for cmd in [
            "add table ip foreign",
            "add chain ip foreign fw { type filter hook forward priority 0; }",
            "add rule ip foreign fw counter accept",
            "add table ip own",
            "add chain ip own c",
            "add rule ip own c accept",
        ] {
            let mut argv = vec!["nft"];
            argv.extend(cmd.split(' '));
            ns.run(&argv).unwrap();
        }
        let own = table_handle(&ns, "ip", "own");
        let foreign = table_handle(&ns, "ip", "foreign");
        let exec = Recording {
            inner: ns.executor().unwrap(),
            argvs: Mutex::new(Vec::new()),
        };
        let del_table = |h: u64| strs(&["delete", "table", "ip", "handle", &h.to_string()]);

        // Only the table delete: resolved from the table list alone.
        let report = verify_plan(&plan(&[del_table(own), del_table(own + 1000)]), &exec);
        assert_eq!((report.checked, report.unchecked), (2, 0));
        assert_eq!(report.missing.len(), 1, "{report:?}");
        assert!(report.missing[0]
            .command
            .ends_with(&format!("handle {}", own + 1000)));
        assert_eq!(
            *exec.argvs.lock().unwrap(),
            [strs(&["nft", "-j", "list", "tables", "ip"])],
            "one table list, no table's contents"
        );

        // The plan names its table in a chain delete: that listing answers, nothing else runs.
        exec.argvs.lock().unwrap().clear();
        let chain = nft::parse_listing(
            &ns.run(&["nft", "-a", "list", "table", "ip", "own"])
                .unwrap(),
        )
        .chains["c"];
        let report = verify_plan(
            &plan(&[
                strs(&["delete", "chain", "ip", "own", "handle", &chain.to_string()]),
                del_table(own),
            ]),
            &exec,
        );
        assert!(report.missing.is_empty(), "{report:?}");
        assert_eq!(
            *exec.argvs.lock().unwrap(),
            [strs(&["nft", "-a", "list", "table", "ip", "own"])]
        );
        // The foreign table is a table with a handle too: a plan that names it by handle
        // finds it, still without listing its rules.
        exec.argvs.lock().unwrap().clear();
        assert!(verify_plan(&plan(&[del_table(foreign)]), &exec)
            .missing
            .is_empty());
        assert!(exec
            .argvs
            .lock()
            .unwrap()
            .iter()
            .all(|a| !a.contains(&"foreign".to_string()) && !a.contains(&"table".to_string())));
    }
}
