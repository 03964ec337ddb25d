//! The firewall object: an ordered list of groups, built with libvirt's operations.
//!
//! The builder never fails half-way: like libvirt, the first misuse (a command before any
//! transaction, a rollback with no group) is remembered and every later call is a no-op, and
//! [`Firewall::apply`](crate::Firewall::apply) reports it before running anything. Callers can
//! therefore build a whole firewall without checking every call.

use crate::error::BuildError;
use crate::model::{Backend, Command, Layer, QueryCallback, RollbackFlags, TransactionFlags};

/// One transaction: the commands to apply and the commands that undo them.
#[derive(Debug, Default)]
pub struct Group {
    pub(crate) flags: TransactionFlags,
    pub(crate) rollback_flags: RollbackFlags,
    pub(crate) actions: Vec<Command>,
    pub(crate) rollbacks: Vec<Command>,
    pub(crate) adding_rollback: bool,
}

impl Group {
    /// The transaction flags the group was started with.
    pub fn flags(&self) -> TransactionFlags {
        self.flags
    }
    /// The flags of the group's rollback block.
    pub fn rollback_flags(&self) -> RollbackFlags {
        self.rollback_flags
    }
    /// The commands applied, in order (including any added by query callbacks during apply).
    pub fn actions(&self) -> &[Command] {
        &self.actions
    }
    /// The undo commands: hand-written ones, then the inverses recorded by auto-rollback.
    pub fn rollbacks(&self) -> &[Command] {
        &self.rollbacks
    }
}

/// Identifies a command added to a firewall, for [`Firewall::cmd_add_arg`] and
/// [`Firewall::remove_cmd`] (libvirt hands out a pointer for the same purpose).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CmdId(pub(crate) u64);

/// An ordered list of groups applied as transactions; see the crate docs for the model.
#[derive(Debug)]
pub struct Firewall {
    pub(crate) name: Option<String>,
    pub(crate) backend: Backend,
    pub(crate) groups: Vec<Group>,
    pub(crate) current_group: usize,
    pub(crate) error: Option<BuildError>,
    /// What the tables an apply's `add table`/`add chain` touch held before it, and what it
    /// created since (reset by every apply; see [`crate::nft::Existing`]).
    pub(crate) existing: crate::nft::Existing,
}

impl Firewall {
    /// An empty firewall for `backend` (libvirt `virFirewallNew`).
    pub fn new(backend: Backend) -> Self {
        Firewall {
            name: None,
            backend,
            groups: Vec::new(),
            current_group: 0,
            error: None,
            existing: Default::default(),
        }
    }

    /// The backend every command of this firewall runs with.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The optional name, persisted as the `name` attribute (libvirt names removal plans
    /// `fwRemoval`).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Replace the name.
    pub fn set_name(&mut self, name: Option<&str>) {
        self.name = name.map(str::to_owned);
    }

    /// The groups, in apply order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The first builder misuse, if any; `apply` refuses to run such a firewall.
    pub fn build_error(&self) -> Option<&BuildError> {
        self.error.as_ref()
    }

    /// True when there is nothing to apply (no group has an action).
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.actions.is_empty())
    }

    /// Total number of action commands.
    pub fn command_count(&self) -> usize {
        self.groups.iter().map(|g| g.actions.len()).sum()
    }

    /// Start a new group and make it current (libvirt `virFirewallStartTransaction`).
    pub fn start_transaction(&mut self, flags: TransactionFlags) -> &mut Self {
        if self.error.is_none() {
            self.groups.push(Group {
                flags,
                ..Group::default()
            });
            self.current_group = self.groups.len() - 1;
        }
        self
    }

    /// Switch the **last** group into rollback mode: following `add_cmd` calls go to its
    /// rollback list (libvirt `virFirewallStartRollback`).
    pub fn start_rollback(&mut self, flags: RollbackFlags) -> &mut Self {
        if self.error.is_some() {
            return self;
        }
        match self.groups.last_mut() {
            Some(group) => {
                group.rollback_flags = flags;
                group.adding_rollback = true;
            }
            None => self.error = Some(BuildError::RollbackWithoutTransaction),
        }
        self
    }

    /// The flags of the current transaction (libvirt `virFirewallTransactionGetFlags`); empty
    /// when no transaction was started.
    pub fn transaction_flags(&self) -> TransactionFlags {
        self.groups
            .get(self.current_group)
            .map(|g| g.flags)
            .unwrap_or_default()
    }

    /// The group a new command goes to: the current one. `None` after an earlier misuse, or
    /// (remembered as the misuse) when no transaction was started.
    fn group_for_command(&mut self) -> Option<&mut Group> {
        if self.error.is_some() {
            return None;
        }
        if self.current_group >= self.groups.len() {
            self.error = Some(BuildError::CommandWithoutTransaction);
            return None;
        }
        self.groups.get_mut(self.current_group)
    }

    /// Add a command to the current group (libvirt `virFirewallAddCmd`).
    pub fn add_cmd<I, S>(&mut self, layer: Layer, args: I) -> Option<CmdId>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.add_cmd_full(layer, false, None, args)
    }

    /// Add a command with an ignore-errors flag and an optional query callback (libvirt
    /// `virFirewallAddCmdFull`). In rollback mode the command goes to the rollback list, always
    /// ignores errors and drops the callback, as in libvirt.
    pub fn add_cmd_full<I, S>(
        &mut self,
        layer: Layer,
        ignore_errors: bool,
        query: Option<QueryCallback>,
        args: I,
    ) -> Option<CmdId>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let group = self.group_for_command()?;
        let cmd = Command::new(layer, args);
        let id = CmdId(cmd.id);
        if group.adding_rollback {
            group.rollbacks.push(cmd.with_ignore_errors(true));
        } else {
            let ignore = ignore_errors || group.flags.contains(TransactionFlags::IGNORE_ERRORS);
            group
                .actions
                .push(cmd.with_ignore_errors(ignore).with_query(query));
        }
        Some(id)
    }

    /// Add an undo command to the current group's rollback list, whatever mode the group is in
    /// (libvirt `virFirewallAddRollbackCmd`).
    pub fn add_rollback_cmd<I, S>(&mut self, layer: Layer, args: I) -> Option<CmdId>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let group = self.group_for_command()?;
        let cmd = Command::new(layer, args).with_ignore_errors(true);
        let id = CmdId(cmd.id);
        group.rollbacks.push(cmd);
        Some(id)
    }

    fn current_list(&mut self) -> Option<&mut Vec<Command>> {
        let group = self.groups.get_mut(self.current_group)?;
        Some(if group.adding_rollback {
            &mut group.rollbacks
        } else {
            &mut group.actions
        })
    }

    /// Append arguments to a command added earlier (libvirt `virFirewallCmdAddArg*`); a no-op
    /// after a builder error or for an unknown id.
    pub fn cmd_add_arg<I, S>(&mut self, id: CmdId, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if self.error.is_none() {
            if let Some(cmd) = self
                .groups
                .iter_mut()
                .flat_map(|g| g.actions.iter_mut().chain(g.rollbacks.iter_mut()))
                .find(|c| c.id == id.0)
            {
                cmd.args.extend(args.into_iter().map(Into::into));
            }
        }
        self
    }

    /// Number of arguments of a command (0 for an unknown id).
    pub fn cmd_arg_count(&self, id: CmdId) -> usize {
        self.groups
            .iter()
            .flat_map(|g| g.actions.iter().chain(g.rollbacks.iter()))
            .find(|c| c.id == id.0)
            .map_or(0, |c| c.args.len())
    }

    /// Remove a command from the list currently being built (libvirt `virFirewallRemoveCmd`);
    /// works even after a builder error. Returns whether it was found.
    pub fn remove_cmd(&mut self, id: CmdId) -> bool {
        let Some(list) = self.current_list() else {
            return false;
        };
        match list.iter().position(|c| c.id == id.0) {
            Some(pos) => {
                list.remove(pos);
                true
            }
            None => false,
        }
    }

    /// The firewall that undoes this applied one (libvirt `virFirewallNewFromRollback`): the
    /// groups from last to first, each group's rollback commands from last to first, every group
    /// ignoring errors, the same backend, no name. Each command keeps its
    /// [`appended`](crate::Command::appended) mark. Groups with an empty rollback list are
    /// skipped, so the result is empty when there is nothing to undo.
    pub fn new_from_rollback(&self) -> Result<Firewall, BuildError> {
        if let Some(err) = &self.error {
            return Err(BuildError::OriginalInError(Box::new(err.clone())));
        }
        let mut removal = Firewall::new(self.backend);
        for group in self.groups.iter().rev() {
            if group.rollbacks.is_empty() {
                continue;
            }
            removal.start_transaction(TransactionFlags::IGNORE_ERRORS);
            for cmd in group.rollbacks.iter().rev() {
                removal.add_cmd(cmd.layer, cmd.args.iter().cloned());
                if let Some(added) = removal.groups.last_mut().and_then(|g| g.actions.last_mut()) {
                    added.appended = cmd.appended;
                }
            }
        }
        Ok(removal)
    }

    /// A copy of everything that can be stored: name, backend, groups with their flags,
    /// actions and rollbacks, and the builder error. Query callbacks are code and are not
    /// copied (see [`Command::clone_plain`]), so the copy of a firewall that has them runs
    /// their commands without handing the output on. Plans (removal firewalls, anything read
    /// from XML) have none, so their copy is exact.
    pub fn clone_plain(&self) -> Firewall {
        Firewall {
            name: self.name.clone(),
            backend: self.backend,
            groups: self
                .groups
                .iter()
                .map(|g| Group {
                    flags: g.flags,
                    rollback_flags: g.rollback_flags,
                    actions: g.actions.iter().map(Command::clone_plain).collect(),
                    rollbacks: g.rollbacks.iter().map(Command::clone_plain).collect(),
                    adding_rollback: g.adding_rollback,
                })
                .collect(),
            current_group: self.current_group,
            error: self.error.clone(),
            existing: Default::default(),
        }
    }

    /// Push a ready-made group (used by the XML parser and by code that builds plans directly).
    pub(crate) fn push_group(&mut self, group: Group) {
        self.groups.push(group);
        self.current_group = self.groups.len() - 1;
    }
}
