//! Provider wire-format helpers shared by both providers: ids, times, text limits.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Deserializer};

/// An id that a provider writes as a string or, sometimes, as a number. Kept as the exact
/// text: Zalo ids exceed 2^53 and would be corrupted by a float.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdText(pub String);

impl<'de> Deserialize<'de> for IdText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Unsigned(u64),
            Signed(i64),
        }
        Ok(IdText(match Raw::deserialize(d)? {
            Raw::Text(s) => s,
            Raw::Unsigned(n) => n.to_string(),
            Raw::Signed(n) => n.to_string(),
        }))
    }
}

/// Milliseconds since the epoch as a UTC time; `None` when out of range.
pub fn time_from_millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// Splits `text` into pieces of at most `max` characters, preferring to break after
/// whitespace; empty text gives no pieces.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut rest = text.trim_end();
    while !rest.is_empty() {
        if rest.chars().count() <= max {
            pieces.push(rest.to_owned());
            break;
        }
        let hard = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let cut = rest[..hard]
            .rfind(char::is_whitespace)
            .filter(|&i| i > hard / 2)
            .map_or(hard, |i| {
                i + rest[i..].chars().next().map_or(1, char::len_utf8)
            });
        pieces.push(rest[..cut].trim_end().to_owned());
        rest = rest[cut..].trim_start();
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_exact_text_whether_string_or_number() {
        let id: IdText = serde_json::from_str("\"5384937120339286147\"").unwrap();
        assert_eq!(id.0, "5384937120339286147");
        let id: IdText = serde_json::from_str("1254938275682919").unwrap();
        assert_eq!(id.0, "1254938275682919");
        assert!(serde_json::from_str::<IdText>("1.5").is_err());
        assert!(serde_json::from_str::<IdText>("{}").is_err());
    }

    #[test]
    fn long_text_splits_on_whitespace_within_the_limit_without_losing_characters() {
        let text = "Xin chào quý khách ".repeat(200);
        let pieces = split_text(&text, 2000);
        assert!(pieces.len() > 1);
        assert!(pieces.iter().all(|p| p.chars().count() <= 2000));
        let joined: String = pieces.join(" ");
        assert_eq!(joined, text.trim_end());
        // No whitespace at all: a hard cut at exactly the limit, on a char boundary.
        let dense = "đ".repeat(4500);
        let pieces = split_text(&dense, 2000);
        assert_eq!(
            pieces.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            vec![2000, 2000, 500]
        );
        assert!(split_text("   ", 10).is_empty());
    }

    #[test]
    fn millisecond_times_convert_and_absurd_ones_do_not() {
        assert_eq!(
            time_from_millis(1_700_000_000_123).map(|t| t.timestamp_millis()),
            Some(1_700_000_000_123)
        );
        assert_eq!(time_from_millis(i64::MAX), None);
    }
}
