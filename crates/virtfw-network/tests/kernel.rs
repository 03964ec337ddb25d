//! Networks against the real kernel, each test in throwaway network namespaces (never the
//! host's): start → stop restores the ruleset, networks share the global chains without
//! stepping on each other, a failed start leaves nothing, and real packets are masqueraded,
//! kept out, and no longer masqueraded after stop.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use virtfw::executor::{Invocation, Output};
use virtfw::netns::Netns;
use virtfw::{ApplyOptions, Backend, ExecError, Executor, ProcessExecutor};
use virtfw_network::{check, global, lifecycle, start, stop, NetworkDef, NetworkStatus};

const BACKENDS: [Backend; 2] = [Backend::Nftables, Backend::Iptables];

/// Both apply paths: libvirt's command by command (`true`), and the engine's batches.
const PATHS: [bool; 2] = [true, false];

/// Written out field by field so that `VIRTFW_NO_BATCH` in the environment cannot turn the
/// batch-path runs into per-command ones.
fn opts(per_command: bool) -> ApplyOptions<'static> {
    ApplyOptions::new().per_command(per_command)
}

/// Everything the kernel holds that a network could have changed: the nft ruleset (which
/// includes iptables-nft's tables), and for iptables the `-save` dumps without their comment
/// lines (they carry a timestamp).
fn ruleset(ns: &Netns) -> String {
    // Stateless: counters move with whatever the new links send (IPv6 router solicitations).
    let mut out = ns.run(&["nft", "-s", "list", "ruleset"]).unwrap();
    for prog in ["iptables-save", "ip6tables-save"] {
        // A dump that fails would silently drop that family from every comparison.
        let dump = ns
            .run(&[prog])
            .unwrap_or_else(|e| panic!("{prog} in {}: {e}", ns.name()));
        out.extend(
            dump.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| match l.find(" [") {
                    // Chain policy counters `[packets:bytes]`, same reason.
                    Some(at) if l.starts_with(':') => format!("{}\n", &l[..at]),
                    _ => format!("{l}\n"),
                }),
        );
    }
    out
}

fn ip(ns: &Netns, args: &[&str]) {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    ns.run(&argv)
        .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
}

fn link_exists(ns: &Netns, name: &str) -> bool {
    ns.run(&["ip", "link", "show", "dev", name]).is_ok()
}

fn parse_case(case: &str) -> NetworkDef {
    let (path, xml) = common::suite_file(&format!("{case}.xml"));
    NetworkDef::from_xml(&xml, &path.display().to_string()).unwrap()
}

#[test]
fn start_stop_every_case_restores_the_ruleset() {
    for (backend, per_command) in BACKENDS.into_iter().flat_map(|b| PATHS.map(|p| (b, p))) {
        let opts = || opts(per_command);
        let label = format!("{backend}/per_command={per_command}");
        for case in common::case_names() {
            let ns = Netns::new("vfnet-cycle").unwrap();
            let exec = ns.executor().unwrap();
            // forward-dev names an upstream device; give it one.
            ip(
                &ns,
                &[
                    "link", "add", "enp0s7", "type", "veth", "peer", "name", "enp0s7p",
                ],
            );
            let setup = global::setup(backend, &exec, opts());
            assert!(
                setup.ipv4.is_ok() && setup.ipv6.is_ok(),
                "{case}/{label}: {setup:?}"
            );
            let before = ruleset(&ns);

            let status = start(parse_case(&case), backend, &exec, opts())
                .unwrap_or_else(|e| panic!("{case}/{label}: start: {e}"));
            assert!(status.created_bridge, "{case}: virbr0 did not exist before");
            assert!(link_exists(&ns, "virbr0"));
            assert_ne!(
                ruleset(&ns),
                before,
                "{case}/{label}: start changed nothing"
            );
            let rc = check(&status, &exec).unwrap();
            assert!(rc.total > 0 && rc.all_present(), "{case}/{label}: {rc:?}");

            // The status survives its file format.
            let status = NetworkStatus::from_xml(&status.to_xml(), "status").unwrap();
            stop(&status, &exec, opts()).unwrap();
            assert_eq!(
                ruleset(&ns),
                before,
                "{case}/{label}: stop did not restore the ruleset"
            );
            assert!(!link_exists(&ns, "virbr0"), "{case}: bridge left behind");
        }
    }
}

/// The upgrade path (spec §4.4, §5.2.7): a network whose status has no `fwRemoval` (started
/// by libvirt ≤ 10.3) is stopped with libvirt's legacy iptables deletions, which must remove
/// everything the iptables backend created.
#[test]
fn stop_without_a_stored_plan_uses_the_legacy_deletions() {
    for per_command in PATHS {
        let ns = Netns::new("vfnet-legacy").unwrap();
        let exec = ns.executor().unwrap();
        ip(
            &ns,
            &[
                "link", "add", "enp0s7", "type", "veth", "peer", "name", "enp0s7p",
            ],
        );
        let setup = global::setup(Backend::Iptables, &exec, opts(per_command));
        assert!(setup.ipv4.is_ok() && setup.ipv6.is_ok(), "{setup:?}");
        let before = ruleset(&ns);
        for case in common::case_names() {
            let label = format!("{case}/per_command={per_command}");
            let mut status = start(
                parse_case(&case),
                Backend::Iptables,
                &exec,
                opts(per_command),
            )
            .unwrap_or_else(|e| panic!("{label}: start: {e}"));
            assert!(status.removal.is_some(), "{label}: started with a plan");
            status.removal = None;
            let status = NetworkStatus::from_xml(&status.to_xml(), "status").unwrap();
            assert!(status.removal.is_none() && status.backend() == Backend::Iptables);
            stop(&status, &exec, opts(per_command)).unwrap();
            assert_eq!(
                ruleset(&ns),
                before,
                "{label}: the legacy deletions did not restore the ruleset"
            );
            assert!(!link_exists(&ns, "virbr0"), "{label}: bridge left behind");
        }
    }
}

fn second_network() -> NetworkDef {
    NetworkDef::from_xml(
        "<network><name>second</name><bridge name='virbr1'/><forward mode='nat'/>\
         <ip address='192.168.100.1' prefix='24'><dhcp><range start='192.168.100.2' end='192.168.100.9'/></dhcp></ip>\
         <ip family='ipv6' address='2001:db8:100::1' prefix='64'/></network>",
        "second.xml",
    )
    .unwrap()
}

#[test]
fn stopping_one_network_leaves_the_other_intact() {
    for (backend, per_command) in BACKENDS.into_iter().flat_map(|b| PATHS.map(|p| (b, p))) {
        let opts = || opts(per_command);
        let label = format!("{backend}/per_command={per_command}");
        let ns = Netns::new("vfnet-two").unwrap();
        let exec = ns.executor().unwrap();
        let first = start(parse_case("nat-ipv6"), backend, &exec, opts()).unwrap();
        let second = start(second_network(), backend, &exec, opts()).unwrap();
        assert!(check(&first, &exec).unwrap().all_present());
        assert!(check(&second, &exec).unwrap().all_present());

        stop(&first, &exec, opts()).unwrap();
        let rc = check(&second, &exec).unwrap();
        assert!(rc.total > 10 && rc.all_present(), "{label}: {rc:?}");
        // And the stopped one really is gone: none of its rules is found any more.
        let gone = check(&first, &exec).unwrap();
        assert_eq!(gone.missing.len(), gone.total, "{label}: {gone:?}");

        // Status notices a flushed rule, and reload puts it back.
        let victim = if backend == Backend::Nftables {
            vec![
                "nft",
                "flush",
                "chain",
                "ip",
                "libvirt_network",
                "guest_nat",
            ]
        } else {
            vec!["iptables", "-w", "-t", "nat", "-F", "LIBVIRT_PRT"]
        };
        ns.run(&victim).unwrap();
        let rc = check(&second, &exec).unwrap();
        assert!(
            !rc.all_present() && rc.missing.len() < rc.total,
            "{label}: {rc:?}"
        );
        let reloaded = lifecycle::reload(second, backend, &exec, opts()).unwrap();
        assert!(reloaded.error.is_none());
        assert!(check(&reloaded.status, &exec).unwrap().all_present());
        stop(&reloaded.status, &exec, opts()).unwrap();
        assert!(!link_exists(&ns, "virbr1"));
    }
}

/// Runs commands for real, except that any command (or batch on standard input) containing
/// `needle` fails without running, as a kernel refusing it would.
struct FailOn<'a> {
    inner: ProcessExecutor,
    needle: &'a str,
}

impl Executor for FailOn<'_> {
    fn run(&self, inv: Invocation<'_>) -> Result<Output, ExecError> {
        let in_stdin = inv.stdin.is_some_and(|s| {
            String::from_utf8_lossy(s)
                .split_whitespace()
                .any(|w| w == self.needle)
        });
        let in_argv = inv.argv.iter().any(|a| a == self.needle);
        if (in_argv || in_stdin) && !inv.argv.iter().any(|a| a == "list" || a == "--list-rules") {
            return Ok(Output {
                status: 1,
                stdout: String::new(),
                stderr: "injected failure".into(),
            });
        }
        self.inner.run(inv)
    }
    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        self.inner.check_program(program)
    }
}

#[test]
fn failed_start_leaves_no_rules_and_no_bridge() {
    for ((backend, needle), per_command) in [
        (Backend::Nftables, "guest_nat"),
        (Backend::Iptables, "MASQUERADE"),
    ]
    .into_iter()
    .flat_map(|b| PATHS.map(|p| (b, p)))
    {
        let opts = || opts(per_command);
        let label = format!("{backend}/per_command={per_command}");
        let ns = Netns::new("vfnet-fail").unwrap();
        let exec = ns.executor().unwrap();
        global::setup(backend, &exec, opts()).ipv4.unwrap();
        let before = ruleset(&ns);
        let failing = FailOn {
            inner: ns.executor().unwrap(),
            needle,
        };
        // The global setup is already done, so the first command with the needle is a rule
        // in the middle of the network's transaction.
        let err = start(parse_case("nat-ipv6"), backend, &failing, opts()).unwrap_err();
        assert!(
            err.to_string().contains("injected failure"),
            "{label}: {err}"
        );
        assert_eq!(
            ruleset(&ns),
            before,
            "{label}: rules left after a failed start"
        );
        assert!(
            !link_exists(&ns, "virbr0"),
            "{label}: bridge left after a failed start"
        );
    }
}

#[test]
fn a_failed_global_setup_deletes_the_bridge_made_alongside() {
    // On the batch path the bridge is created while the global setup runs; when the setup
    // fails the start fails, and the bridge it made must go too.
    for (backend, needle) in [
        (Backend::Nftables, "guest_cross"),
        (Backend::Iptables, "LIBVIRT_FWX"),
    ] {
        let ns = Netns::new("vfnet-gfail").unwrap();
        let failing = FailOn {
            inner: ns.executor().unwrap(),
            needle,
        };
        assert!(!link_exists(&ns, "virbr0"));
        let err = start(parse_case("nat-ipv6"), backend, &failing, opts(false)).unwrap_err();
        assert!(
            matches!(err, virtfw_network::NetworkError::GlobalSetup { .. }),
            "{backend}: {err}"
        );
        assert!(
            err.to_string().contains("injected failure"),
            "{backend}: {err}"
        );
        assert!(
            !link_exists(&ns, "virbr0"),
            "{backend}: bridge left after a failed global setup"
        );
    }
}

// ---- real packets -------------------------------------------------------------------------

/// Run `f` on a thread that has entered the named network namespace (a netns switch is
/// per-thread, and sockets stay in the namespace they were made in).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let fd = virtfw::executor::open_netns(ns).unwrap();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        // SAFETY: plain system call on a descriptor we own; affects only this thread.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Listen on `addr` in `ns` for up to `wait`; yields the peer address of the first connection
/// (after reading its greeting), or None.
fn listen(
    ns: &Netns,
    addr: &str,
    wait: Duration,
) -> (u16, std::thread::JoinHandle<Option<SocketAddr>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = addr.to_string();
    let handle = in_netns(ns.name(), move || {
        let listener = TcpListener::bind(format!("{addr}:0")).unwrap();
        tx.send(listener.local_addr().unwrap().port()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    stream.set_nonblocking(false).unwrap();
                    let mut buf = [0u8; 5];
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let _ = stream.read_exact(&mut buf);
                    return Some(peer);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        None
    });
    (rx.recv().unwrap(), handle)
}

/// Connect from `ns` to `target` and say hello; the error kind on failure.
fn connect(ns: &Netns, target: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    in_netns(ns.name(), move || {
        let mut s = TcpStream::connect_timeout(&target, timeout)?;
        s.write_all(b"hello")
    })
    .join()
    .unwrap()
}

struct Topology {
    host: Netns,
    guest: Netns,
    outside: Netns,
}

/// guest (192.168.122.10) —veth— [virbr0 192.168.122.1] host [198.51.100.1] —veth— outside
/// (198.51.100.2, no route back to the guest subnet). The bridge is made here, so it outlives
/// `network stop` and the after-stop behaviour can be observed.
fn topology() -> Topology {
    let t = Topology {
        host: Netns::new("vfnet-host").unwrap(),
        guest: Netns::new("vfnet-guest").unwrap(),
        outside: Netns::new("vfnet-out").unwrap(),
    };
    let (h, g, o) = (&t.host, &t.guest, &t.outside);
    ip(h, &["link", "add", "virbr0", "type", "bridge"]);
    ip(h, &["addr", "add", "192.168.122.1/24", "dev", "virbr0"]);
    ip(h, &["link", "set", "virbr0", "up"]);
    ip(
        h,
        &[
            "link",
            "add",
            "vguest",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            g.name(),
        ],
    );
    ip(h, &["link", "set", "vguest", "master", "virbr0", "up"]);
    ip(g, &["addr", "add", "192.168.122.10/24", "dev", "eth0"]);
    ip(g, &["link", "set", "eth0", "up"]);
    ip(g, &["route", "add", "default", "via", "192.168.122.1"]);
    ip(
        h,
        &[
            "link",
            "add",
            "vout",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            o.name(),
        ],
    );
    ip(h, &["addr", "add", "198.51.100.1/24", "dev", "vout"]);
    ip(h, &["link", "set", "vout", "up"]);
    ip(o, &["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    ip(o, &["link", "set", "eth0", "up"]);
    // Forwarding is per namespace; `ip netns exec` runs sysctl with the host netns's /proc/sys.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            h.name(),
            "sysctl",
            "-w",
            "net.ipv4.ip_forward=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sysctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

const GUEST: &str = "192.168.122.10";
const OUTSIDE: &str = "198.51.100.2";
const SHORT: Duration = Duration::from_millis(1500);

#[test]
fn real_packets_are_masqueraded_and_kept_out() {
    for (backend, per_command) in BACKENDS.into_iter().flat_map(|b| PATHS.map(|p| (b, p))) {
        let opts = || opts(per_command);
        let label = format!("{backend}/per_command={per_command}");
        let t = topology();
        let exec = t.host.executor().unwrap();
        // Before the network: the outside has no route back, so the guest gets nowhere.
        let (port, server) = listen(&t.outside, OUTSIDE, SHORT);
        let target: SocketAddr = format!("{OUTSIDE}:{port}").parse().unwrap();
        assert!(connect(&t.guest, target, SHORT).is_err());
        assert_eq!(server.join().unwrap(), None);

        let status = start(parse_case("nat-default"), backend, &exec, opts()).unwrap();
        assert!(!status.created_bridge, "the test made the bridge");

        // 1. The guest reaches the outside, seen there from the host's address.
        let (port, server) = listen(&t.outside, OUTSIDE, Duration::from_secs(5));
        let target: SocketAddr = format!("{OUTSIDE}:{port}").parse().unwrap();
        connect(&t.guest, target, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{label}: guest → outside: {e}"));
        let peer = server.join().unwrap().expect("outside saw the connection");
        assert_eq!(
            peer.ip().to_string(),
            "198.51.100.1",
            "{label}: not masqueraded"
        );
        assert!(
            peer.port() >= 1024,
            "{label}: source port {} below 1024",
            peer.port()
        );

        // 2. The outside cannot open a connection to the guest, even with a route to it: the
        //    network's reject rule answers (connection refused) and the guest sees nothing.
        ip(
            &t.outside,
            &["route", "add", "192.168.122.0/24", "via", "198.51.100.1"],
        );
        let (gport, guest_server) = listen(&t.guest, GUEST, SHORT);
        let gtarget: SocketAddr = format!("{GUEST}:{gport}").parse().unwrap();
        let err = connect(&t.outside, gtarget, SHORT).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{label}: {err}"
        );
        assert_eq!(
            guest_server.join().unwrap(),
            None,
            "{label}: outside got in"
        );
        ip(&t.outside, &["route", "del", "192.168.122.0/24"]);

        stop(&status, &exec, opts()).unwrap();
        assert!(
            link_exists(&t.host, "virbr0"),
            "a bridge we did not make stays"
        );

        // 3. After stop the host still routes (forwarding is a sysctl, not a rule), but
        //    nothing masquerades: the outside receives the guest's own address, has no route
        //    back, and the connection never completes.
        let (port, server) = listen(&t.outside, OUTSIDE, SHORT);
        let target: SocketAddr = format!("{OUTSIDE}:{port}").parse().unwrap();
        let err = connect(&t.guest, target, SHORT).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{label}: {err}");
        assert_eq!(server.join().unwrap(), None);

        // 4. Control: give the outside a route back and the same connection works, showing
        //    the guest's unmasqueraded address; and the outside now gets in (no reject rule).
        ip(
            &t.outside,
            &["route", "add", "192.168.122.0/24", "via", "198.51.100.1"],
        );
        let (port, server) = listen(&t.outside, OUTSIDE, Duration::from_secs(5));
        let target: SocketAddr = format!("{OUTSIDE}:{port}").parse().unwrap();
        connect(&t.guest, target, Duration::from_secs(3)).unwrap();
        let peer = server.join().unwrap().expect("outside saw the connection");
        assert_eq!(
            peer.ip().to_string(),
            GUEST,
            "{label}: still masqueraded after stop"
        );
        let (gport, guest_server) = listen(&t.guest, GUEST, Duration::from_secs(5));
        let gtarget: SocketAddr = format!("{GUEST}:{gport}").parse().unwrap();
        connect(&t.outside, gtarget, Duration::from_secs(3)).unwrap();
        assert_eq!(
            guest_server
                .join()
                .unwrap()
                .map(|p| p.ip().to_string())
                .as_deref(),
            Some("198.51.100.2")
        );
    }
}
