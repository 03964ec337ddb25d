//! Byte-level mutations of corpus inputs, driven by a seeded generator so a run can be
//! replayed exactly.
//!
//! The operators are the classic "havoc" set (bit and byte flips, interesting bytes and
//! numbers, insert/delete/duplicate/repeat ranges, splicing two inputs) plus the ones this
//! project's parsers need: dictionary tokens (`<group>`, `<item>`, `&#13;`, `# handle`, `;`, …)
//! and deep nesting (a range wrapped in thousands of open/close tag pairs), which is how the
//! stack overflows of issue 8 were found by hand.

use fastrand::Rng;

/// Bytes that mean something to XML, nft or iptables-restore.
const INTERESTING_BYTES: &[u8] = b"\0\xff<>&'\";#\n\r\t {}/:-=0129";

/// Numbers that sit on parsers' edges (overflow of u32/u64/usize, negatives, zeros).
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "00",
    "1",
    "-1",
    "15",
    "16",
    "255",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999",
];

/// Tag pairs used for deep nesting.
const NESTING: &[(&str, &str)] = &[
    ("<group>", "</group>"),
    ("<a>", "</a>"),
    ("<network>", "</network>"),
    ("<x:a xmlns:x='u'>", "</x:a>"),
];

/// The deepest nesting the mutator builds by default: past the ~12,500 levels at which
/// parsing overflowed an 8 MiB stack (issue 8).
pub const DEFAULT_MAX_NESTING: usize = 20_000;

/// A mutator: the generator, the target's dictionary and size limits.
pub struct Mutator {
    rng: Rng,
    dictionary: &'static [&'static str],
    max_len: usize,
    max_nesting: usize,
}

impl Mutator {
    pub fn new(seed: u64, dictionary: &'static [&'static str], max_len: usize) -> Self {
        Mutator {
            rng: Rng::with_seed(seed),
            dictionary,
            max_len,
            max_nesting: DEFAULT_MAX_NESTING,
        }
    }

    /// Build at most `levels` of nesting per mutation (to look past a known deep-input bug
    /// while it is being fixed; stacked mutations can still nest deeper).
    pub fn with_max_nesting(mut self, levels: usize) -> Self {
        self.max_nesting = levels.max(1);
        self
    }

    /// Pick an index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.rng.usize(..n)
    }

    /// A new input: `base` with 1–8 stacked mutations; `other` is a second corpus input to
    /// splice from.
    pub fn mutate(&mut self, base: &[u8], other: &[u8]) -> Vec<u8> {
        let mut data = base.to_vec();
        let rounds = 1 << self.rng.usize(..4);
        for _ in 0..rounds {
            self.mutate_once(&mut data, other);
            // Bounded after every round: stacked repeats (up to 64× each) would otherwise
            // grow an input exponentially before the end (a CI run was OOM-killed at 24 GB).
            data.truncate(self.max_len);
        }
        data
    }

    /// A random range `[start, end)` of `len` bytes, biased towards short ranges.
    fn range(&mut self, len: usize) -> (usize, usize) {
        if len == 0 {
            return (0, 0);
        }
        let start = self.rng.usize(..len);
        let max = (len - start).min(if self.rng.bool() { 16 } else { len });
        let end = start + self.rng.usize(1..=max.max(1));
        (start, end.min(len))
    }

    fn token(&mut self) -> &'static str {
        if self.dictionary.is_empty() || self.rng.u8(..8) == 0 {
            INTERESTING_NUMBERS[self.rng.usize(..INTERESTING_NUMBERS.len())]
        } else {
            self.dictionary[self.rng.usize(..self.dictionary.len())]
        }
    }

    fn mutate_once(&mut self, data: &mut Vec<u8>, other: &[u8]) {
        let len = data.len();
        let at = self.rng.usize(..=len);
        match self.rng.u8(..14) {
            // Flip one bit.
            0 if len > 0 => {
                let i = self.rng.usize(..len);
                data[i] ^= 1 << self.rng.u8(..8);
            }
            // Set a byte to an interesting or random value.
            1 if len > 0 => {
                let i = self.rng.usize(..len);
                data[i] = if self.rng.bool() {
                    INTERESTING_BYTES[self.rng.usize(..INTERESTING_BYTES.len())]
                } else {
                    self.rng.u8(..)
                };
            }
            // Insert a few random bytes.
            2 => {
                let n = self.rng.usize(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.u8(..)).collect();
                data.splice(at..at, bytes);
            }
            // Delete a range.
            3 if len > 0 => {
                let (s, e) = self.range(len);
                data.drain(s..e);
            }
            // Duplicate a range somewhere else.
            4 if len > 0 => {
                let (s, e) = self.range(len);
                let copy = data[s..e].to_vec();
                let to = self.rng.usize(..=len);
                data.splice(to..to, copy);
            }
            // Repeat a range many times in place (long lists, long names).
            5 if len > 0 => {
                let (s, e) = self.range(len);
                let copy = data[s..e].to_vec();
                let times = self.rng.usize(2..=64);
                let repeated: Vec<u8> = copy.repeat(times);
                data.splice(s..e, repeated);
            }
            // Insert a dictionary token or interesting number.
            6..=8 => {
                let t = self.token().as_bytes().to_vec();
                data.splice(at..at, t);
            }
            // Replace a range with a token.
            9 if len > 0 => {
                let (s, e) = self.range(len);
                let t = self.token().as_bytes().to_vec();
                data.splice(s..e, t);
            }
            // Replace a run of digits by an interesting number.
            10 => {
                if let Some((s, e)) = self.digit_run(data) {
                    let n = INTERESTING_NUMBERS[self.rng.usize(..INTERESTING_NUMBERS.len())];
                    data.splice(s..e, n.bytes());
                }
            }
            // Splice: our head, the other input's tail.
            11 if !other.is_empty() => {
                let cut = self.rng.usize(..=len);
                let from = self.rng.usize(..other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            // Deep nesting around a range (a few levels or many thousands).
            12 => {
                let (open, close) = NESTING[self.rng.usize(..NESTING.len())];
                let depth = if self.rng.bool() || self.max_nesting <= 64 {
                    self.rng.usize(1..=64.min(self.max_nesting))
                } else {
                    self.rng.usize(self.max_nesting / 20..=self.max_nesting)
                };
                let (s, e) = self.range(len);
                let mut out = Vec::with_capacity(len + depth * (open.len() + close.len()));
                out.extend_from_slice(&data[..s]);
                for _ in 0..depth {
                    out.extend_from_slice(open.as_bytes());
                }
                out.extend_from_slice(&data[s..e]);
                for _ in 0..depth {
                    out.extend_from_slice(close.as_bytes());
                }
                out.extend_from_slice(&data[e..]);
                *data = out;
            }
            // Truncate.
            13 if len > 0 => {
                data.truncate(self.rng.usize(..len));
            }
            // An operator that did not apply to an empty input: insert a token instead.
            _ => {
                let t = self.token().as_bytes().to_vec();
                data.splice(at..at, t);
            }
        }
    }

    /// A random run of ASCII digits in `data`, if there is one.
    fn digit_run(&mut self, data: &[u8]) -> Option<(usize, usize)> {
        let runs: Vec<(usize, usize)> = {
            let mut runs = Vec::new();
            let mut i = 0;
            while i < data.len() {
                if data[i].is_ascii_digit() {
                    let s = i;
                    while i < data.len() && data[i].is_ascii_digit() {
                        i += 1;
                    }
                    runs.push((s, i));
                } else {
                    i += 1;
                }
            }
            runs
        };
        (!runs.is_empty()).then(|| runs[self.rng.usize(..runs.len())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_inputs() {
        let mut a = Mutator::new(7, &["<group>"], 1 << 20);
        let mut b = Mutator::new(7, &["<group>"], 1 << 20);
        for _ in 0..1000 {
            assert_eq!(
                a.mutate(b"<firewall/>", b"<item>x</item>"),
                b.mutate(b"<firewall/>", b"<item>x</item>")
            );
        }
    }

    #[test]
    fn mutations_change_inputs_and_respect_the_size_limit() {
        let mut m = Mutator::new(1, &["<group>"], 4096);
        let mut changed = 0;
        for _ in 0..1000 {
            let out = m.mutate(b"<firewall backend='nftables'/>", b"");
            assert!(out.len() <= 4096);
            if out != b"<firewall backend='nftables'/>" {
                changed += 1;
            }
        }
        assert!(
            changed > 900,
            "only {changed} of 1000 mutations changed the input"
        );
    }

    #[test]
    fn empty_input_grows() {
        let mut m = Mutator::new(3, &["<group>"], 1 << 16);
        assert!((0..100).any(|_| !m.mutate(b"", b"").is_empty()));
    }
}
