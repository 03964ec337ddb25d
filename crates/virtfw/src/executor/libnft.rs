//! `nft` without a process: libnftables loaded at run time, the `nft` program as the fallback.
//!
//! # Why
//!
//! Every `nft` process pays for itself twice. Starting it (fork, exec, dynamic linking, opening
//! a netlink socket, loading the cache) costs milliseconds; and a process that deleted anything
//! waits at exit for an RCU grace period, because closing a netfilter netlink socket flushes the
//! kernel's deferred destroy work, which runs `synchronize_rcu()` first (7–16 ms measured, see
//! `perf-baseline.md` §4.7). libnftables is the library the `nft` program itself is a thin front
//! end to: run in-process with one long-lived context, a batch skips the spawn, keeps its netlink
//! socket (so deletes never wait for the grace period on the caller's path: the kernel frees
//! their memory in the background) and keeps its cache between calls, revalidated by the
//! ruleset's generation id, so a change made by another program is seen.
//!
//! # How
//!
//! [`LibnftExecutor`] wraps a [`ProcessExecutor`]. An `nft` invocation whose options it knows
//! (`-a`, `-e`, `-j`, `-s`, `-c`, `-t`, `-f FILE`, `-f -`, and their long forms) runs through
//! libnftables exactly as the `nft` program would run it: the non-option arguments joined with
//! spaces into one command buffer (`nft_run_cmd_from_buffer`), or the input read as a file
//! (`nft_run_cmd_from_filename`). Exit status is 0 or 1, standard output is the context's output
//! buffer and standard error its error buffer. Everything else — `iptables`, `ebtables`, `tc`,
//! `ip`, `nft` with any other option, `-j` together with `-f` (nft 1.0.6 reading text from a pipe
//! with `-j` silently does nothing, and only a process reproduces that) — goes to the process.
//!
//! Standard input (`-f -`) is handed to libnftables as a file, a `memfd`, not as a buffer: for a
//! buffer libnftables reports errors without a position and quotes the buffer's first line,
//! while for a file it prints `FILE:LINE:COL` and the right line, as `nft -f -` does. The
//! memfd's `/proc/self/fd/N` prefix is rewritten to `/dev/stdin`, so the batch path's
//! [`error_line`](crate::failure::error_line) names the failing command as with the process.
//! The thread that owns the context is named `nft`, so even the echo's trailing
//! `# new generation G by process PID (nft)` line has the process's form.
//!
//! One difference remains, for callers without privileges only: libnftables (1.0.x sources)
//! prints its "(you must be root)" hint straight to this process's standard error rather than
//! to the buffer; the error itself is in the buffer as usual.
//!
//! The library is opened with `dlopen` ([`libloading`]), so building virtfw needs neither the C
//! library nor its headers. When it is missing, fails to load, or a context cannot be made
//! (the probe of a netfilter netlink socket fails: libnftables 1.0.x would `exit()` the whole
//! process there), the executor behaves exactly like its [`ProcessExecutor`] and says so at
//! debug level; [`LibnftExecutor::is_in_process`] tells which it is.
//!
//! # Threads and namespaces
//!
//! A netlink socket belongs to the network namespace of the thread that created it, and
//! libnftables 1.0.6 opens it in `nft_ctx_new`. So each executor runs one worker thread that
//! enters the namespace (`setns(CLONE_NEWNET)`, for [`LibnftExecutor::in_netns`]) or stays in the
//! namespace of the thread that built the executor, makes the context and serves requests sent
//! over a channel, one at a time. libnftables keeps process-global state (one-time GMP and
//! xtables set-up in `nft_ctx_new`, an interface cache shared by all contexts and released after
//! every command): every call into the library, from any executor, holds one global lock.
//!
//! # Freeing the context
//!
//! `nft_ctx_free` closes the netlink socket, and after deletes that close waits for the grace
//! period. Dropping the executor therefore does not wait: the worker frees the context in the
//! background. [`LibnftExecutor::close`] frees it and waits, for callers (benchmarks, tests)
//! that want the cost accounted for or the socket gone before they go on.
//!
//! # What it saves (measured)
//!
//! `cargo run --release -p virtfw --example libnft_speed` on the 2-vCPU development VM (nft
//! 1.0.6, medians of 7 rounds at N = 1,000 and 3 at N = 10,000, milliseconds; "raw" is one
//! `nft -ae -f -` batch with its handles read back, then one `nft -f -` batch of deletes;
//! "engine" is an AUTO_ROLLBACK transaction of N rules and its removal plan):
//!
//! | N | path | process: apply / remove | in-process: apply / remove | context free (`close`) |
//! |---|---|---|---|---|
//! | 1,000 | raw | 44–48 / 17–19 | 32 / 4.4–4.8 | 12–14 |
//! | 1,000 | engine | 52–57 / 20–24 | 32–34 / 4.7–5.1 | 13 |
//! | 10,000 | raw | 478–496 / 199–204 | 344–350 / 178–181 | 15–19 |
//! | 10,000 | engine | 554–612 / 208–211 | 357–370 / 176–185 | 6–12 |
//!
//! Making a context (`LibnftExecutor::in_netns`, thread included) takes 0.2–0.3 ms once the
//! library is mapped. Removal of 1,000 rules drops from ~18 ms to ~5 ms because the grace
//! period (the `close` column) is no longer on the caller's path; at 10,000 the kernel's own
//! work (each delete looks its handle up in the chain) dominates either way.
//!
//! # Crash safety: why the `virtfw` command keeps the process path for apply
//!
//! The CLI's crash-safe journal relies on child processes writing their echo (the handles of what
//! they created) to files: if `virtfw` is killed after the kernel committed a batch but before
//! it read the output, the surviving child still finishes and its output survives for `recover`.
//! In-process there is no surviving child: a kill between the kernel commit and reading the
//! output buffer loses the handles, and the rules could only be found again by listing and
//! matching. The `virtfw` command therefore keeps [`ProcessExecutor`] for apply; this executor
//! is for library users (and benchmarks) who own the process's lifetime.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;

use tracing::debug;

use super::child::open_netns;
use super::{Executor, Invocation, Output, ProcessExecutor};
use crate::error::ExecError;

/// The library's soname on Debian and elsewhere (package `libnftables1`).
pub const DEFAULT_LIBRARY: &str = "libnftables.so.1";

// Values from `nftables/libnftables.h` (1.0.x); stable ABI.
const NFT_CTX_DEFAULT: u32 = 0;
const OUTPUT_STATELESS: c_uint = 1 << 2;
const OUTPUT_HANDLE: c_uint = 1 << 3;
const OUTPUT_JSON: c_uint = 1 << 4;
const OUTPUT_ECHO: c_uint = 1 << 5;
const OUTPUT_TERSE: c_uint = 1 << 11;

/// Opaque `struct nft_ctx`.
type Ctx = *mut c_void;

/// The library's entry points, resolved once.
struct Api {
    ctx_new: unsafe extern "C" fn(u32) -> Ctx,
    ctx_free: unsafe extern "C" fn(Ctx),
    output_set_flags: unsafe extern "C" fn(Ctx, c_uint),
    set_dry_run: unsafe extern "C" fn(Ctx, bool),
    buffer_output: unsafe extern "C" fn(Ctx) -> c_int,
    buffer_error: unsafe extern "C" fn(Ctx) -> c_int,
    get_output_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    get_error_buffer: unsafe extern "C" fn(Ctx) -> *const c_char,
    run_cmd_from_buffer: unsafe extern "C" fn(Ctx, *const c_char) -> c_int,
    run_cmd_from_filename: unsafe extern "C" fn(Ctx, *const c_char) -> c_int,
    /// Keeps the functions above mapped.
    _library: libloading::os::unix::Library,
}

/// Libraries loaded so far, by name. They are never closed: libnftables keeps one-time global
/// set-up (`init_once`) that must not be torn down under a running context, and a library
/// mapped once costs nothing more.
static LOADED: Mutex<Vec<(String, &'static Api)>> = Mutex::new(Vec::new());

/// Held around every call into libnftables (see the module docs).
static LIBRARY_LOCK: Mutex<()> = Mutex::new(());

fn library_lock() -> std::sync::MutexGuard<'static, ()> {
    LIBRARY_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn load(name: &str) -> Result<&'static Api, String> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, api)) = loaded.iter().find(|(n, _)| n == name) {
        return Ok(api);
    }
    // SAFETY: loading libnftables runs its ELF constructors, which only set up static data; the
    // symbols are given their C signatures from libnftables.h below.
    let api = unsafe {
        let library = libloading::os::unix::Library::open(
            Some(name),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
        )
        .map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($name:literal) => {
                *library
                    .get(concat!($name, "\0").as_bytes())
                    .map_err(|e| format!("{}: {e}", $name))?
            };
        }
        Api {
            ctx_new: sym!("nft_ctx_new"),
            ctx_free: sym!("nft_ctx_free"),
            output_set_flags: sym!("nft_ctx_output_set_flags"),
            set_dry_run: sym!("nft_ctx_set_dry_run"),
            buffer_output: sym!("nft_ctx_buffer_output"),
            buffer_error: sym!("nft_ctx_buffer_error"),
            get_output_buffer: sym!("nft_ctx_get_output_buffer"),
            get_error_buffer: sym!("nft_ctx_get_error_buffer"),
            run_cmd_from_buffer: sym!("nft_run_cmd_from_buffer"),
            run_cmd_from_filename: sym!("nft_run_cmd_from_filename"),
            _library: library,
        }
    };
    let api: &'static Api = Box::leak(Box::new(api));
    loaded.push((name.to_string(), api));
    Ok(api)
}

/// What an `nft` argv asks libnftables to read.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    /// Arguments joined with spaces (`nft add rule …`).
    Buffer(CString),
    /// `-f -`: the invocation's standard input.
    Stdin(Vec<u8>),
    /// `-f FILE`.
    File(CString),
}

/// An `nft` invocation understood well enough to run in-process.
#[derive(Debug, PartialEq, Eq)]
struct NftCall {
    flags: c_uint,
    dry_run: bool,
    input: Input,
}

/// Read an argv the way the `nft` program does, for the options this executor knows; `None`
/// for anything else, which then runs as a process so that its behaviour (and its error
/// message) is the program's own.
fn parse_argv(argv: &[String], stdin: Option<&[u8]>) -> Option<NftCall> {
    let (program, args) = argv.split_first()?;
    if program != "nft" {
        return None;
    }
    let mut flags: c_uint = 0;
    let mut dry_run = false;
    let mut file: Option<&str> = None;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        i += 1;
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            match long {
                "handle" => flags |= OUTPUT_HANDLE,
                "echo" => flags |= OUTPUT_ECHO,
                "json" => flags |= OUTPUT_JSON,
                "stateless" => flags |= OUTPUT_STATELESS,
                "terse" => flags |= OUTPUT_TERSE,
                "check" => dry_run = true,
                "file" => {
                    file = Some(args.get(i)?);
                    i += 1;
                }
                _ => file = Some(long.strip_prefix("file=")?),
            }
            continue;
        }
        let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) else {
            i -= 1;
            break;
        };
        for (at, c) in cluster.char_indices() {
            match c {
                'a' => flags |= OUTPUT_HANDLE,
                'e' => flags |= OUTPUT_ECHO,
                'j' => flags |= OUTPUT_JSON,
                's' => flags |= OUTPUT_STATELESS,
                't' => flags |= OUTPUT_TERSE,
                'c' => dry_run = true,
                'f' => {
                    let rest = &cluster[at + 1..];
                    if rest.is_empty() {
                        file = Some(args.get(i)?);
                        i += 1;
                    } else {
                        file = Some(rest);
                    }
                    break;
                }
                _ => return None,
            }
        }
    }
    let words = &args[i..];
    // nft refuses options after the command ("options must be specified before commands");
    // leave that, and anything like it, to the program.
    if words.iter().any(|w| w.starts_with('-')) {
        return None;
    }
    let input = match file {
        Some(_) if !words.is_empty() => return None,
        Some(_) if flags & OUTPUT_JSON != 0 => return None,
        Some("-" | "/dev/stdin") => Input::Stdin(stdin.unwrap_or_default().to_vec()),
        Some(path) => Input::File(CString::new(path).ok()?),
        None if words.is_empty() => return None,
        None => Input::Buffer(CString::new(words.join(" ")).ok()?),
    };
    Some(NftCall {
        flags,
        dry_run,
        input,
    })
}

/// One call for the worker, and where to send the answer.
struct Request {
    call: NftCall,
    reply: mpsc::Sender<Output>,
}

/// The thread that owns a context, and the way to reach it.
struct Worker {
    requests: mpsc::Sender<Request>,
    thread: JoinHandle<()>,
}

/// An [`Executor`] that runs `nft` through libnftables in this process and everything else (and
/// every `nft` option it does not know) as a process; see the [module docs](self).
pub struct LibnftExecutor {
    fallback: ProcessExecutor,
    worker: Option<Worker>,
    netns: Option<String>,
}

impl std::fmt::Debug for LibnftExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibnftExecutor")
            .field("in_process", &self.is_in_process())
            .field("netns", &self.netns)
            .finish()
    }
}

impl Default for LibnftExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl LibnftExecutor {
    /// Run in the network namespace of the calling thread, in-process when
    /// [`DEFAULT_LIBRARY`] can be loaded.
    pub fn new() -> Self {
        Self::build(DEFAULT_LIBRARY, ProcessExecutor::new(), None, None)
    }

    /// Run everything inside the named namespace (`/run/netns/NAME`, or a path), like
    /// [`ProcessExecutor::in_netns`]; fails at once when the namespace does not exist.
    pub fn in_netns(name: &str) -> Result<Self, ExecError> {
        Self::with_library(DEFAULT_LIBRARY, Some(name))
    }

    /// Like [`new`](Self::new) / [`in_netns`](Self::in_netns) with another library name or
    /// path for `dlopen` (a name that cannot be loaded gives a pure process executor).
    pub fn with_library(library: &str, netns: Option<&str>) -> Result<Self, ExecError> {
        let Some(name) = netns else {
            return Ok(Self::build(library, ProcessExecutor::new(), None, None));
        };
        let fallback = ProcessExecutor::in_netns(name)?;
        let fd = open_netns(name)?;
        Ok(Self::build(
            library,
            fallback,
            Some(name.to_string()),
            Some(fd),
        ))
    }

    fn build(
        library: &str,
        fallback: ProcessExecutor,
        netns: Option<String>,
        netns_fd: Option<OwnedFd>,
    ) -> Self {
        let worker = match load(library).and_then(|api| start_worker(api, netns_fd)) {
            Ok(worker) => Some(worker),
            Err(reason) => {
                debug!(library, %reason, "libnftables not usable; running nft as a process");
                None
            }
        };
        LibnftExecutor {
            fallback,
            worker,
            netns,
        }
    }

    /// Kill a program of the process fallback (everything not run in-process) that runs
    /// longer than `timeout`, like [`ProcessExecutor::with_timeout`]. A call into libnftables
    /// runs on this process's worker thread and cannot be interrupted: it is not bounded.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.fallback = self.fallback.with_timeout(timeout);
        self
    }

    /// Whether `nft` commands run in this process (false: every command is a process).
    pub fn is_in_process(&self) -> bool {
        self.worker.is_some()
    }

    /// The namespace commands run in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Free the libnftables context now and wait for it: closing its netlink socket after
    /// deletes waits for an RCU grace period (7–19 ms measured), which dropping the executor
    /// leaves to the background instead. While a context is being freed, other executors'
    /// commands wait for it (all libnftables calls share one lock).
    pub fn close(self) {
        if let Some(Worker { requests, thread }) = self.worker {
            drop(requests);
            let _ = thread.join();
        }
    }

    fn run_in_process(&self, worker: &Worker, call: NftCall) -> Option<Result<Output, ExecError>> {
        let (reply, answer) = mpsc::channel();
        if worker.requests.send(Request { call, reply }).is_err() {
            // The worker is gone before taking the call: nothing ran, the process can.
            debug!("libnftables worker has stopped; running nft as a process");
            return None;
        }
        Some(answer.recv().map_err(|_| {
            ExecError::Other("the libnftables worker stopped while running an nft command".into())
        }))
    }
}

impl Executor for LibnftExecutor {
    fn run(&self, invocation: Invocation<'_>) -> Result<Output, ExecError> {
        if let Some(worker) = &self.worker {
            if let Some(call) = parse_argv(invocation.argv, invocation.stdin) {
                if let Some(result) = self.run_in_process(worker, call) {
                    return result;
                }
            }
        }
        self.fallback.run(invocation)
    }

    fn check_program(&self, program: &str) -> Result<(), ExecError> {
        if program == "nft" && self.is_in_process() {
            return Ok(());
        }
        self.fallback.check_program(program)
    }

    fn supports_batch(&self) -> bool {
        self.fallback.supports_batch()
    }

    /// The namespace of the fallback process executor, which is the worker's too.
    fn lock_key(&self) -> String {
        self.fallback.lock_key()
    }
}

/// Start the worker thread and wait until it has a context (or has failed to make one).
fn start_worker(api: &'static Api, netns: Option<OwnedFd>) -> Result<Worker, String> {
    let (requests, inbox) = mpsc::channel::<Request>();
    let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
    let thread = std::thread::Builder::new()
        // The kernel names the committing task in `# new generation … (NAME)`: keep nft's.
        .name("nft".into())
        .spawn(move || {
            let ctx = match open_context(api, netns) {
                Ok(ctx) => ctx,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            for Request { call, reply } in inbox {
                let _ = reply.send(ctx.run(call));
            }
            ctx.free();
        })
        .map_err(|e| format!("cannot start the libnftables thread: {e}"))?;
    match ready.recv() {
        Ok(Ok(())) => Ok(Worker { requests, thread }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err("the libnftables thread died while starting".into())
        }
    }
}

/// A context, used only by the worker thread that made it.
struct Context {
    api: &'static Api,
    ctx: Ctx,
}

/// Enter the namespace (this thread only) and make a context with buffered output.
fn open_context(api: &'static Api, netns: Option<OwnedFd>) -> Result<Context, String> {
    if let Some(fd) = netns {
        // SAFETY: plain system call on a descriptor we own; it moves only this thread.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
    }
    // libnftables 1.0.x calls exit() when it cannot open its netlink socket: try first.
    // SAFETY: plain system calls; the descriptor is closed again at once.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        );
        if fd < 0 {
            return Err(format!(
                "netfilter netlink socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::close(fd);
    }
    let _lock = library_lock();
    // SAFETY: C calls with their documented signatures; the context stays on this thread.
    unsafe {
        let ctx = (api.ctx_new)(NFT_CTX_DEFAULT);
        if ctx.is_null() {
            return Err("nft_ctx_new failed".into());
        }
        if (api.buffer_output)(ctx) != 0 || (api.buffer_error)(ctx) != 0 {
            (api.ctx_free)(ctx);
            return Err("cannot buffer libnftables output".into());
        }
        Ok(Context { api, ctx })
    }
}

/// Take a buffer's text (libnftables rewinds it for the next command).
///
/// SAFETY: `buf` is null or a NUL-terminated string owned by the context.
unsafe fn text(buf: *const c_char) -> String {
    if buf.is_null() {
        String::new()
    } else {
        CStr::from_ptr(buf).to_string_lossy().into_owned()
    }
}

impl Context {
    fn run(&self, call: NftCall) -> Output {
        // Standard input becomes a memfd read as a file, so errors carry FILE:LINE:COL.
        let stdin_file = match &call.input {
            Input::Stdin(bytes) => match memfd(bytes) {
                Ok(f) => Some(f),
                Err(e) => {
                    return Output {
                        status: 1,
                        stdout: String::new(),
                        stderr: format!("virtfw: cannot pass standard input to libnftables: {e}\n"),
                    }
                }
            },
            _ => None,
        };
        let stdin_path = stdin_file
            .as_ref()
            .map(|f| format!("/proc/self/fd/{}", f.as_raw_fd()));
        let stdin_cpath = stdin_path
            .as_ref()
            .map(|p| CString::new(p.as_str()).expect("no NUL in a /proc path"));
        let api = self.api;
        let _lock = library_lock();
        // SAFETY: the context is alive and used by this thread only; strings are NUL-terminated
        // and outlive the calls; the buffers are copied before the next call.
        let (rc, stdout, mut stderr) = unsafe {
            (api.output_set_flags)(self.ctx, call.flags);
            (api.set_dry_run)(self.ctx, call.dry_run);
            let rc = match (&call.input, &stdin_cpath) {
                (Input::Buffer(cmd), _) => (api.run_cmd_from_buffer)(self.ctx, cmd.as_ptr()),
                (Input::File(path), _) => (api.run_cmd_from_filename)(self.ctx, path.as_ptr()),
                (Input::Stdin(_), Some(path)) => {
                    (api.run_cmd_from_filename)(self.ctx, path.as_ptr())
                }
                (Input::Stdin(_), None) => unreachable!("memfd made above"),
            };
            (
                rc,
                text((api.get_output_buffer)(self.ctx)),
                text((api.get_error_buffer)(self.ctx)),
            )
        };
        if let Some(path) = &stdin_path {
            stderr = rename_input(&stderr, path, "/dev/stdin");
        }
        Output {
            status: if rc == 0 { 0 } else { 1 },
            stdout,
            stderr,
        }
    }

    fn free(self) {
        let _lock = library_lock();
        // SAFETY: the context was made by this thread and is not used again.
        unsafe { (self.api.ctx_free)(self.ctx) }
    }
}

/// An anonymous file holding `bytes`, closed on exec.
fn memfd(bytes: &[u8]) -> std::io::Result<File> {
    // SAFETY: plain system call with a NUL-terminated name; the new descriptor is owned below.
    let fd = unsafe { libc::memfd_create(c"virtfw-nft-stdin".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    Ok(file)
}

/// Error positions name the input file at the start of a line (`FILE:LINE:COL-COL: Error: …`);
/// show `to` instead of `from` there, as the program does for standard input.
fn rename_input(stderr: &str, from: &str, to: &str) -> String {
    let prefix = format!("{from}:");
    stderr
        .split_inclusive('\n')
        .map(|line| match line.strip_prefix(&prefix) {
            Some(rest) => format!("{to}:{rest}"),
            None => line.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    fn buffer(s: &str) -> Input {
        Input::Buffer(CString::new(s).unwrap())
    }

    #[test]
    fn argv_is_read_like_the_nft_program() {
        let call = parse_argv(&argv("nft -ae add rule ip t c accept"), None).unwrap();
        assert_eq!(call.flags, OUTPUT_HANDLE | OUTPUT_ECHO);
        assert_eq!(call.input, buffer("add rule ip t c accept"));
        let call = parse_argv(&argv("nft -ae -f -"), Some(b"add table ip t\n")).unwrap();
        assert_eq!(call.input, Input::Stdin(b"add table ip t\n".to_vec()));
        let call = parse_argv(&argv("nft -f -"), None).unwrap();
        assert_eq!((call.flags, call.input), (0, Input::Stdin(Vec::new())));
        let call = parse_argv(&argv("nft -aef -"), Some(b"x")).unwrap();
        assert_eq!(call.flags, OUTPUT_HANDLE | OUTPUT_ECHO);
        assert_eq!(call.input, Input::Stdin(b"x".to_vec()));
        let call = parse_argv(&argv("nft --handle --file=/tmp/r.nft"), None).unwrap();
        assert_eq!(call.input, Input::File(CString::new("/tmp/r.nft").unwrap()));
        let call = parse_argv(&argv("nft -j list tables"), None).unwrap();
        assert_eq!(
            (call.flags, call.input),
            (OUTPUT_JSON, buffer("list tables"))
        );
        let call = parse_argv(&argv("nft -c -s list ruleset"), None).unwrap();
        assert!(call.dry_run);
        assert_eq!(call.flags, OUTPUT_STATELESS);
    }

    #[test]
    fn anything_else_is_left_to_the_process() {
        for line in [
            "iptables -w -A FORWARD -j ACCEPT",
            "/usr/sbin/nft list ruleset",
            "nft",
            "nft -a",
            "nft -i",
            "nft -n list ruleset",
            "nft --numeric list ruleset",
            "nft -a add table ip t -e",
            "nft -f - add table ip t",
            "nft -j -f -",
            "nft -f",
        ] {
            assert_eq!(parse_argv(&argv(line), None), None, "{line}");
        }
        let nul = vec!["nft".to_string(), "list".to_string(), "a\0b".to_string()];
        assert_eq!(parse_argv(&nul, None), None);
    }

    #[test]
    fn input_file_is_renamed_only_where_positions_are_printed() {
        let err = "/proc/self/fd/7:2:45-49: Error: Service out of range\n\
                   add rule ip T C tcp dport 70000 /proc/self/fd/7:\n    ^^^^^\n";
        assert_eq!(
            rename_input(err, "/proc/self/fd/7", "/dev/stdin"),
            "/dev/stdin:2:45-49: Error: Service out of range\n\
             add rule ip T C tcp dport 70000 /proc/self/fd/7:\n    ^^^^^\n"
        );
    }

    #[test]
    fn the_process_fallback_is_bounded_by_the_timeout() {
        let exec = LibnftExecutor::with_library("libvirtfw-no-such-library.so.0", None)
            .unwrap()
            .with_timeout(std::time::Duration::from_millis(300));
        let argv = argv("sleep 600");
        let err = exec
            .run(Invocation {
                argv: &argv,
                stdin: None,
            })
            .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_library_gives_a_process_executor() {
        let exec = LibnftExecutor::with_library("libvirtfw-no-such-library.so.0", None).unwrap();
        assert!(!exec.is_in_process());
        assert!(exec.check_program("virtfw-no-such-program").is_err());
    }
}
