//! Fuzzing virtfw's parsers on the stable toolchain.
//!
//! [`targets`] holds one `fn(&[u8])` per parser reached through the public API (the transaction
//! XML, network definitions, status files, and every parser of tool output); each panics when
//! an invariant breaks, not only when the parser does. [`runner`] drives them: a small mutation
//! fuzzer seeded from the checked-in corpus (`corpus/TARGET/`), with a time budget, a printed
//! seed that replays a run, and every crashing input kept on disk before it runs, so even a
//! stack overflow leaves its input behind. It is not coverage-guided. The same target functions
//! can be driven by cargo-fuzz (see `fuzz/`, not run here). How to use it: docs/fuzzing.md.

pub mod mutate;
pub mod runner;
pub mod selftest;
pub mod targets;

pub use targets::{find, Target, TARGETS};
