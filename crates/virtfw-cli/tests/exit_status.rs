//! The exit statuses are one table (`virtfw_store::EXIT_STATUSES`): `--help` prints it, and
//! the docs' copies list the same codes with the same summaries.

use std::path::PathBuf;
use std::process::Command;

use virtfw_store::{exit_status_help, ErrorKind, EXIT_STATUSES};

const BIN: &str = env!("CARGO_BIN_EXE_virtfw");

fn doc(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap()
}

/// Backticks are formatting, not words.
fn plain(s: &str) -> String {
    s.replace('`', "")
}

#[test]
fn help_prints_the_table() {
    let o = Command::new(BIN).arg("--help").output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8(o.stdout).unwrap();
    assert!(help.contains(&exit_status_help()), "{help}");
    for s in &EXIT_STATUSES {
        assert!(
            help.contains(&format!("  {}  {}", s.code, s.summary)),
            "{help}"
        );
    }
}

#[test]
fn docs_cli_md_lists_the_same_codes_and_summaries() {
    let text = doc("docs/cli.md");
    let section = text
        .split("## Exit status\n")
        .nth(1)
        .expect("docs/cli.md has an Exit status section");
    let rows: Vec<(i32, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with("| code"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (cells[0].parse().unwrap(), plain(cells[1]))
        })
        .collect();
    let codes: Vec<i32> = rows.iter().map(|(c, _)| *c).collect();
    let expected: Vec<i32> = EXIT_STATUSES.iter().map(|s| s.code).collect();
    assert_eq!(codes, expected, "docs/cli.md's exit status table");
    for ((code, meaning), s) in rows.iter().zip(&EXIT_STATUSES) {
        assert!(
            meaning.starts_with(s.summary),
            "docs/cli.md, exit status {code}: '{meaning}' does not start with '{}'",
            s.summary
        );
    }
}

#[test]
fn readme_lists_the_same_codes_and_summaries_in_order() {
    let text = plain(&doc("README.md"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let at = text
        .find("Exit status (one table")
        .expect("README.md has the exit status paragraph");
    let mut rest = &text[at..];
    for s in &EXIT_STATUSES {
        let entry = format!("{} {}", s.code, s.summary);
        let i = rest.find(&entry).unwrap_or_else(|| {
            panic!("README.md's exit status paragraph lacks '{entry}' (in order)")
        });
        rest = &rest[i + entry.len()..];
    }
}

#[test]
fn every_error_kind_has_a_row() {
    for kind in [
        ErrorKind::Refused,
        ErrorKind::Usage,
        ErrorKind::Drift,
        ErrorKind::State,
        ErrorKind::Interrupted,
    ] {
        let code = kind.exit_code();
        let row = EXIT_STATUSES.iter().find(|s| s.code == code).unwrap();
        assert_eq!(row.kind, Some(kind));
    }
}
