//! Reading an encoded protobuf message without decoding it: one string
//! field (a resource's name), or the entries of one repeated message field
//! apart from everything else. xDS uses it to recognise a resource, virtual
//! host or route whose bytes are those of the version it already holds, and
//! to decode only what changed.

use bytes::Bytes;
use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};
use prost::DecodeError;

/// One message, split around a repeated message field.
#[derive(Debug)]
pub(crate) struct Split {
    /// The field's entries in wire order, each the encoding of one element
    /// (slices of the input, not copies).
    pub(crate) entries: Vec<Bytes>,
    /// Every other field, in order: decodes as the message with the
    /// repeated field empty.
    pub(crate) rest: Vec<u8>,
}

/// Splits `msg` around field number `field`. Fails on malformed input as
/// prost's decoder would.
pub(crate) fn split(msg: &Bytes, field: u32) -> Result<Split, DecodeError> {
    let mut buf: &[u8] = msg;
    let mut entries = Vec::new();
    let mut rest = Vec::new();
    while !buf.is_empty() {
        let start = msg.len() - buf.len();
        let (tag, wire_type) = decode_key(&mut buf)?;
        let value = msg.len() - buf.len();
        skip_field(wire_type, tag, &mut buf, DecodeContext::default())?;
        let end = msg.len() - buf.len();
        if tag == field && wire_type == WireType::LengthDelimited {
            // `skip_field` checked the length prefix against the input.
            let mut prefix = &msg[value..end];
            decode_varint(&mut prefix)?;
            entries.push(msg.slice(end - prefix.len()..end));
        } else {
            rest.extend_from_slice(&msg[start..end]);
        }
    }
    Ok(Split { entries, rest })
}

/// The string in field number `field` (the last one, as a decoder keeps);
/// `None` when absent or when `msg` or the string is malformed.
pub(crate) fn string_field(msg: &[u8], field: u32) -> Option<&str> {
    let mut buf = msg;
    let mut found = None;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        let value = msg.len() - buf.len();
        skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
        if tag == field && wire_type == WireType::LengthDelimited {
            let mut v = &msg[value..msg.len() - buf.len()];
            decode_varint(&mut v).ok()?;
            found = Some(v);
        }
    }
    std::str::from_utf8(found?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use xds_protos::envoy::config::route::v3::{RouteConfiguration, VirtualHost};

    fn vhost(name: &str) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: vec![format!("{name}.example")],
            ..Default::default()
        }
    }

    #[test]
    fn entries_are_the_elements_and_rest_the_other_fields() {
        let rc = RouteConfiguration {
            name: "rc".into(),
            virtual_hosts: vec![vhost("a"), vhost("b")],
            response_headers_to_remove: vec!["x-gone".into()],
            ..Default::default()
        };
        let msg = Bytes::from(rc.encode_to_vec());
        let s = split(&msg, 2).unwrap();
        assert_eq!(s.entries.len(), 2);
        assert_eq!(s.entries[0].as_ref(), vhost("a").encode_to_vec());
        assert_eq!(s.entries[1].as_ref(), vhost("b").encode_to_vec());
        let rest = RouteConfiguration::decode(s.rest.as_slice()).unwrap();
        assert_eq!(
            rest,
            RouteConfiguration {
                virtual_hosts: Vec::new(),
                ..rc
            }
        );
    }

    #[test]
    fn string_field_is_the_last_occurrence() {
        let rc = RouteConfiguration {
            name: "first".into(),
            virtual_hosts: vec![vhost("a")],
            ..Default::default()
        };
        let mut msg = rc.encode_to_vec();
        assert_eq!(string_field(&msg, 1), Some("first"));
        msg.extend(
            RouteConfiguration {
                name: "second".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert_eq!(string_field(&msg, 1), Some("second"));
        assert_eq!(
            RouteConfiguration::decode(msg.as_slice()).unwrap().name,
            "second"
        );
        assert_eq!(string_field(&msg, 9), None);
        msg.push(0x80);
        assert_eq!(string_field(&msg, 1), None);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let rc = RouteConfiguration {
            virtual_hosts: vec![vhost("a")],
            ..Default::default()
        };
        let mut bytes = rc.encode_to_vec();
        bytes.pop();
        assert!(split(&Bytes::from(bytes), 2).is_err());
        assert!(split(&Bytes::from_static(&[0x80]), 2).is_err());
    }
}
