//! Random bearer secrets (link tokens, refresh tokens, MFA challenges, recovery codes) and their
//! stored digests. Refresh tokens and challenges carry 256 bits of randomness, email links 128
//! bits (short enough for the link to fit a 7bit mail line), recovery codes 80 bits; so a plain
//! SHA-256 digest is enough to make a stolen table useless. They are compared by digest lookup.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new random token: 32 bytes, base64url without padding (43 characters of `[A-Za-z0-9_-]`).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new random link token for emails: 16 bytes (128 bits), base64url without padding (22
/// characters).
pub fn new_link_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256 of `value`, the form in which secrets are stored.
pub fn digest(value: &str) -> String {
    use std::fmt::Write as _;
    let hash = Sha256::digest(value.as_bytes());
    let mut hex = String::with_capacity(2 * hash.len());
    for byte in hash {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Alphabet of recovery codes: lowercase letters and digits without the look-alikes 0/o and 1/l.
const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// A new recovery code: 16 characters of a 32-symbol alphabet (80 bits) shown as `xxxx-xxxx-xxxx-xxxx`.
pub fn new_recovery_code() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| char::from(RECOVERY_ALPHABET.get(usize::from(b & 31)).copied().unwrap_or(b'a')))
        .collect();
    chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-")
}

/// A recovery code as typed (any case, with or without dashes or spaces) in canonical form.
pub fn normalize_recovery_code(code: &str) -> String {
    code.chars().filter(|c| !matches!(c, '-' | ' ')).flat_map(char::to_lowercase).collect()
}

/// The stored digest of a recovery code, bound to its owner.
pub fn recovery_digest(administrator: &str, code: &str) -> String {
    digest(&format!("{administrator}\n{}", normalize_recovery_code(code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_url_safe_and_distinct() {
        let a = new_token();
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, new_token());
        assert_eq!(new_link_token().len(), 22);
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn recovery_codes_normalize() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 19);
        let typed = code.to_uppercase().replace('-', " ");
        assert_eq!(recovery_digest("x", &typed), recovery_digest("x", &code));
        assert_ne!(recovery_digest("y", &code), recovery_digest("x", &code));
    }
}
