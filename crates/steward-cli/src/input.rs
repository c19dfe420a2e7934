//! Reading secrets from stdin or the terminal, and parsing flag values.

use std::io::{BufRead, IsTerminal};

use crate::error::{CliError, Result};

/// Reads exactly `n` lines from stdin (without their line endings). Secrets come this way so
/// they never appear in the process list or shell history.
pub fn stdin_lines(n: usize, what: &str) -> Result<Vec<String>> {
    read_lines(std::io::stdin().lock(), n, what)
}

/// Reads exactly `n` lines from `reader`; fewer is an input error naming `what`.
pub fn read_lines(reader: impl BufRead, n: usize, what: &str) -> Result<Vec<String>> {
    let mut lines = Vec::with_capacity(n);
    for line in reader.lines().take(n) {
        let line =
            line.map_err(|source| CliError::Stdio { context: "cannot read stdin", source })?;
        lines.push(line.trim_end_matches('\r').to_string());
    }
    if lines.len() < n {
        return Err(CliError::Input(format!("expected {what} on stdin ({n} line(s))")));
    }
    Ok(lines)
}

/// Whether stdin is a terminal: then passwords not given on stdin are asked for.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Whether stderr is a terminal: then a person reads the warnings.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Asks the terminal (`/dev/tty`) for a secret with echo off, after `prompt`.
pub fn hidden(prompt: &str) -> Result<String> {
    rpassword::prompt_password_with_config(prompt, rpassword::ConfigBuilder::new().build())
        .map_err(|source| CliError::Stdio { context: "cannot read from the terminal", source })
}

/// Asks the terminal for a new password twice, with echo off; they must match.
pub fn new_password() -> Result<String> {
    let first = hidden("New password: ")?;
    let again = hidden("Repeat the new password: ")?;
    if first != again {
        return Err(CliError::Input("the two passwords differ; nothing was changed".into()));
    }
    Ok(first)
}

/// Parses a duration such as `60s`, `5m`, `1h`, `1h30m` or `90` (seconds).
pub fn duration(text: &str) -> Result<prost_types::Duration> {
    let bad = || CliError::Input(format!("invalid duration {text:?}: use e.g. 60s, 5m, 1h30m"));
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(prost_types::Duration { seconds, nanos: 0 });
    }
    let mut seconds: i64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let value: i64 = number.parse().map_err(|_| bad())?;
        number.clear();
        seconds = value.checked_mul(unit).and_then(|v| seconds.checked_add(v)).ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(prost_types::Duration { seconds, nanos: 0 })
}

/// Parses a card expiry `MM/YYYY` (or `MM/YY`) into (month, year).
pub fn expiry(text: &str) -> Result<(i32, i32)> {
    let bad = || CliError::Input(format!("invalid expiry {text:?}: use MM/YYYY"));
    let (month, year) = text.trim().split_once('/').ok_or_else(bad)?;
    let month: i32 = month.trim().parse().map_err(|_| bad())?;
    let year_text = year.trim();
    let mut year: i32 = year_text.parse().map_err(|_| bad())?;
    if year_text.len() == 2 {
        year += 2000;
    } else if year_text.len() != 4 {
        return Err(bad());
    }
    if !(1..=12).contains(&month) {
        return Err(bad());
    }
    Ok((month, year))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_requested_lines_or_fails() {
        let lines = read_lines("one\r\ntwo\nthree\n".as_bytes(), 2, "x").unwrap();
        assert_eq!(lines, ["one", "two"]);
        assert!(matches!(read_lines("one\n".as_bytes(), 2, "x"), Err(CliError::Input(_))));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(duration("60s").unwrap().seconds, 60);
        assert_eq!(duration("90").unwrap().seconds, 90);
        assert_eq!(duration("1h30m").unwrap().seconds, 5400);
        assert_eq!(duration("5m").unwrap().seconds, 300);
        for bad in ["", "s", "10x", "5m3", "-"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_expiry() {
        assert_eq!(expiry("03/2031").unwrap(), (3, 2031));
        assert_eq!(expiry("12/30").unwrap(), (12, 2030));
        for bad in ["13/2030", "0/2030", "2030", "03/203", "ab/cd"] {
            assert!(expiry(bad).is_err(), "{bad}");
        }
    }
}
