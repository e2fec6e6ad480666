//! Request parameters as SMS providers send them: form bodies, query strings and flat JSON
//! objects, all seen as one ordered list of `(key, value)` pairs.
//!
//! Every provider in this crate reads its fields from a [`Params`], so a handler only has to
//! hand over what it received (query string, content type, raw body) and the same lookup rules
//! apply everywhere: keys are case-sensitive, and when a key repeats, the first occurrence is
//! the one a field lookup returns (signature checks still see every pair).

use thiserror::Error;

/// Longest provider value copied into an error message, so a hostile body cannot make a log
/// line of arbitrary size.
const MAX_ERROR_VALUE_CHARS: usize = 64;

/// Why a body could not be read as parameters.
#[derive(Debug, Error)]
pub enum ParamsError {
    /// The body claimed (or looked) to be JSON but is not.
    #[error("body is not valid json")]
    InvalidJson(#[source] serde_json::Error),
    /// The body is JSON but not an object, so it has no named fields.
    #[error("json body is not an object")]
    NotAnObject,
}

/// The parameters of one request, in the order they arrived, repeated keys included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// No parameters (Twilio's JSON-body signature is computed over an empty set).
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes an `application/x-www-form-urlencoded` body exactly as providers encode it (`+`
    /// is a space, `%XX` escapes, invalid UTF-8 replaced rather than refused).
    pub fn from_form(body: &[u8]) -> Self {
        form_urlencoded::parse(body).into_owned().collect()
    }

    /// Decodes a query string, with or without its leading `?`.
    pub fn from_query(query: &str) -> Self {
        Self::from_form(query.strip_prefix('?').unwrap_or(query).as_bytes())
    }

    /// Decodes the query part of a full URL (between `?` and `#`); empty when there is none.
    pub fn from_url_query(url: &str) -> Self {
        let without_fragment = url.split_once('#').map_or(url, |(before, _)| before);
        match without_fragment.split_once('?') {
            Some((_, query)) => Self::from_query(query),
            None => Self::new(),
        }
    }

    /// Reads a flat JSON object: strings as they are, numbers and booleans as their JSON text,
    /// nested arrays and objects as compact JSON text; `null` members are left out (a provider
    /// sending `null` means "absent").
    pub fn from_json_object(body: &[u8]) -> Result<Self, ParamsError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(ParamsError::InvalidJson)?;
        let serde_json::Value::Object(map) = value else {
            return Err(ParamsError::NotAnObject);
        };
        Ok(map
            .into_iter()
            .filter_map(|(key, value)| json_scalar_text(&value).map(|text| (key, text)))
            .collect())
    }

    /// Reads a body whatever its encoding: JSON when the content type says so (`application/json`
    /// or `*+json`), a form when it says form, and otherwise JSON if the body starts with `{`
    /// and a form if not. An empty body gives no parameters.
    pub fn from_body(content_type: Option<&str>, body: &[u8]) -> Result<Self, ParamsError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::new());
        }
        let media_type = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|ct| ct.trim().to_ascii_lowercase());
        let is_json = match media_type.as_deref() {
            Some("application/json") => true,
            Some(ct) if ct.ends_with("+json") => true,
            Some("application/x-www-form-urlencoded") => false,
            _ => body
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{'),
        };
        if is_json {
            Self::from_json_object(body)
        } else {
            Ok(Self::from_form(body))
        }
    }

    /// Everything a webhook request carries: the query string's parameters followed by the
    /// body's (see [`Params::from_body`]). Providers that call back with GET (Vonage, eSMS)
    /// and those that POST can share one handler this way.
    pub fn from_request(
        query: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Self, ParamsError> {
        let mut params = Self::from_query(query);
        params.extend(Self::from_body(content_type, body)?);
        Ok(params)
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `key` compared ASCII case-insensitively, for providers whose field
    /// spelling is not documented reliably.
    pub fn get_ignore_case(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// Every pair in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many pairs (repeats counted).
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there is no pair at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Appends one pair (tests and clients building a request to sign).
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.pairs.push((key.into(), value.into()));
    }

    /// Appends every pair of `other`, after the existing ones.
    pub fn extend(&mut self, other: Params) {
        self.pairs.extend(other.pairs);
    }
}

impl FromIterator<(String, String)> for Params {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self {
            pairs: iter.into_iter().collect(),
        }
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Params {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(iter: I) -> Self {
        iter.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// The text of a JSON value as a parameter value, `None` for `null`.
pub(crate) fn json_scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A provider value shortened for an error message.
pub(crate) fn clip(value: &str) -> String {
    value.chars().take(MAX_ERROR_VALUE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn form_body_decodes_plus_and_percent_escapes_and_keeps_repeats() {
        let params = Params::from_form(b"Body=Xin+ch%C3%A0o&To=%2B84901234567&a=1&a=2");
        assert_eq!(params.get("Body"), Some("Xin chào"));
        assert_eq!(params.get("To"), Some("+84901234567"));
        assert_eq!(params.get("a"), Some("1"), "first occurrence wins");
        assert_eq!(params.len(), 4);
    }

    #[test]
    fn url_query_ignores_fragment_and_missing_query() {
        let params = Params::from_url_query("https://x.test/hook?a=1&b=2#frag=3");
        assert_eq!(params.get("b"), Some("2"));
        assert_eq!(params.get("frag"), None);
        assert!(Params::from_url_query("https://x.test/hook").is_empty());
    }

    #[test]
    fn json_object_turns_scalars_into_text_and_drops_null() {
        let params =
            Params::from_json_object(br#"{"a":"x","n":12,"b":true,"z":null,"o":{"k":1}}"#).unwrap();
        assert_eq!(params.get("a"), Some("x"));
        assert_eq!(params.get("n"), Some("12"));
        assert_eq!(params.get("b"), Some("true"));
        assert_eq!(params.get("z"), None);
        assert_eq!(params.get("o"), Some(r#"{"k":1}"#));
    }

    #[test]
    fn json_that_is_not_an_object_is_refused() {
        assert!(matches!(
            Params::from_json_object(b"[1,2]"),
            Err(ParamsError::NotAnObject)
        ));
        assert!(matches!(
            Params::from_json_object(b"{"),
            Err(ParamsError::InvalidJson(_))
        ));
    }

    #[test]
    fn body_encoding_follows_content_type_then_sniffs() {
        let json = br#"{"a":"1"}"#;
        let form = b"a=2";
        let from = |ct, body| {
            Params::from_body(ct, body)
                .unwrap()
                .get("a")
                .map(str::to_owned)
        };
        assert_eq!(
            from(Some("application/json; charset=utf-8"), json),
            Some("1".into())
        );
        assert_eq!(
            from(Some("application/x-www-form-urlencoded"), form),
            Some("2".into())
        );
        assert_eq!(from(None, json), Some("1".into()));
        assert_eq!(from(None, form), Some("2".into()));
        assert!(Params::from_body(Some("application/json"), b"  ")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn request_params_put_query_before_body() {
        let params = Params::from_request("?a=q&b=1", None, b"a=body&c=2").unwrap();
        assert_eq!(params.get("a"), Some("q"));
        assert_eq!(params.get("c"), Some("2"));
        assert_eq!(params.len(), 4);
    }

    #[test]
    fn case_insensitive_lookup_finds_differently_spelled_keys() {
        let params = Params::from_query("SmsId=1");
        assert_eq!(params.get("SMSID"), None);
        assert_eq!(params.get_ignore_case("SMSID"), Some("1"));
    }

    #[test]
    fn clip_bounds_error_values() {
        assert_eq!(
            clip(&"é".repeat(100)).chars().count(),
            MAX_ERROR_VALUE_CHARS
        );
    }

    proptest! {
        #[test]
        fn any_body_with_any_content_type_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            ct in proptest::option::of("[a-z/+;= -]{0,40}"),
            query in ".{0,64}",
        ) {
            let _ = Params::from_request(&query, ct.as_deref(), &body);
            let _ = Params::from_url_query(&query);
        }
    }
}
