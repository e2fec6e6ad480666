//! Our records as JSON bytes, with a failure that cannot be mistaken for a record.
//!
//! serde_json fails only on data it cannot represent (a map with non-string keys, a
//! `Serialize` impl that errors); omnirouter's types are plain data, so it does not fail on
//! them today. A change that broke that must be an error the caller reports, never an empty
//! payload published in the record's place.

use serde::Serialize;

/// A value that could not be encoded as JSON.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what} as JSON: {source}")]
pub struct EncodeError {
    /// What was being encoded, for the log.
    pub what: &'static str,
    /// serde_json's reason.
    #[source]
    pub source: serde_json::Error,
}

/// `value` as JSON bytes; `what` names it in the error.
pub fn to_json<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, EncodeError> {
    serde_json::to_vec(value).map_err(|source| EncodeError { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn plain_data_encodes_and_unrepresentable_data_is_an_error_not_an_empty_payload() {
        assert_eq!(to_json("n", &1).unwrap(), b"1");
        let mut bad = BTreeMap::new();
        bad.insert((1, 2), "tuple keys have no JSON form");
        let e = to_json("bad map", &bad).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot encode bad map as JSON"),
            "{e}"
        );
    }
}
