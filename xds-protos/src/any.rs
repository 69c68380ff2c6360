//! Packing and unpacking `google.protobuf.Any`.

use prost::{Message, Name};

/// Wraps a message in an `Any` with its canonical type URL.
pub fn pack<M: Message + Name>(msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// Why an `Any` could not be read as the message asked for.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("expected type {expected}, found {found}")]
    WrongType { expected: String, found: String },
    #[error("cannot decode: {0}")]
    Decode(#[source] prost::DecodeError),
}

/// Reads an `Any` as `M`, checking the type URL first.
pub fn unpack<M: Message + Name + Default>(any: &prost_types::Any) -> Result<M, UnpackError> {
    let expected = M::type_url();
    // Envoy compares the name after the last '/', whatever the domain.
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != M::full_name() {
        return Err(UnpackError::WrongType {
            expected,
            found: any.type_url.clone(),
        });
    }
    M::decode(any.value.as_slice()).map_err(UnpackError::Decode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::config::cluster::v3::Cluster;
    use crate::envoy::config::listener::v3::Listener;

    #[test]
    fn an_any_of_another_type_is_refused_by_name() {
        let any = pack(&Cluster {
            name: "c".into(),
            ..Default::default()
        });
        let e = unpack::<Listener>(&any).expect_err("a Cluster is no Listener");
        assert!(
            matches!(&e, UnpackError::WrongType { found, .. } if found.ends_with("envoy.config.cluster.v3.Cluster"))
        );
        assert_eq!(
            e.to_string(),
            format!(
                "expected type {}, found {}",
                <Listener as Name>::type_url(),
                any.type_url
            )
        );
        let back: Cluster = unpack(&any).expect("the same type unpacks");
        assert_eq!(back.name, "c");
    }

    #[test]
    fn the_domain_of_the_type_url_does_not_matter_but_the_bytes_do() {
        let mut any = pack(&Cluster::default());
        any.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        assert!(unpack::<Cluster>(&any).is_ok());
        any.value = vec![0xff];
        assert!(matches!(
            unpack::<Cluster>(&any),
            Err(UnpackError::Decode(_))
        ));
    }
}
