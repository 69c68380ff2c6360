//! AWS Signature Version 4, as botocore computes it for the `appmesh`
//! service: verification for the API and signing for `apply`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::credentials::Credentials;
use super::encoding;
use crate::error::{ApiError, ErrorKind};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const SERVICE: &str = "appmesh";
/// AWS rejects requests dated further than this from its clock.
const MAX_SKEW: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k = hmac(&k, region);
    let k = hmac(&k, service);
    hmac(&k, "aws4_request")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The parts of a request the signature covers, as they were on the wire.
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    pub headers: &'a HeaderMap,
    pub payload_hash: &'a str,
}

fn canonical_query(raw: &str) -> Option<String> {
    let mut pairs: Vec<(String, String)> = encoding::query_pairs(raw)?
        .into_iter()
        .map(|(k, v)| (encoding::encode(&k, false), encoding::encode(&v, false)))
        .collect();
    pairs.sort();
    Some(
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

fn canonical_header_value(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn canonical_request(parts: &RequestParts<'_>, signed: &[String]) -> Option<String> {
    let headers: String = signed
        .iter()
        .map(|h| format!("{h}:{}\n", canonical_header_value(parts.headers, h)))
        .collect();
    Some(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        parts.method,
        encoding::encode(parts.raw_path, true),
        canonical_query(parts.raw_query)?,
        headers,
        signed.join(";"),
        parts.payload_hash
    ))
}

fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

pub fn format_amz_date(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dt = OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    dt.format(&fmt).unwrap_or_default()
}

fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    let dt = PrimitiveDateTime::parse(text, &fmt).ok()?.assume_utc();
    let secs = u64::try_from(dt.unix_timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<String>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix(ALGORITHM)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        match part.trim().split_once('=')? {
            ("Credential", v) => credential = Some(v),
            ("SignedHeaders", v) => signed = Some(v),
            ("Signature", v) => signature = Some(v),
            _ => {}
        }
    }
    let scope: Vec<&str> = credential?.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope.as_slice() else {
        return None;
    };
    Some(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed?.split(';').map(str::to_ascii_lowercase).collect(),
        signature: signature?,
    })
}

fn denied(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

/// Checks the request's signature against `credentials`; returns the access
/// key id that signed it. `parts.payload_hash` must be the SHA-256 of the
/// body as received, never a value the client claims.
pub fn verify(
    parts: &RequestParts<'_>,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<String, ApiError> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let Some(authorization) = header("authorization") else {
        return Err(denied(ErrorKind::Forbidden, "Missing Authentication Token"));
    };
    let auth = parse_authorization(authorization).ok_or_else(|| {
        denied(
            ErrorKind::InvalidSignature,
            "Authorization header is not a well-formed AWS4-HMAC-SHA256 signature",
        )
    })?;
    let secret = credentials.secret_for(auth.access_key_id).ok_or_else(|| {
        denied(
            ErrorKind::UnrecognizedClient,
            "The security token included in the request is invalid.",
        )
    })?;
    if auth.service != SERVICE {
        return Err(denied(
            ErrorKind::InvalidSignature,
            format!("Credential should be scoped to correct service: '{SERVICE}'."),
        ));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(denied(
                ErrorKind::InvalidSignature,
                format!("The {required} header must be signed"),
            ));
        }
    }
    let amz_date = header("x-amz-date").unwrap_or_default();
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        denied(
            ErrorKind::InvalidSignature,
            "X-Amz-Date is missing or malformed",
        )
    })?;
    if !amz_date.starts_with(auth.date) {
        return Err(denied(
            ErrorKind::InvalidSignature,
            "Credential scope date does not match X-Amz-Date",
        ));
    }
    let skew = now
        .duration_since(signed_at)
        .unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err(denied(
            ErrorKind::InvalidSignature,
            format!(
                "Signature expired: {amz_date} is more than 5 minutes away from the server time {}",
                format_amz_date(now)
            ),
        ));
    }
    if let Some(claimed) = header("x-amz-content-sha256") {
        if claimed != parts.payload_hash {
            return Err(denied(
                ErrorKind::InvalidSignature,
                "X-Amz-Content-Sha256 does not match the request body",
            ));
        }
    }
    let canonical = canonical_request(parts, &auth.signed_headers)
        .ok_or_else(|| denied(ErrorKind::InvalidSignature, "Malformed query string"))?;
    let scope = format!(
        "{}/{}/{}/aws4_request",
        auth.date, auth.region, auth.service
    );
    let to_sign = string_to_sign(amz_date, &scope, &canonical);
    let provided = hex::decode(auth.signature).unwrap_or_default();
    let mut mac =
        HmacSha256::new_from_slice(&signing_key(secret, auth.date, auth.region, auth.service))
            .expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    mac.verify_slice(&provided).map_err(|_| {
        denied(
            ErrorKind::InvalidSignature,
            "The request signature we calculated does not match the signature you provided.",
        )
    })?;
    Ok(auth.access_key_id.to_string())
}

/// A request about to be signed, with its path and query already encoded.
pub struct Unsigned<'a> {
    pub method: &'a str,
    pub raw_path: &'a str,
    pub raw_query: &'a str,
    pub body: &'a [u8],
}

/// Adds `x-amz-date`, `x-amz-content-sha256` and `authorization` to
/// `headers`, which must already hold `host`.
pub fn sign(
    req: &Unsigned<'_>,
    headers: &mut HeaderMap,
    key: &super::credentials::KeyPair,
    region: &str,
    at: SystemTime,
) -> Result<(), ApiError> {
    let Unsigned {
        method,
        raw_path,
        raw_query,
        body,
    } = *req;
    let amz_date = format_amz_date(at);
    let date = &amz_date[..8];
    let payload_hash = sha256_hex(body);
    let bad = |_| ApiError::internal("unrepresentable signing header");
    headers.insert("x-amz-date", amz_date.parse().map_err(bad)?);
    headers.insert("x-amz-content-sha256", payload_hash.parse().map_err(bad)?);
    let mut signed: Vec<String> = headers
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| k == "host" || k == "content-type" || k.starts_with("x-amz-"))
        .collect();
    signed.sort();
    signed.dedup();
    let parts = RequestParts {
        method,
        raw_path,
        raw_query,
        headers,
        payload_hash: &payload_hash,
    };
    let canonical = canonical_request(&parts, &signed)
        .ok_or_else(|| ApiError::internal("malformed query string"))?;
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let to_sign = string_to_sign(&amz_date, &scope, &canonical);
    let signature = hex::encode(hmac(
        &signing_key(&key.secret_access_key, date, region, SERVICE),
        &to_sign,
    ));
    let value = format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={signature}",
        key.access_key_id,
        signed.join(";")
    );
    headers.insert("authorization", value.parse().map_err(bad)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The `get-vanilla-query-order-key-case` vector from the AWS SigV4 test
    /// suite, which pins canonicalisation and key derivation.
    #[test]
    fn matches_the_aws_test_suite() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let empty = sha256_hex(b"");
        let parts = RequestParts {
            method: "GET",
            raw_path: "/",
            raw_query: "Param2=value2&Param1=value1",
            headers: &headers,
            payload_hash: &empty,
        };
        let canonical = canonical_request(&parts, &["host".into(), "x-amz-date".into()]).unwrap();
        let scope = "20150830/us-east-1/service/aws4_request";
        let sig = hex::encode(hmac(
            &signing_key(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "20150830",
                "us-east-1",
                "service",
            ),
            &string_to_sign("20150830T123600Z", scope, &canonical),
        ));
        assert_eq!(
            sig,
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
        );
    }

    #[test]
    fn signed_requests_verify_and_tampering_fails() {
        let creds = Credentials::parse(
            Path::new("c"),
            "[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n",
        )
        .unwrap();
        let key = creds.preferred().clone();
        let now = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:9080".parse().unwrap());
        let body = br#"{"meshName":"m"}"#;
        let req = Unsigned {
            method: "PUT",
            raw_path: "/v20190125/meshes",
            raw_query: "",
            body,
        };
        sign(&req, &mut headers, &key, "us-west-2", now).unwrap();
        let hash = sha256_hex(body);
        let parts = RequestParts {
            method: "PUT",
            raw_path: "/v20190125/meshes",
            raw_query: "",
            headers: &headers,
            payload_hash: &hash,
        };
        assert_eq!(verify(&parts, &creds, now).unwrap(), "AK");
        let other = sha256_hex(b"{}");
        let swapped = RequestParts {
            payload_hash: &other,
            ..parts
        };
        let err = verify(&swapped, &creds, now).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidSignature);
        let later = now + Duration::from_secs(600);
        let err = verify(&parts, &creds, later).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidSignature);
        let tampered = RequestParts {
            method: "DELETE",
            ..parts
        };
        let err = verify(&tampered, &creds, now).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidSignature);
    }
}
