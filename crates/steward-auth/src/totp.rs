//! TOTP (RFC 6238): SHA-1, 6 digits, 30-second steps, one step of skew either way. The caller
//! stores the step of the last accepted code so each code is accepted at most once.

use chrono::{DateTime, Utc};
use rand::RngCore;
use steward_runtime::{ApiError, ApiResult};
use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Issuer shown by authenticator apps.
pub const ISSUER: &str = "Steward";
/// Seconds per step.
pub const STEP_SECS: u64 = 30;

/// A new random 160-bit secret, base32 without padding.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    Secret::from(bytes).to_base32()
}

/// The TOTP generator of `secret` (base32) for `account` (the email).
pub fn totp(secret: &str, account: &str) -> ApiResult<Totp> {
    let secret = Secret::try_from_base32(secret)
        .map_err(|_| ApiError::internal("stored TOTP secret is not base32"))?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECS)
        .with_secret(secret)
        .with_account_name(account)
        .with_issuer(Some(ISSUER))
        .build()
        .map_err(|e| ApiError::internal(format!("totp setup failed: {e}")))
}

fn unix(now: DateTime<Utc>) -> u64 {
    u64::try_from(now.timestamp()).unwrap_or(0)
}

/// The step of the code if `code` is valid for `secret` at `now` (±1 step), else `None`.
pub fn check(secret: &str, code: &str, now: DateTime<Utc>) -> ApiResult<Option<i64>> {
    let generator = totp(secret, "steward")?;
    let code = code.trim();
    Ok(generator.check(code, unix(now)).and_then(|step| i64::try_from(step).ok()))
}

/// The code of `secret` at `now` (for clients and tests).
pub fn code_at(secret: &str, now: DateTime<Utc>) -> ApiResult<String> {
    Ok(totp(secret, "steward")?.generate(unix(now)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_check_within_one_step() {
        let secret = new_secret();
        assert_eq!(secret.len(), 32);
        let now = DateTime::<Utc>::from_timestamp(1_800_000_015, 0).unwrap();
        let code = code_at(&secret, now).unwrap();
        assert_eq!(code.len(), 6);
        let step = check(&secret, &code, now).unwrap().unwrap();
        assert_eq!(step, 1_800_000_015 / 30);
        assert_eq!(check(&secret, &code, now + chrono::Duration::seconds(30)).unwrap(), Some(step));
        assert_eq!(check(&secret, &code, now + chrono::Duration::seconds(90)).unwrap(), None);
        assert_eq!(check(&secret, "12345x", now).unwrap(), None);
    }

    #[test]
    fn otpauth_uri_names_issuer_and_account() {
        let uri = totp(&new_secret(), "ada@example.com").unwrap().to_url().unwrap();
        assert!(uri.starts_with("otpauth://totp/Steward:ada%40example.com?"), "{uri}");
        assert!(uri.contains("issuer=Steward"));
    }
}
