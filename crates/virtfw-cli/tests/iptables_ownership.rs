//! A failed iptables apply takes back exactly what it created, on the batch path and with
//! `--no-batch`: someone else's rule identical to one of ours (in a built-in chain and in a
//! custom chain, IPv4 and IPv6) is still there, exactly once, and `iptables-save` equals the
//! state before the apply.
//!
//! The transaction inserts rules in several tables (filter and nat) and families; a later
//! command fails. The shapes cover a restore batch that fails in its first section (nothing
//! committed), in its second (the first committed and the engine took it back itself), and a
//! failing group that inherits the previous group's rollback (the engine's rollback deletes
//! our rules first, so the CLI's undo must recognise those deletes as its own).

mod common;
use common::*;

/// Where the transaction fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// A create in the filter table: the first section of the IPv4 restore fails.
    FirstSection,
    /// A create in the nat table: the second section fails, the first committed.
    SecondSection,
    /// A group of its own that inherits the previous group's rollback: the engine rolls our
    /// creates back before the CLI's undo runs.
    InheritingGroup,
}

/// Our transaction: every rule of `common::IPT_OURS`, then the failure.
fn tx(failure: Failure) -> String {
    let ours = ipt_ours(0..IPT_OURS.len());
    let (rollback, failing) = match failure {
        Failure::FirstSection => ("", action("ipv4", &["-A", "NOSUCHCHAIN", "-j", "ACCEPT"])),
        Failure::SecondSection => (
            "",
            action("ipv4", &["-t", "nat", "-A", "NOSUCHCHAIN", "-j", "ACCEPT"]),
        ),
        Failure::InheritingGroup => (
            "<rollback inheritPrevious='yes'/>",
            action("ipv4", &["-N", "OTHERS"]),
        ),
    };
    format!(
        "<firewall name='own' backend='iptables'>\
         <group autoRollback='yes'>{ours}</group>\
         <group autoRollback='yes'>{rollback}{failing}</group>\
         </firewall>"
    )
}

fn failed_apply_keeps_the_twins(failure: Failure, per_command: bool) {
    let env = Env::new("vfw-iptown");
    let before = env.add_ipt_others();
    let file = env.write("own.xml", &tx(failure));
    let mut args = vec!["apply", path_of(&file)];
    if per_command {
        args.insert(0, "--no-batch");
    }
    let o = env.run(&args);
    assert_eq!(o.status.code(), Some(1), "{failure:?}: {}", text(&o));
    assert_ipt_as_before(
        &before,
        &env.ipt_save(),
        &format!("{failure:?} (per_command {per_command}): {}", text(&o)),
    );
    assert!(!plan_exists(&env, "own"));
    assert_eq!(env.journals(), 0, "journal left behind");
}

#[test]
fn batch_restore_failing_in_its_first_section_keeps_the_twins() {
    failed_apply_keeps_the_twins(Failure::FirstSection, false);
}

#[test]
fn batch_restore_failing_in_its_second_section_keeps_the_twins() {
    failed_apply_keeps_the_twins(Failure::SecondSection, false);
}

#[test]
fn batch_inherited_rollback_keeps_the_twins() {
    failed_apply_keeps_the_twins(Failure::InheritingGroup, false);
}

#[test]
fn per_command_failure_in_filter_keeps_the_twins() {
    failed_apply_keeps_the_twins(Failure::FirstSection, true);
}

#[test]
fn per_command_failure_in_nat_keeps_the_twins() {
    failed_apply_keeps_the_twins(Failure::SecondSection, true);
}

#[test]
fn per_command_inherited_rollback_keeps_the_twins() {
    failed_apply_keeps_the_twins(Failure::InheritingGroup, true);
}
