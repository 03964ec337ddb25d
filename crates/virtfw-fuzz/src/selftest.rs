//! Targets that fail on purpose, so the runner's crash handling can be tested without relying
//! on a bug in a real parser. Not listed by `virtfw-fuzz list` and not run by `all`.

use crate::targets::Target;

/// The runner's self-test targets.
pub const TARGETS: &[Target] = &[
    Target {
        name: "selftest_panic",
        run: panic_on_marker,
        dictionary: &["PANIC"],
    },
    Target {
        name: "selftest_overflow",
        run: overflow_on_marker,
        dictionary: &["DEEP"],
    },
];

/// Panics when the input contains `PANIC`.
pub fn panic_on_marker(data: &[u8]) {
    assert!(
        !data.windows(5).any(|w| w == b"PANIC"),
        "selftest: input contains PANIC"
    );
}

/// Recurses without bound when the input contains `DEEP`: the process dies of a stack overflow
/// (SIGSEGV caught by Rust's guard page handler, then abort), as a deep-XML bug would.
pub fn overflow_on_marker(data: &[u8]) {
    if data.windows(4).any(|w| w == b"DEEP") {
        std::hint::black_box(descend(std::hint::black_box(1)));
    }
}

#[allow(unconditional_recursion)]
fn descend(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 64]);
    descend(n + 1).wrapping_add(pad[(n % 64) as usize])
}
