//! Phone numbers and SMS sender addresses.
//!
//! A contact's id must be the same whichever way the number was written ("0901234567",
//! "+84 90 123 4567", "0084901234567"), so numbers are normalized to E.164 (`+` and 8–15
//! digits). Not every SMS address is a phone number, though: providers and Vietnamese gateways
//! also use short codes ("8085") and alphanumeric brandnames ("OMNI CARE"). [`Address`] keeps
//! those apart instead of turning them into a wrong E.164 number.
//!
//! Rules of [`PhoneNumber::parse`], after dropping spaces, dots, dashes, slashes and brackets:
//! - `+CC…` is international;
//! - `00CC…` is international (the ITU international prefix);
//! - `0…` is national: the trunk `0` is replaced by the default country calling code
//!   (`0901234567` with `84` → `+84901234567`);
//! - other digit strings of 3–6 digits are short codes and refused with
//!   [`PhoneError::ShortCode`] ([`Address::parse`] accepts them as [`Address::ShortCode`]);
//! - other digit strings are international numbers written without `+` (the MSISDN form
//!   Vonage and most gateways use: `84901234567`, `447700900123`). A national number written
//!   without its trunk `0` ("901234567") is therefore read as international: write it with
//!   the `0`.

use std::fmt;
use std::ops::RangeInclusive;

use thiserror::Error;

/// E.164 allows at most 15 digits; fewer than 8 is no real subscriber number.
const E164_DIGITS: RangeInclusive<usize> = 8..=15;
/// Short codes: 3–6 digits (Twilio's 5–6, Vietnamese gateways' "8xxx").
const SHORT_CODE_DIGITS: RangeInclusive<usize> = 3..=6;
/// Alphanumeric sender ids are at most 11 characters on every network.
const MAX_SENDER_ID_CHARS: usize = 11;

/// Why a string is not a usable address.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PhoneError {
    /// Nothing but whitespace or separators.
    #[error("empty phone number")]
    Empty,
    /// A character that has no place in a phone number (letters included).
    #[error("invalid character {ch:?} in phone number")]
    InvalidCharacter {
        /// The first offending character.
        ch: char,
    },
    /// A `+` after the first digit or a second `+`.
    #[error("a '+' may only lead a phone number")]
    MisplacedPlus,
    /// Fewer than 8 digits once normalized.
    #[error("phone number has {digits} digits, fewer than 8")]
    TooShort {
        /// Digits counted, country code included.
        digits: usize,
    },
    /// More than 15 digits once normalized.
    #[error("phone number has {digits} digits, more than 15")]
    TooLong {
        /// Digits counted, country code included.
        digits: usize,
    },
    /// The number would start with country code 0, which does not exist.
    #[error("country calling code cannot start with 0")]
    ZeroCountryCode,
    /// 3–6 digits without `+` or trunk `0`: a short code, not a phone number.
    #[error("{digits} is a short code, not a phone number")]
    ShortCode {
        /// The short code's digits.
        digits: String,
    },
    /// The configured default country calling code is not 1–3 digits without a leading 0.
    #[error("invalid default country calling code {code:?}")]
    InvalidDefaultCountryCode {
        /// The configured value (shortened).
        code: String,
    },
    /// Text that is neither a number nor a valid alphanumeric sender id.
    #[error("invalid alphanumeric sender id: {reason}")]
    InvalidSenderId {
        /// What rule it broke.
        reason: &'static str,
    },
}

/// A phone number in E.164 form (`+84901234567`): the one spelling used as a contact id and
/// sent to providers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Normalizes a number written by a person or a provider (rules in the module docs).
    /// `default_country_calling_code` ("84" for Viet Nam) replaces a national trunk `0`.
    pub fn parse(input: &str, default_country_calling_code: &str) -> Result<Self, PhoneError> {
        let default_cc = validate_country_code(default_country_calling_code)?;
        let mut digits = String::new();
        let mut plus = false;
        for ch in input.trim().chars() {
            match ch {
                '0'..='9' => {
                    if digits.len() > 2 * E164_DIGITS.end() {
                        return Err(PhoneError::TooLong {
                            digits: digits.len(),
                        });
                    }
                    digits.push(ch);
                }
                '+' if digits.is_empty() && !plus => plus = true,
                '+' => return Err(PhoneError::MisplacedPlus),
                ' ' | '.' | '-' | '/' | '(' | ')' | '\t' | '\u{a0}' => {}
                other => return Err(PhoneError::InvalidCharacter { ch: other }),
            }
        }
        if digits.is_empty() {
            return Err(PhoneError::Empty);
        }
        let international = if plus {
            digits
        } else if let Some(rest) = digits.strip_prefix("00") {
            rest.to_owned()
        } else if let Some(rest) = digits.strip_prefix('0') {
            format!("{default_cc}{rest}")
        } else if SHORT_CODE_DIGITS.contains(&digits.len()) {
            return Err(PhoneError::ShortCode { digits });
        } else {
            digits
        };
        if international.starts_with('0') {
            return Err(PhoneError::ZeroCountryCode);
        }
        let count = international.len();
        if count < *E164_DIGITS.start() {
            return Err(PhoneError::TooShort { digits: count });
        }
        if count > *E164_DIGITS.end() {
            return Err(PhoneError::TooLong { digits: count });
        }
        Ok(Self(format!("+{international}")))
    }

    /// The E.164 text, `+` included.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without `+` (the MSISDN form Vonage's `to` and many gateways expect).
    pub fn digits(&self) -> &str {
        self.0.strip_prefix('+').unwrap_or(&self.0)
    }

    /// The national form with trunk `0` ("0901234567") when the number belongs to
    /// `country_calling_code`, else `None` (domestic gateways such as eSMS want this form).
    pub fn national(&self, country_calling_code: &str) -> Option<String> {
        let rest = self.digits().strip_prefix(country_calling_code)?;
        (!country_calling_code.is_empty() && !rest.is_empty()).then(|| format!("0{rest}"))
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PhoneNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A short code ("8085", "24273"): a service number that exists only inside one country's
/// networks and must not be rewritten into E.164.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShortCode(String);

impl ShortCode {
    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An alphanumeric sender id (brandname) such as "OMNI CARE": up to 11 ASCII letters, digits,
/// spaces and `-_.&`, with at least one letter. Such a sender cannot be replied to by SMS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SenderId(String);

impl SenderId {
    /// Checks the rules above on the trimmed input.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let value = input.trim();
        if value.is_empty() {
            return Err(PhoneError::Empty);
        }
        if value.chars().count() > MAX_SENDER_ID_CHARS {
            return Err(PhoneError::InvalidSenderId {
                reason: "longer than 11 characters",
            });
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '&'))
        {
            return Err(PhoneError::InvalidSenderId {
                reason: "only ascii letters, digits, spaces and -_.& are allowed",
            });
        }
        if !value.chars().any(|c| c.is_ascii_alphabetic()) {
            return Err(PhoneError::InvalidSenderId {
                reason: "needs at least one letter",
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// The sender id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Any SMS sender or recipient: a phone number, a short code or a brandname.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    /// A phone number, normalized.
    E164(PhoneNumber),
    /// A 3–6 digit short code, kept as written.
    ShortCode(ShortCode),
    /// A brandname sender.
    Alphanumeric(SenderId),
}

impl Address {
    /// Classifies an address: text containing a letter is a sender id, 3–6 digits without `+`
    /// or trunk `0` a short code, anything else must be a phone number.
    pub fn parse(input: &str, default_country_calling_code: &str) -> Result<Self, PhoneError> {
        let value = input.trim();
        if value.is_empty() {
            return Err(PhoneError::Empty);
        }
        if value.chars().any(char::is_alphabetic) {
            return SenderId::parse(value).map(Self::Alphanumeric);
        }
        match PhoneNumber::parse(value, default_country_calling_code) {
            Ok(number) => Ok(Self::E164(number)),
            Err(PhoneError::ShortCode { digits }) => Ok(Self::ShortCode(ShortCode(digits))),
            Err(other) => Err(other),
        }
    }

    /// The normalized text (E.164, short code digits or sender id).
    pub fn as_str(&self) -> &str {
        match self {
            Self::E164(number) => number.as_str(),
            Self::ShortCode(code) => code.as_str(),
            Self::Alphanumeric(id) => id.as_str(),
        }
    }

    /// The phone number, if this address is one (only those can receive a reply by SMS from
    /// an ordinary long number).
    pub fn phone_number(&self) -> Option<&PhoneNumber> {
        match self {
            Self::E164(number) => Some(number),
            _ => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn validate_country_code(code: &str) -> Result<&str, PhoneError> {
    let valid = (1..=3).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_digit())
        && !code.starts_with('0');
    if valid {
        Ok(code)
    } else {
        Err(PhoneError::InvalidDefaultCountryCode {
            code: crate::params::clip(code),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e164(input: &str) -> Result<String, PhoneError> {
        PhoneNumber::parse(input, "84").map(|n| n.as_str().to_owned())
    }

    #[test]
    fn every_vietnamese_spelling_gives_the_same_e164_number() {
        for input in [
            "+84901234567",
            "84901234567",
            "0901234567",
            "0084901234567",
            "(090) 123-4567",
            "090.123.4567",
            " +84 90 123 45 67 ",
            "090-123-4567",
        ] {
            assert_eq!(e164(input).as_deref(), Ok("+84901234567"), "{input}");
        }
    }

    #[test]
    fn foreign_numbers_keep_their_country_code() {
        assert_eq!(e164("+1 (415) 867-5309").as_deref(), Ok("+14158675309"));
        assert_eq!(e164("447700900123").as_deref(), Ok("+447700900123"));
        assert_eq!(
            PhoneNumber::parse("020 7946 0018", "44").map(|n| n.to_string()),
            Ok("+442079460018".to_owned())
        );
    }

    #[test]
    fn letters_and_stray_symbols_are_refused() {
        assert_eq!(
            e164("0901abc567"),
            Err(PhoneError::InvalidCharacter { ch: 'a' })
        );
        assert_eq!(
            e164("tel:+84901234567"),
            Err(PhoneError::InvalidCharacter { ch: 't' })
        );
        assert_eq!(e164("+84+901234567"), Err(PhoneError::MisplacedPlus));
        assert_eq!(e164("84901+234567"), Err(PhoneError::MisplacedPlus));
    }

    #[test]
    fn empty_too_short_and_too_long_are_refused() {
        assert_eq!(e164(""), Err(PhoneError::Empty));
        assert_eq!(e164("  ( ) - "), Err(PhoneError::Empty));
        assert_eq!(e164("+"), Err(PhoneError::Empty));
        assert_eq!(e164("+8412345"), Err(PhoneError::TooShort { digits: 7 }));
        assert_eq!(e164("1234567"), Err(PhoneError::TooShort { digits: 7 }));
        assert_eq!(
            e164("+1234567890123456"),
            Err(PhoneError::TooLong { digits: 16 })
        );
        assert!(matches!(
            e164(&"9".repeat(10_000)),
            Err(PhoneError::TooLong { .. })
        ));
    }

    #[test]
    fn a_zero_country_code_is_refused() {
        assert_eq!(e164("+0901234567"), Err(PhoneError::ZeroCountryCode));
        assert_eq!(e164("000901234567"), Err(PhoneError::ZeroCountryCode));
    }

    #[test]
    fn short_codes_are_not_turned_into_phone_numbers() {
        assert_eq!(
            e164("8085"),
            Err(PhoneError::ShortCode {
                digits: "8085".into()
            })
        );
        assert_eq!(
            Address::parse("24273", "84"),
            Ok(Address::ShortCode(ShortCode("24273".into())))
        );
        // With a + it claims to be international, and is simply too short.
        assert_eq!(e164("+8085"), Err(PhoneError::TooShort { digits: 4 }));
    }

    #[test]
    fn brandnames_are_alphanumeric_senders() {
        let address = Address::parse(" OMNI CARE ", "84").unwrap();
        assert_eq!(address, Address::Alphanumeric(SenderId("OMNI CARE".into())));
        assert_eq!(address.to_string(), "OMNI CARE");
        assert_eq!(address.phone_number(), None);
        assert!(matches!(
            Address::parse("A VERY LONG BRAND", "84"),
            Err(PhoneError::InvalidSenderId { .. })
        ));
        assert!(matches!(
            Address::parse("whatsapp:+1415", "84"),
            Err(PhoneError::InvalidSenderId { .. })
        ));
    }

    #[test]
    fn addresses_that_are_numbers_are_normalized() {
        let address = Address::parse("0901 234 567", "84").unwrap();
        assert_eq!(address.as_str(), "+84901234567");
        assert_eq!(
            address.phone_number().map(PhoneNumber::digits),
            Some("84901234567")
        );
    }

    #[test]
    fn national_form_only_for_the_given_country() {
        let number = PhoneNumber::parse("+84901234567", "84").unwrap();
        assert_eq!(number.national("84").as_deref(), Some("0901234567"));
        assert_eq!(number.national("1"), None);
        assert_eq!(number.national(""), None);
    }

    #[test]
    fn a_bad_default_country_code_is_a_configuration_error() {
        for code in ["", "084", "1234", "8a"] {
            assert!(
                matches!(
                    PhoneNumber::parse("0901234567", code),
                    Err(PhoneError::InvalidDefaultCountryCode { .. })
                ),
                "{code:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_string_parses_or_errors_without_panicking(input in ".{0,40}") {
            let _ = Address::parse(&input, "84");
            if let Ok(number) = PhoneNumber::parse(&input, "84") {
                prop_assert!(number.as_str().starts_with('+'));
                prop_assert!(E164_DIGITS.contains(&number.digits().len()));
                prop_assert!(number.digits().bytes().all(|b| b.is_ascii_digit()));
            }
        }

        #[test]
        fn normalizing_is_idempotent(digits in "[1-9][0-9]{7,14}") {
            let once = PhoneNumber::parse(&digits, "84").unwrap();
            let twice = PhoneNumber::parse(once.as_str(), "84").unwrap();
            prop_assert_eq!(once, twice);
        }
    }
}
