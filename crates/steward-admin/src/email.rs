//! Email addresses of administrators. Deliberately simple (no quoted local parts, no IP-literal
//! domains): an address must be something a mail server will actually deliver to. Letters of any
//! script are accepted (`ü@bücher.de`), but the local part and each domain label must each be
//! of one script (UTS #39 mixed-script detection, as browsers judge domain names): `аdmin` with
//! a Cyrillic `а` looks like `admin` and is refused. A part written wholly in Cyrillic letters
//! that look like Latin ones (`аррӏе` for `apple`, `ѕсоре`; digits and punctuation aside) is
//! refused too, as browsers judge whole-script confusable domain names (Chromium's set of
//! Latin-alike Cyrillic letters), except under a top-level domain where Cyrillic is expected
//! (`.рф`, `.бг`, `.срб`, `.ru`, `.ua`, ...). Punycode (`xn--`) labels are ASCII and pass as written.

use steward_runtime::{ApiError, ApiResult};
use unicode_security::MixedScript;

/// Longest accepted address (RFC 5321 path limit minus the angle brackets).
pub const MAX_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;

/// A validated email address, kept as entered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Validates `value`: `local@domain`, no whitespace or control characters, at most 254
    /// characters, a local part of dot-separated RFC 5322 atoms, and a domain of at least two
    /// dot-separated labels of letters, digits and inner hyphens, the local part and each label
    /// of a single script. `field` names the request field in the error.
    pub fn parse(field: &str, value: &str) -> ApiResult<Self> {
        let bad = |why: &str| ApiError::invalid(field, why.to_string());
        if value.is_empty() {
            return Err(bad("is required"));
        }
        if value.chars().count() > MAX_LEN {
            return Err(bad("must be at most 254 characters"));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must not contain spaces"));
        }
        let Some((local, domain)) = value.rsplit_once('@') else {
            return Err(bad("must look like name@example.com"));
        };
        if local.is_empty() || local.len() > MAX_LOCAL_LEN || !local.split('.').all(valid_atom) {
            return Err(bad("has an invalid part before the @"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || !labels.iter().all(|l| valid_label(l)) {
            return Err(bad("must have a domain like example.com"));
        }
        if !local.is_single_script() || !labels.iter().all(|l| l.is_single_script()) {
            return Err(bad(
                "mixes letters of different scripts in one part (a homoglyph, such as a Cyrillic \
                 `а` among Latin letters)",
            ));
        }
        let cyrillic_expected = labels.last().is_some_and(|tld| cyrillic_tld(tld));
        if !cyrillic_expected
            && std::iter::once(local).chain(labels.iter().copied()).any(whole_script_confusable)
        {
            return Err(bad(
                "has a part that only looks Latin (a homoglyph, such as `аррӏе` written in \
                 Cyrillic letters)",
            ));
        }
        Ok(Self(value.to_string()))
    }

    /// The address as entered.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address lowercased, for case-insensitive uniqueness.
    pub fn lower(&self) -> String {
        self.0.to_lowercase()
    }
}

/// Cyrillic letters that look like Latin ones (Chromium's IDN spoof checker's set, lowercase).
const LATIN_ALIKE_CYRILLIC: &str = "асԁеһіјӏорԛѕԝхуъьҽпгѵѡ";

/// A part whose letters (digits, dots, hyphens and symbols aside) are all Latin-alike Cyrillic
/// ones: Cyrillic posing as Latin.
fn whole_script_confusable(part: &str) -> bool {
    let mut letters =
        part.chars().filter(|c| c.is_alphabetic()).flat_map(char::to_lowercase).peekable();
    !part.is_ascii()
        && letters.peek().is_some()
        && letters.all(|c| LATIN_ALIKE_CYRILLIC.contains(c))
}

/// Top-level domains under which Cyrillic is the expected script: Cyrillic ones, and the ASCII
/// ones of countries that write in it (as Chromium judges them).
fn cyrillic_tld(tld: &str) -> bool {
    tld.chars().any(|c| ('\u{0400}'..='\u{052f}').contains(&c))
        || ["bg", "by", "kz", "ru", "su", "ua", "uz"].contains(&tld.to_ascii_lowercase().as_str())
}

fn valid_atom(atom: &str) -> bool {
    !atom.is_empty()
        && atom.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c))
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(|c| c.is_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for ok in ["a@b.co", "First.Last+tag@Example.COM", "x_y@sub.domain-1.org", "ü@bücher.de"]
        {
            assert!(Email::parse("email", ok).is_ok(), "{ok}");
        }
        assert_eq!(Email::parse("email", "Ann@Example.com").unwrap().lower(), "ann@example.com");
    }

    #[test]
    fn refuses_homoglyphs_mixed_or_whole_script() {
        for spoof in [
            "аdmin@example.com",   // a Cyrillic а among Latin letters
            "admin@exаmple.com",   // the same in a domain label
            "admin@аррӏе.com",     // a label all in Cyrillic that reads `apple`
            "аррӏе@example.com",   // the same as a local part
            "admin@ѕсоре.example", // Cyrillic `scope`
            "АДМИН@РАУ.com",       // upper case: `РАУ` reads `PAY`
            "admin@аррӏе1.com",    // a digit does not make it Cyrillic
            "admin@аррӏе-іd.com",  // nor a hyphen
            "аррӏе.ѕсоре@example.com",
            "admin@аррӏе.中国", // nor a top-level domain of another script
        ] {
            assert!(Email::parse("email", spoof).is_err(), "{spoof}");
        }
        // Other scripts that do not pose as Latin stay welcome, and so does Cyrillic under a
        // Cyrillic top-level domain.
        for ok in [
            "пример@пример.рф",
            "саша@example.com",
            "хорошо@пример.рф",
            "admin@срб.срб",
            "user@пример.бг",
            "сор@аррӏе.рф",
            "сор@mail.ru",
            "ü@bücher.de",
            "用户@例子.中国",
            "δοκιμή@παράδειγμα.ελ",
        ] {
            assert!(Email::parse("email", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed_addresses() {
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a@exa mple.com",
            "a..b@example.com",
            ".a@example.com",
            "a@-x.com",
            "a@x-.com",
            "a@x..com",
            "a@b@c",
            "a@example.com ",
            "a\n@example.com",
            long.as_str(),
        ] {
            let err = Email::parse("administrator.email", bad).unwrap_err();
            assert!(
                matches!(err, ApiError::InvalidArgument(ref v) if v[0].field == "administrator.email"),
                "{bad}"
            );
        }
    }
}
