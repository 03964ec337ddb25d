//! libvirt's `networkxml2firewall` suite: for every case and both backends, the transcript of
//! the global setup plus the network's firewall, with the base prefix stripped, must equal
//! libvirt's expected file byte for byte (harness described in the conformance README).
//!
//! The golden files are read from the shared conformance directory at test time (never copied
//! into the repository); a missing directory fails the suite.

mod common;

use common::{case_names, suite_file};
use virtfw::{ApplyOptions, Backend, FakeExecutor, Layer};
use virtfw_network::{global, lifecycle, NetworkDef};

fn options() -> ApplyOptions<'static> {
    ApplyOptions::new().per_command(true)
}

fn backend_ext(backend: Backend) -> &'static str {
    backend.as_str()
}

/// Global setup on a fresh (fake) host, both families, as the harness's first case runs it.
fn run_global(backend: Backend, fake: &FakeExecutor) {
    for layer in [Layer::Ipv4, Layer::Ipv6] {
        global::setup_firewall(backend, layer)
            .apply_with(fake, options())
            .expect("global setup applies on the fake");
    }
}

fn check_case(case: &str, backend: Backend) {
    let (xml_path, xml) = suite_file(&format!("{case}.xml"));
    let def = NetworkDef::from_xml(&xml, &xml_path.display().to_string())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let fake = FakeExecutor::new().with_fixed_handle(5309);
    run_global(backend, &fake);
    let mut fw = lifecycle::network_firewall(&def, backend).unwrap();
    fw.apply_with(&fake, options()).unwrap();
    let transcript = fake.transcript();

    let (_, base) = suite_file(&format!("base.{}", backend_ext(backend)));
    let actual = transcript
        .strip_prefix(base.as_str())
        .unwrap_or(&transcript);
    let (expected_path, expected) = suite_file(&format!("{case}-linux.{}", backend_ext(backend)));
    assert!(
        actual == expected,
        "{case} / {backend}: transcript differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
        expected_path.display()
    );
}

macro_rules! cases {
    ($($name:ident => $case:literal),* $(,)?) => {
        mod iptables {
            $( #[test] fn $name() { super::check_case($case, virtfw::Backend::Iptables); } )*
        }
        mod nftables {
            $( #[test] fn $name() { super::check_case($case, virtfw::Backend::Nftables); } )*
        }
        /// Every XML of the suite has a test above (a new upstream case must not go unnoticed).
        #[test]
        fn every_case_is_listed() {
            let listed = [$($case),*];
            for case in case_names() {
                assert!(listed.contains(&case.as_str()), "case {case} has no test");
            }
        }
    };
}

cases! {
    nat_default => "nat-default",
    nat_tftp => "nat-tftp",
    nat_many_ips => "nat-many-ips",
    nat_no_dhcp => "nat-no-dhcp",
    nat_ipv6 => "nat-ipv6",
    nat_ipv6_masquerade => "nat-ipv6-masquerade",
    route_default => "route-default",
    forward_dev => "forward-dev",
    isolated => "isolated",
    nat_port_range => "nat-port-range",
    nat_port_range_ipv6 => "nat-port-range-ipv6",
}

/// The global setup alone, on a fresh host, is exactly `base.<backend>`.
fn check_base(backend: Backend) {
    let fake = FakeExecutor::new().with_fixed_handle(5309);
    run_global(backend, &fake);
    let (path, expected) = suite_file(&format!("base.{}", backend_ext(backend)));
    let actual = fake.transcript();
    assert!(
        actual == expected,
        "global setup differs from {}\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn base_iptables() {
    check_base(Backend::Iptables);
}

#[test]
fn base_nftables() {
    check_base(Backend::Nftables);
}

/// The setup through the lifecycle helper (the one `start` uses) runs the same commands.
#[test]
fn global_setup_helper_matches_base() {
    for backend in [Backend::Iptables, Backend::Nftables] {
        let fake = FakeExecutor::new();
        let outcome = global::setup(backend, &fake, options());
        assert!(outcome.ipv4.is_ok() && outcome.ipv6.is_ok());
        let (_, expected) = suite_file(&format!("base.{}", backend_ext(backend)));
        assert_eq!(fake.transcript(), expected);
    }
}
