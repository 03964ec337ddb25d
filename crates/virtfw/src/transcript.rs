//! libvirt's command-line rendering: single-line for logs and errors, multi-line for dry runs and
//! the conformance transcripts.
//!
//! The format is an observable interface (libvirt's golden files and logs use it), so it is
//! reproduced exactly: program without directory, shell-quoted arguments, and in transcripts a
//! line break before every argument except an option's value and a lone `!`.

use std::borrow::Cow;

/// Characters that make an argument need single quotes.
fn needs_quotes(c: char) -> bool {
    matches!(
        c,
        '\r' | '\t'
            | '\n'
            | ' '
            | '!'
            | '"'
            | '#'
            | '$'
            | '&'
            | '\''
            | '('
            | ')'
            | '*'
            | ';'
            | '<'
            | '>'
            | '?'
            | '['
            | '\\'
            | ']'
            | '^'
            | '`'
            | '{'
            | '|'
            | '}'
            | '~'
    )
}

/// Quote one argument the way libvirt's shell escaping does.
pub fn quote(arg: &str) -> Cow<'_, str> {
    if arg.is_empty() {
        return Cow::Borrowed("''");
    }
    if !arg.chars().any(needs_quotes) {
        return Cow::Borrowed(arg);
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('\'');
    for c in arg.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    Cow::Owned(out)
}

fn program_name(argv0: &str) -> &str {
    argv0.rsplit('/').next().unwrap_or(argv0)
}

/// One line: program name and quoted arguments joined by spaces (used in error messages).
pub fn command_line<S: AsRef<str>>(argv: &[S]) -> String {
    let mut out = String::new();
    for (i, arg) in argv.iter().enumerate() {
        let arg = arg.as_ref();
        if i == 0 {
            out.push_str(program_name(arg));
        } else {
            out.push(' ');
            out.push_str(&quote(arg));
        }
    }
    out
}

/// The multi-line transcript entry of one command, ending in a newline, as in libvirt's
/// `networkxml2firewalldata` files.
pub fn transcript_entry<S: AsRef<str>>(argv: &[S]) -> String {
    let mut out = String::new();
    let mut prev: Option<&str> = None;
    for (i, arg) in argv.iter().enumerate() {
        let arg = arg.as_ref();
        if i == 0 {
            out.push_str(program_name(arg));
        } else {
            let prev_is_option = prev.is_some_and(|p| p.starts_with('-'));
            let joins = arg == "!" || (!arg.starts_with('-') && prev_is_option);
            out.push_str(if joins { " " } else { " \\\n" });
            out.push_str(&quote(arg));
        }
        prev = Some(arg);
    }
    out.push('\n');
    out
}

/// The transcript of many commands, concatenated.
pub fn transcript<S: AsRef<str>>(commands: &[Vec<S>]) -> String {
    commands.iter().map(|c| transcript_entry(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_follows_libvirt() {
        assert_eq!(quote("192.168.122.0/24"), "192.168.122.0/24");
        assert_eq!(quote(":1024-65535"), ":1024-65535");
        assert_eq!(quote("related,established"), "related,established");
        assert_eq!(quote("!"), "'!'");
        assert_eq!(quote("!="), "'!='");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(
            quote("{ type nat hook postrouting priority 100; policy accept; }"),
            "'{ type nat hook postrouting priority 100; policy accept; }'"
        );
    }

    #[test]
    fn transcript_breaks_like_the_golden_files() {
        let argv = [
            "/usr/sbin/iptables",
            "-w",
            "--table",
            "nat",
            "--insert",
            "LIBVIRT_PRT",
            "--source",
            "192.168.122.0/24",
            "!",
            "--destination",
            "192.168.122.0/24",
            "--jump",
            "MASQUERADE",
        ];
        assert_eq!(
            transcript_entry(&argv),
            "iptables \\\n-w \\\n--table nat \\\n--insert LIBVIRT_PRT \\\n--source 192.168.122.0/24 '!' \\\n--destination 192.168.122.0/24 \\\n--jump MASQUERADE\n"
        );
        assert_eq!(
            transcript_entry(&["nft", "-ae", "insert", "rule"]),
            "nft \\\n-ae insert \\\nrule\n"
        );
        assert_eq!(
            command_line(&["nft", "add", "rule", "ip", "t", "c", "ip", "daddr", "!=", "1.2.3.4"]),
            "nft add rule ip t c ip daddr '!=' 1.2.3.4"
        );
    }
}
