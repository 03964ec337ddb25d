//! A stored removal plan: libvirt's `<firewall>` removal XML in a small JSON envelope that says
//! where and when the rules were made, so that a plan that outlived its rules (reboot, deleted
//! namespace) is recognised instead of being run blindly.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use virtfw::Firewall;

use crate::error::{Result, StoreError};
use crate::state::{self, StateDir};

/// Format version of the envelope; bump it when a field that matters is added.
pub(crate) const PLAN_VERSION: u32 = 1;

/// One stored plan (the file `DIR/plans/NAME.plan`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    pub version: u32,
    pub name: String,
    pub backend: String,
    /// `--netns` the rules were made in (`None`: virtfw's own namespace).
    pub netns: Option<String>,
    /// Identity of that namespace when the rules were made (`dev:inode`).
    pub netns_id: String,
    pub boot_id: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The operation that made it (matches the journal of that apply).
    pub op_id: String,
    /// Groups and commands of the original transaction (for `list`).
    pub groups: usize,
    pub commands: usize,
    /// The removal plan, libvirt `<firewall>` XML.
    pub removal: String,
}

/// Why a plan no longer describes live rules, if it does not.
pub(crate) fn staleness(boot_id: &str, netns: Option<&str>, netns_id: &str) -> Option<String> {
    let now_boot = state::boot_id();
    if !boot_id.is_empty() && !now_boot.is_empty() && boot_id != now_boot {
        return Some("made before the last reboot".into());
    }
    match state::netns_identity(netns) {
        Err(_) => Some(format!(
            "network namespace {} no longer exists",
            netns.unwrap_or("(own)")
        )),
        Ok(id) if !state::same_netns_identity(netns_id, &id) => Some(match netns {
            Some(n) => format!("network namespace {n} was re-created since"),
            None => "made in another network namespace than the one virtfw runs in now".into(),
        }),
        Ok(_) => None,
    }
}

impl Plan {
    /// The removal firewall, parsed; errors name the plan file.
    pub(crate) fn removal_firewall(&self, path: &Path) -> Result<Firewall> {
        Firewall::from_xml(&self.removal, &path.display().to_string()).map_err(|e| match e {
            // Well-formed, but an argument would change meaning when run: bad input (exit 2)
            // on every path, as when it comes from a transaction file.
            e @ virtfw::Error::UnsafeArgument { .. } => StoreError::Input(e),
            e => StoreError::CorruptPlan {
                path: path.to_path_buf(),
                message: e.to_string(),
            },
        })
    }

    /// Why this plan is stale, if it is.
    pub(crate) fn stale_reason(&self) -> Option<String> {
        staleness(&self.boot_id, self.netns.as_deref(), &self.netns_id)
    }

    /// Store atomically (temp, fsync, rename, fsync dir).
    pub(crate) fn store(&self, state: &StateDir) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(self)
            .map_err(|e| StoreError::Failed(format!("cannot encode plan: {e}")))?;
        data.push(b'\n');
        state::write_atomic(&state.plan_path(&self.name), &data)
    }

    /// Read and check one plan file.
    pub(crate) fn load(path: &Path) -> Result<Plan> {
        let text = fs::read_to_string(path).map_err(|e| StoreError::CorruptPlan {
            path: path.to_path_buf(),
            message: format!("unreadable: {e}"),
        })?;
        let plan: Plan = serde_json::from_str(&text).map_err(|e| StoreError::CorruptPlan {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if plan.version != PLAN_VERSION {
            return Err(StoreError::CorruptPlan {
                path: path.to_path_buf(),
                message: format!(
                    "format version {} is not supported (this virtfw reads {PLAN_VERSION})",
                    plan.version
                ),
            });
        }
        plan.removal_firewall(path)?;
        Ok(plan)
    }

    /// Load the plan called `name`.
    pub(crate) fn load_named(state: &StateDir, name: &str) -> Result<Plan> {
        state::check_name(name)?;
        let path = state.plan_path(name);
        if !path.exists() {
            return Err(StoreError::NoSuchPlan {
                name: name.to_string(),
                dir: state.plans_dir(),
            });
        }
        Plan::load(&path)
    }

    /// Delete the plan file durably.
    pub(crate) fn delete(state: &StateDir, name: &str) -> Result<()> {
        state::remove_durably(&state.plan_path(name))
    }
}

/// Every plan file name in the state dir, sorted, with its load result.
pub(crate) fn all_plans(state: &StateDir) -> Result<Vec<(String, Result<Plan>)>> {
    let mut out: Vec<(String, Result<Plan>)> = state::dir_entries(&state.plans_dir())?
        .into_iter()
        .filter_map(|(file, path)| {
            let name = file.strip_suffix(".plan")?;
            (!name.starts_with('.')).then(|| (name.to_string(), Plan::load(&path)))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
