//! What a failed firewall program said, in kinds the engine acts on.
//!
//! Each tool's module classifies its own error output ([`crate::nft::failure_kind`],
//! [`crate::xtables::failure_kind`]); this module holds the kinds and the one format both
//! share: the input line a batch failure blames.

/// What a failure message says about the object a command named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The object (table, chain, rule, handle) is not there: a removal found it already gone.
    NotFound,
    /// The object exists already: a `create` met someone else's.
    Exists,
    /// Anything else.
    Other,
}

/// The input line (1-based) nft or a restore program blamed in its error output, if any:
/// `/dev/stdin:LINE:COL`, `-:LINE:COL`, `line LINE failed`, `Error occurred at line: LINE`.
pub fn error_line(stderr: &str) -> Option<usize> {
    for l in stderr.lines() {
        for prefix in ["/dev/stdin:", "-:"] {
            if let Some(rest) = l.strip_prefix(prefix) {
                if let Some(n) = rest.split(':').next().and_then(|n| n.parse().ok()) {
                    return Some(n);
                }
            }
        }
        for marker in ["line ", "at line: "] {
            if let Some(at) = l.find(marker) {
                let digits: String = l[at + marker.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(n) = digits.parse() {
                    return Some(n);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines() {
        assert_eq!(
            error_line("/dev/stdin:4:22-27: Error: Could not process rule"),
            Some(4)
        );
        assert_eq!(error_line("-:2:1-3: Error: syntax error"), Some(2));
        assert_eq!(
            error_line("iptables-restore: line 3 failed: Bad rule"),
            Some(3)
        );
        assert_eq!(error_line("Error occurred at line: 5\nTry"), Some(5));
        assert_eq!(error_line("nothing"), None);
    }
}
