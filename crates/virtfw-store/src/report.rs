//! What each store operation reports: one serde type per operation.
//!
//! These types are the interface of the store's results, not of one program: the CLI's
//! `--json` output is their serialisation and its text output their [`Display`](fmt::Display),
//! and the coming daemon API is to answer with the same types. A field added here shows up
//! everywhere at once; a field renamed breaks the CLI's `--json` users, so don't.
//!
//! Outcomes that are not errors of an operation but still matter to a caller — drift found by
//! verify, a corrupt plan in a listing, journals recovery kept — are methods of the report
//! ([`VerifyReport::drift`], [`ListReport::corrupt`], [`RecoverReport::error`]), so that the
//! report is complete (printed, serialised) even when the caller then fails.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::StoreError;
use crate::recover::{Settled, Unsettled};
use crate::verify::PlanCheck;

/// An operation that failed, as a report: what the CLI prints with `--json` on failure.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ErrorReport {
    /// The error's message.
    pub error: String,
    /// Its stable number ([`StoreError::exit_code`]).
    pub exit_code: i32,
}

impl From<&StoreError> for ErrorReport {
    fn from(err: &StoreError) -> Self {
        ErrorReport {
            error: err.to_string(),
            exit_code: err.exit_code(),
        }
    }
}

impl fmt::Display for ErrorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "virtfw: error: {}", self.error)
    }
}

/// A transaction applied and its removal plan stored ([`crate::Store::apply`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ApplyReport {
    /// The plan's name.
    pub applied: String,
    /// `nftables` or `iptables`.
    pub backend: String,
    /// Groups of the transaction.
    pub groups: usize,
    /// Commands of the transaction.
    pub commands: usize,
    /// Commands of the stored removal plan.
    pub removal_commands: usize,
    /// The namespace it was applied in (`None`: the caller's).
    pub netns: Option<String>,
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "applied {}: {} group(s), {} command(s); removal plan stored ({} command(s))",
            self.applied, self.groups, self.commands, self.removal_commands
        )
    }
}

/// The commands an apply or a remove would run; nothing ran.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DryRunReport {
    /// Always `true` (tells a JSON reader what this is).
    pub dry_run: bool,
    /// The argv of each command, in order.
    pub commands: Vec<Vec<String>>,
    /// The same in libvirt's transcript format.
    pub transcript: String,
}

impl fmt::Display for DryRunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.transcript)
    }
}

/// What the kernel said about a transaction it was asked to check without committing it
/// ([`crate::Store::apply_check`], `virtfw apply --check`).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct KernelCheckReport {
    /// The transaction's name.
    pub check: String,
    /// Whether the kernel accepted every command it was asked about.
    pub clean: bool,
    /// The engine's per-group, per-command verdicts.
    pub report: virtfw::check::CheckReport,
}

impl KernelCheckReport {
    pub(crate) fn new(name: &str, report: virtfw::check::CheckReport) -> Self {
        KernelCheckReport {
            check: name.to_string(),
            clean: report.is_clean(),
            report,
        }
    }
}

impl fmt::Display for KernelCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use virtfw::check::Verdict;
        let (mut accepted, mut unchecked, mut refused) = (0, 0, 0);
        for group in &self.report.groups {
            for cmd in &group.commands {
                match &cmd.verdict {
                    Verdict::Accepted | Verdict::IgnoredFailure { .. } => accepted += 1,
                    Verdict::Refused { message } => {
                        refused += 1;
                        writeln!(
                            f,
                            "group {} command {}: refused: {}: {}",
                            group.group, cmd.index, cmd.command, message
                        )?;
                    }
                    Verdict::NotCheckable { reason } => {
                        unchecked += 1;
                        writeln!(
                            f,
                            "group {} command {}: not checkable ({reason}): {}",
                            group.group, cmd.index, cmd.command
                        )?;
                    }
                    _ => {}
                }
            }
        }
        if self.clean {
            write!(
                f,
                "{}: the kernel accepts all {accepted} checked command(s); nothing was changed",
                self.check
            )?;
        } else {
            write!(
                f,
                "{}: the kernel refuses {refused} command(s); nothing was changed",
                self.check
            )?;
        }
        if unchecked > 0 {
            write!(f, " ({unchecked} not checkable)")?;
        }
        Ok(())
    }
}

/// A stored plan run and forgotten ([`crate::Store::remove`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RemoveReport {
    /// The plan's name.
    pub removed: String,
    /// Commands of the plan.
    pub commands: usize,
    /// Deletes whose object was already gone.
    pub missing: usize,
    /// Deletes that failed for another reason (ignored, as libvirt does).
    pub failed: usize,
}

impl fmt::Display for RemoveReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed {}: {} command(s), {} object(s) were already gone",
            self.removed, self.commands, self.missing
        )?;
        if self.failed > 0 {
            write!(
                f,
                ", {} delete(s) failed for another reason (ignored)",
                self.failed
            )?;
        }
        Ok(())
    }
}

/// A plan dropped without running it ([`crate::Store::forget`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ForgetReport {
    /// The plan's name.
    pub forgotten: String,
    /// What the plan was, if it could be read.
    pub plan: ForgottenPlan,
}

/// What a forgotten plan was.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum ForgottenPlan {
    /// It could be read.
    Readable {
        /// Its backend.
        backend: String,
        /// Its command count.
        commands: usize,
        /// Its namespace.
        netns: Option<String>,
    },
    /// It could not (a corrupt plan is exactly what one wants to forget).
    Unreadable {
        /// Why.
        error: String,
    },
}

impl fmt::Display for ForgetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.forgotten;
        match &self.plan {
            ForgottenPlan::Readable {
                backend, commands, ..
            } => write!(
                f,
                "forgot plan {name} ({backend} backend, {commands} command(s); nothing was run)"
            ),
            ForgottenPlan::Unreadable { error } => {
                write!(
                    f,
                    "forgot unreadable plan {name} ({error}; nothing was run)"
                )
            }
        }
    }
}

/// The stored plans ([`crate::Store::list`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ListReport {
    /// One row per plan file, by name.
    pub plans: Vec<PlanRow>,
    /// Interrupted operations waiting for [`crate::Store::recover`].
    pub pending_journals: usize,
}

/// One plan of a [`ListReport`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum PlanRow {
    /// A plan that could be read.
    Stored(PlanSummary),
    /// A plan file that could not (a state problem the caller should report).
    Corrupt {
        /// The plan's name.
        name: String,
        /// Why it could not be read.
        error: String,
    },
}

/// A stored plan, summarised.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PlanSummary {
    /// Its name.
    pub name: String,
    /// Its backend.
    pub backend: String,
    /// Groups of the transaction applied.
    pub groups: usize,
    /// Commands of the transaction applied.
    pub commands: usize,
    /// The namespace it applies to.
    pub netns: Option<String>,
    /// When it was applied (seconds since the epoch).
    pub created: u64,
    /// Seconds since then, at the time of the listing.
    pub age_seconds: u64,
    /// Why its rules are gone (another boot, namespace), if they are.
    pub stale: Option<String>,
}

impl ListReport {
    /// The plans that could not be read: `(name, why)`.
    pub fn corrupt(&self) -> impl Iterator<Item = (&str, &str)> {
        self.plans.iter().filter_map(|row| match row {
            PlanRow::Corrupt { name, error } => Some((name.as_str(), error.as_str())),
            PlanRow::Stored(_) => None,
        })
    }
}

/// An age in the largest unit that keeps two or three digits.
fn age(seconds: u64) -> String {
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

impl fmt::Display for ListReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:<9} {:>6} {:>8} {:<20} {:>6}  STATUS",
            "NAME", "BACKEND", "GROUPS", "COMMANDS", "NETNS", "AGE"
        )?;
        for row in &self.plans {
            match row {
                PlanRow::Stored(p) => writeln!(
                    f,
                    "{:<24} {:<9} {:>6} {:>8} {:<20} {:>6}  {}",
                    p.name,
                    p.backend,
                    p.groups,
                    p.commands,
                    p.netns.as_deref().unwrap_or("-"),
                    age(p.age_seconds),
                    p.stale
                        .as_ref()
                        .map_or("ok".to_string(), |r| format!("stale: {r}"))
                )?,
                PlanRow::Corrupt { name, error } => writeln!(f, "{name:<24} CORRUPT ({error})")?,
            }
        }
        if self.pending_journals > 0 {
            writeln!(
                f,
                "{} interrupted operation(s) pending: run `virtfw recover`",
                self.pending_journals
            )?;
        }
        Ok(())
    }
}

/// One stored plan ([`crate::Store::show`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ShowReport {
    /// Its name.
    pub name: String,
    /// Its backend.
    pub backend: String,
    /// Its namespace.
    pub netns: Option<String>,
    /// When it was applied (seconds since the epoch).
    pub created: u64,
    /// Why its rules are gone, if they are.
    pub stale: Option<String>,
    /// The removal plan, in libvirt's `<firewall>` XML.
    pub removal: String,
}

impl fmt::Display for ShowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.removal)
    }
}

/// What [`crate::Store::verify`] found for every plan it looked at.
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// One entry per plan.
    pub plans: Vec<PlanVerification>,
    /// Objects missing over all plans.
    pub missing: usize,
    /// The first plan that could not be checked (unreadable, or its listing failed): a state
    /// problem to report after the report itself. Not serialised (each plan says its own).
    #[serde(skip)]
    pub problem: Option<StoreError>,
}

impl VerifyReport {
    /// Whether objects of a plan are missing from the live ruleset.
    pub fn drift(&self) -> bool {
        self.missing > 0
    }
}

/// One plan of a [`VerifyReport`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum PlanVerification {
    /// The plan could not be read.
    Unreadable {
        /// Its name.
        name: String,
        /// Why.
        error: String,
    },
    /// The plan is stale: its handles may name someone else's objects; not checked.
    Stale {
        /// Its name.
        name: String,
        /// Why it is stale.
        stale: String,
    },
    /// The plan was checked (or its check failed: [`PlanCheck::error`]).
    Checked {
        /// Its name.
        name: String,
        /// What the check found.
        report: PlanCheck,
    },
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for plan in &self.plans {
            match plan {
                PlanVerification::Unreadable { name, error } => {
                    writeln!(f, "{name}: ERROR {error}")?
                }
                PlanVerification::Stale { name, stale } => {
                    writeln!(f, "{name}: STALE ({stale}); not checked")?
                }
                PlanVerification::Checked { name, report } => {
                    if let Some(e) = &report.error {
                        writeln!(f, "{name}: ERROR {e}")?;
                    } else if report.missing.is_empty() {
                        write!(f, "{name}: ok ({} object(s) present", report.checked)?;
                        if report.unchecked > 0 {
                            write!(f, ", {} command(s) not checkable", report.unchecked)?;
                        }
                        writeln!(f, ")")?;
                    } else {
                        writeln!(
                            f,
                            "{name}: DRIFT, {} of {} object(s) missing",
                            report.missing.len(),
                            report.checked
                        )?;
                        for m in &report.missing {
                            writeln!(f, "  missing: {} ({})", m.command, m.reason)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// What [`crate::Store::recover`] did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct RecoverReport {
    /// The journals settled.
    pub recovered: Vec<Settled>,
    /// The journals that could not be settled and are kept.
    pub unsettled: Vec<Unsettled>,
}

impl RecoverReport {
    /// Whether recovery left nothing pending.
    pub fn is_clean(&self) -> bool {
        self.unsettled.is_empty()
    }

    /// The state problem of journals left unsettled, if any were (a caller that must not go
    /// on over a pending journal stops here).
    pub fn error(&self) -> Option<StoreError> {
        (!self.unsettled.is_empty()).then_some(StoreError::Unsettled {
            count: self.unsettled.len(),
        })
    }
}

impl fmt::Display for RecoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.recovered.is_empty() && self.unsettled.is_empty() {
            writeln!(f, "nothing to recover")?;
        }
        for s in &self.recovered {
            writeln!(
                f,
                "{} {} ({}): {}; {} command(s) run, {} object(s) already absent",
                s.kind, s.name, s.op_id, s.action, s.commands, s.missing
            )?;
        }
        for u in &self.unsettled {
            writeln!(
                f,
                "journal {} NOT settled, kept: {} (`virtfw recover --drop {}` discards it)",
                u.op_id, u.error, u.op_id
            )?;
        }
        Ok(())
    }
}

/// A journal discarded without running anything ([`crate::Store::recover_drop`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DropReport {
    /// The journal's id.
    pub dropped: String,
    /// What its operation was, if its header could be read.
    pub journal: DroppedJournal,
}

/// The operation of a dropped journal.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum DroppedJournal {
    /// Its header could be read.
    Readable {
        /// The operation (`apply`, `network-start`, …).
        kind: &'static str,
        /// The plan's or network's name.
        name: String,
        /// Its backend.
        backend: String,
        /// Its namespace.
        netns: Option<String>,
        /// When it began (seconds since the epoch).
        created: u64,
    },
    /// It could not.
    Unreadable {
        /// Why.
        error: String,
    },
}

impl fmt::Display for DropReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.dropped;
        match &self.journal {
            DroppedJournal::Readable {
                kind,
                name,
                backend,
                netns,
                ..
            } => write!(
                f,
                "dropped journal {id}: {kind} {name} ({backend} backend, netns {}); nothing was run, whatever it changed in the kernel stays",
                netns.as_deref().unwrap_or("-")
            ),
            DroppedJournal::Unreadable { error } => {
                write!(f, "dropped unreadable journal {id} ({error}); nothing was run")
            }
        }
    }
}

/// A network started ([`crate::Store::network_start`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NetworkStartReport {
    /// Its name.
    pub network: String,
    /// Always `true`.
    pub started: bool,
    /// The backend its rules were made with.
    pub backend: String,
    /// Its bridge.
    pub bridge: String,
    /// Whether the store created the bridge (and so deletes it at stop).
    pub created_bridge: bool,
    /// Rules of its removal plan.
    pub rules: usize,
    /// Where its status is kept.
    pub status_file: PathBuf,
}

impl fmt::Display for NetworkStartReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "network {} started ({}, bridge {}{}, {} rules)",
            self.network,
            self.backend,
            self.bridge,
            if self.created_bridge { " created" } else { "" },
            self.rules
        )
    }
}

/// A network stopped ([`crate::Store::network_stop`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NetworkStopReport {
    /// Its name.
    pub network: String,
    /// Always `true`.
    pub stopped: bool,
    /// Its backend.
    pub backend: String,
    /// Whether its bridge was deleted (the store had created it).
    pub deleted_bridge: bool,
    /// Rules already gone.
    pub missing: usize,
    /// Deletes that failed for another reason (ignored).
    pub failed: usize,
}

impl fmt::Display for NetworkStopReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "network {} stopped ({} rule(s) were already gone)",
            self.network, self.missing
        )
    }
}

/// A network's status dropped without running anything ([`crate::Store::network_forget`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NetworkForgetReport {
    /// Its name.
    pub network: String,
    /// Always `true`.
    pub forgotten: bool,
}

impl fmt::Display for NetworkForgetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "forgot network {} (nothing was run)", self.network)
    }
}

/// Networks reloaded ([`crate::Store::network_reload`]).
#[derive(Debug, Serialize)]
#[non_exhaustive]
pub struct NetworkReloadReport {
    /// One entry per network, in order.
    pub reloaded: Vec<NetworkReloaded>,
    /// The first network whose rules could not be added again (its status is stored without
    /// a removal plan): the error to report after the report.
    #[serde(skip)]
    pub failed: Option<StoreError>,
}

/// One network of a [`NetworkReloadReport`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NetworkReloaded {
    /// Its name.
    pub network: String,
    /// The backend its rules were made with.
    pub backend: String,
    /// Why adding its rules again failed, if it did.
    pub error: Option<String>,
}

impl fmt::Display for NetworkReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.reloaded {
            write!(f, "network {} reloaded ({})", r.network, r.backend)?;
            if let Some(e) = &r.error {
                write!(f, ": FAILED: {e}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Whether a network's rules are all in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkHealth {
    /// Every rule of its removal plan is present.
    AllPresent,
    /// Some are missing ([`NetworkInfo::missing`]).
    Drift,
    /// The status is stale (another boot or namespace): not checked.
    Stale,
    /// The rules could not be looked at (the reason).
    Unchecked(String),
}

/// One running network, and what a look at its rules found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NetworkInfo {
    /// Its name.
    pub network: String,
    /// Its bridge.
    pub bridge: String,
    /// Its forward mode.
    pub forward: String,
    /// Its backend.
    pub backend: String,
    /// Whether its status holds a removal plan.
    pub stored_plan: bool,
    /// The namespace it runs in.
    pub netns: Option<String>,
    /// Whether the store created its bridge.
    pub created_bridge: bool,
    /// Whether its status file carries virtfw's identity stamp (libvirt's files do not).
    pub stamped: bool,
    /// Why it is stale, if it is.
    pub stale: Option<String>,
    /// Rules found (`None`: not checked).
    pub rules_present: Option<usize>,
    /// Rules of its plan (`None`: not checked).
    pub rules_total: Option<usize>,
    /// The missing rules' commands, or the one reason they could not be checked.
    pub missing: Vec<String>,
    /// Whether every rule is present.
    pub all_present: bool,
    /// The same, as a decision. Not serialised (the fields above say it).
    #[serde(skip)]
    pub health: NetworkHealth,
}

impl fmt::Display for NetworkInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<16} {:<10} {:<8} {:<9} ",
            self.network, self.bridge, self.forward, self.backend
        )?;
        match (&self.health, self.rules_present, self.rules_total) {
            (NetworkHealth::Stale, _, _) => write!(
                f,
                "STALE ({}): not checked; `virtfw network stop --forget {}` drops it",
                self.stale.as_deref().unwrap_or(""),
                self.network
            ),
            (_, Some(p), Some(t)) if p == t => write!(f, "all {t} rules present"),
            (_, Some(p), Some(t)) => write!(f, "{p}/{t} rules present (DRIFT)"),
            _ => write!(
                f,
                "cannot check: {}",
                self.missing.first().map_or("", String::as_str)
            ),
        }
    }
}

/// The running networks ([`crate::Store::network_list`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NetworkListReport {
    /// One per network, by name.
    pub networks: Vec<NetworkInfo>,
}

impl fmt::Display for NetworkListReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<16} {:<10} {:<8} {:<9} RULES",
            "NAME", "BRIDGE", "FORWARD", "BACKEND"
        )?;
        for n in &self.networks {
            writeln!(f, "{n}")?;
        }
        Ok(())
    }
}

/// One network's status ([`crate::Store::network_status`]): [`NetworkInfo`], and in text each
/// missing rule on a line of its own.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
#[non_exhaustive]
pub struct NetworkStatusReport(pub NetworkInfo);

impl fmt::Display for NetworkStatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        if matches!(
            self.0.health,
            NetworkHealth::AllPresent | NetworkHealth::Drift
        ) {
            for m in &self.0.missing {
                write!(f, "\n  missing: {m}")?;
            }
        }
        Ok(())
    }
}

/// The commands libvirt would run for a network definition ([`crate::network_plan`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NetworkPlanReport {
    /// The network's name.
    pub network: String,
    /// The backend planned for.
    pub backend: String,
    /// The commands, in libvirt's transcript format.
    pub transcript: String,
}

impl fmt::Display for NetworkPlanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.transcript)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort();
        k
    }

    /// The JSON fields are the CLI's `--json` interface (scripts read them): they stay as
    /// they were when the CLI built them by hand.
    #[test]
    fn reports_serialise_to_the_clis_json_fields() {
        let applied = serde_json::to_value(ApplyReport {
            applied: "web".into(),
            backend: "nftables".into(),
            groups: 2,
            commands: 5,
            removal_commands: 3,
            netns: None,
        })
        .unwrap();
        assert_eq!(
            keys(&applied),
            [
                "applied",
                "backend",
                "commands",
                "groups",
                "netns",
                "removal_commands"
            ]
        );
        let list = serde_json::to_value(ListReport {
            plans: vec![
                PlanRow::Stored(PlanSummary {
                    name: "a".into(),
                    backend: "iptables".into(),
                    groups: 1,
                    commands: 2,
                    netns: Some("ns".into()),
                    created: 10,
                    age_seconds: 5,
                    stale: None,
                }),
                PlanRow::Corrupt {
                    name: "b".into(),
                    error: "bad".into(),
                },
            ],
            pending_journals: 1,
        })
        .unwrap();
        assert_eq!(
            keys(&list["plans"][0]),
            [
                "age_seconds",
                "backend",
                "commands",
                "created",
                "groups",
                "name",
                "netns",
                "stale"
            ]
        );
        assert_eq!(list["plans"][1], json!({"name": "b", "error": "bad"}));
        assert_eq!(list["pending_journals"], 1);
        let verify = serde_json::to_value(VerifyReport {
            plans: vec![PlanVerification::Stale {
                name: "a".into(),
                stale: "another boot".into(),
            }],
            missing: 0,
            problem: Some(StoreError::Failed("not serialised".into())),
        })
        .unwrap();
        assert_eq!(
            verify,
            json!({"plans": [{"name": "a", "stale": "another boot"}], "missing": 0})
        );
        let forgot = serde_json::to_value(ForgetReport {
            forgotten: "a".into(),
            plan: ForgottenPlan::Unreadable {
                error: "corrupt".into(),
            },
        })
        .unwrap();
        assert_eq!(
            forgot,
            json!({"forgotten": "a", "plan": {"error": "corrupt"}})
        );
    }

    #[test]
    fn a_status_report_is_the_network_info_and_lists_missing_rules_in_text() {
        let info = NetworkInfo {
            network: "default".into(),
            bridge: "virbr0".into(),
            forward: "nat".into(),
            backend: "nftables".into(),
            stored_plan: true,
            netns: None,
            created_bridge: true,
            stamped: true,
            stale: None,
            rules_present: Some(1),
            rules_total: Some(2),
            missing: vec!["nft delete rule ip t c handle 4".into()],
            all_present: false,
            health: NetworkHealth::Drift,
        };
        let report = NetworkStatusReport(info);
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["network"], "default");
        assert_eq!(v["rules_present"], 1);
        assert!(v.get("health").is_none(), "{v}");
        let text = report.to_string();
        assert!(text.contains("1/2 rules present (DRIFT)"), "{text}");
        assert!(
            text.ends_with("\n  missing: nft delete rule ip t c handle 4"),
            "{text}"
        );
    }
}
