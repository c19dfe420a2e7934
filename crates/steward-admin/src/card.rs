//! Payment card checks: digits, Luhn checksum, brand by IIN prefix, CVC shape, expiry. Only the
//! derived facts (brand, last four, expiry) ever leave this module; error messages never echo
//! the number or the CVC.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use steward_proto::billing::v1::CardBrand;
use steward_runtime::{ApiError, ApiResult};

/// Cards expiring within this many days are flagged `expires_soon`.
pub const EXPIRES_SOON_DAYS: i64 = 30;

/// A card brand (network).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Brand {
    /// Visa.
    Visa,
    /// Mastercard.
    Mastercard,
    /// American Express.
    AmericanExpress,
    /// Discover.
    Discover,
    /// Diners Club.
    DinersClub,
    /// JCB.
    Jcb,
    /// UnionPay.
    UnionPay,
}

impl Brand {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visa => "visa",
            Self::Mastercard => "mastercard",
            Self::AmericanExpress => "american_express",
            Self::Discover => "discover",
            Self::DinersClub => "diners_club",
            Self::Jcb => "jcb",
            Self::UnionPay => "unionpay",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> Option<Self> {
        [
            Self::Visa,
            Self::Mastercard,
            Self::AmericanExpress,
            Self::Discover,
            Self::DinersClub,
            Self::Jcb,
            Self::UnionPay,
        ]
        .into_iter()
        .find(|b| b.as_str() == value)
    }

    /// The API enum.
    pub fn to_proto(self) -> CardBrand {
        match self {
            Self::Visa => CardBrand::Visa,
            Self::Mastercard => CardBrand::Mastercard,
            Self::AmericanExpress => CardBrand::AmericanExpress,
            Self::Discover => CardBrand::Discover,
            Self::DinersClub => CardBrand::DinersClub,
            Self::Jcb => CardBrand::Jcb,
            Self::UnionPay => CardBrand::Unionpay,
        }
    }

    fn lengths(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Self::Visa => 13..=19,
            Self::Mastercard => 16..=16,
            Self::AmericanExpress => 15..=15,
            Self::DinersClub => 14..=19,
            Self::Discover | Self::Jcb | Self::UnionPay => 16..=19,
        }
    }

    fn cvc_len(self) -> usize {
        if self == Self::AmericanExpress {
            4
        } else {
            3
        }
    }
}

/// What is kept of a validated card number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardFacts {
    /// The brand.
    pub brand: Brand,
    /// The last four digits.
    pub last4: String,
}

fn prefix(digits: &str, len: usize) -> u32 {
    digits.get(..len).and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// The brand of a card number by its issuer identification prefix.
pub fn brand_of(digits: &str) -> Option<Brand> {
    let p1 = prefix(digits, 1);
    let p2 = prefix(digits, 2);
    let p3 = prefix(digits, 3);
    let p4 = prefix(digits, 4);
    let p6 = prefix(digits, 6);
    if p2 == 34 || p2 == 37 {
        Some(Brand::AmericanExpress)
    } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
        Some(Brand::Mastercard)
    } else if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622126..=622925).contains(&p6)
    {
        Some(Brand::Discover)
    } else if p2 == 62 {
        Some(Brand::UnionPay)
    } else if (3528..=3589).contains(&p4) {
        Some(Brand::Jcb)
    } else if p2 == 36 || p2 == 38 || p2 == 39 || (300..=305).contains(&p3) || p4 == 3095 {
        Some(Brand::DinersClub)
    } else if p1 == 4 {
        Some(Brand::Visa)
    } else {
        None
    }
}

/// The Luhn (mod 10) checksum of a digit string.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.chars().rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else { return false };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum % 10 == 0
}

/// Validates a card number (spaces and dashes ignored) and returns what may be stored.
pub fn check_number(field: &str, number: &str) -> ApiResult<CardFacts> {
    let digits: String = number.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if digits.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid(field, "must contain only digits, spaces and dashes"));
    }
    let brand = brand_of(&digits)
        .ok_or_else(|| ApiError::invalid(field, "is not a card of a supported brand"))?;
    if !brand.lengths().contains(&digits.len()) {
        return Err(ApiError::invalid(
            field,
            format!("has the wrong length for a {} card", brand.as_str()),
        ));
    }
    if !luhn_valid(&digits) {
        return Err(ApiError::invalid(field, "is not a valid card number (checksum)"));
    }
    let last4 = digits.get(digits.len().saturating_sub(4)..).unwrap_or_default().to_string();
    Ok(CardFacts { brand, last4 })
}

/// Checks the CVC's shape for `brand`: 3 digits, 4 for American Express.
pub fn check_cvc(field: &str, cvc: &str, brand: Brand) -> ApiResult<()> {
    let expected = brand.cvc_len();
    if cvc.len() != expected || !cvc.chars().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::invalid(field, format!("must be {expected} digits")));
    }
    Ok(())
}

/// First instant after the card's expiry month (cards are valid through their month).
fn end_of_validity(exp_month: i32, exp_year: i32) -> Option<DateTime<Utc>> {
    let (year, month) = if exp_month >= 12 { (exp_year + 1, 1) } else { (exp_year, exp_month + 1) };
    let month = u32::try_from(month).ok()?;
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()
}

/// Checks the expiry: month 1 to 12, a four-digit year at most 50 years ahead, not yet over.
pub fn check_expiry(
    prefix: &str,
    exp_month: i32,
    exp_year: i32,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    if !(1..=12).contains(&exp_month) {
        return Err(ApiError::invalid(format!("{prefix}.exp_month"), "must be 1 to 12"));
    }
    if !(1000..=9999).contains(&exp_year) || exp_year > now.year() + 50 {
        return Err(ApiError::invalid(format!("{prefix}.exp_year"), "must be a four-digit year"));
    }
    if expired(exp_month, exp_year, now) {
        return Err(ApiError::invalid(format!("{prefix}.exp_year"), "the card has expired"));
    }
    Ok(())
}

/// Whether the card's expiry month is over.
pub fn expired(exp_month: i32, exp_year: i32, now: DateTime<Utc>) -> bool {
    end_of_validity(exp_month, exp_year).is_none_or(|end| now >= end)
}

/// Whether the card is still valid but expires within [`EXPIRES_SOON_DAYS`].
pub fn expires_soon(exp_month: i32, exp_year: i32, now: DateTime<Utc>) -> bool {
    end_of_validity(exp_month, exp_year)
        .is_some_and(|end| now < end && end - now <= Duration::days(EXPIRES_SOON_DAYS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_test_numbers_get_their_brand() {
        let cases = [
            ("4242 4242 4242 4242", Brand::Visa),
            ("4111-1111-1111-1111", Brand::Visa),
            ("5555555555554444", Brand::Mastercard),
            ("2223003122003222", Brand::Mastercard),
            ("378282246310005", Brand::AmericanExpress),
            ("6011111111111117", Brand::Discover),
            ("30569309025904", Brand::DinersClub),
            ("3566002020360505", Brand::Jcb),
            ("6200000000000005", Brand::UnionPay),
        ];
        for (number, brand) in cases {
            let facts = check_number("card_number", number).unwrap();
            assert_eq!(facts.brand, brand, "{number}");
            assert_eq!(
                facts.last4,
                number.chars().filter(char::is_ascii_digit).collect::<String>()
                    [number.chars().filter(char::is_ascii_digit).count() - 4..]
            );
        }
    }

    #[test]
    fn bad_numbers_are_refused_without_echoing_them() {
        for bad in ["4242424242424241", "1234567812345678", "4242x4242424242424", "", "42424242"] {
            let err = check_number("payment_card.card_number", bad).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, ApiError::InvalidArgument(_)));
            if !bad.is_empty() {
                assert!(!text.contains(bad), "{text}");
            }
        }
    }

    #[test]
    fn cvc_shape_depends_on_brand() {
        assert!(check_cvc("cvc", "123", Brand::Visa).is_ok());
        assert!(check_cvc("cvc", "1234", Brand::Visa).is_err());
        assert!(check_cvc("cvc", "1234", Brand::AmericanExpress).is_ok());
        assert!(check_cvc("cvc", "123", Brand::AmericanExpress).is_err());
        assert!(check_cvc("cvc", "12a", Brand::Visa).is_err());
    }

    #[test]
    fn expiry_flags_follow_the_clock() {
        let now = Utc.with_ymd_and_hms(2030, 5, 15, 12, 0, 0).unwrap();
        assert!(!expired(5, 2030, now));
        assert!(expires_soon(5, 2030, now));
        assert!(expired(4, 2030, now));
        assert!(!expires_soon(4, 2030, now));
        assert!(!expires_soon(7, 2030, now));
        assert!(!expired(12, 2030, now));
        assert!(check_expiry("payment_card", 4, 2030, now).is_err());
        assert!(check_expiry("payment_card", 13, 2031, now).is_err());
        assert!(check_expiry("payment_card", 1, 2031, now).is_ok());
        assert!(check_expiry("payment_card", 1, 2099, now).is_err());
    }
}
