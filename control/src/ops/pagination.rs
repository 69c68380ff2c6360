//! `limit`/`nextToken` handling. Tokens are opaque to clients but carry the
//! last name returned, so pages stay stable while other resources are added.

use serde_json::Value;

use crate::error::ApiError;

/// App Mesh's default and maximum page size.
pub const DEFAULT_LIMIT: usize = 100;

pub fn limit(input: &Value) -> usize {
    input["limit"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_LIMIT)
}

pub fn encode(position: &str) -> String {
    hex::encode(position)
}

/// The position encoded in the request's `nextToken`, if any.
pub fn position(input: &Value) -> Result<Option<String>, ApiError> {
    let Some(token) = input["nextToken"].as_str() else {
        return Ok(None);
    };
    hex::decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("The nextToken is invalid"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        let t = encode("vn-1");
        assert_eq!(
            position(&json!({"nextToken": t})).unwrap().as_deref(),
            Some("vn-1")
        );
        assert!(position(&json!({"nextToken": "zz"})).is_err());
        assert_eq!(limit(&json!({})), 100);
        assert_eq!(limit(&json!({"limit": 3})), 3);
    }
}
