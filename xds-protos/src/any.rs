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
#[derive(Debug)]
pub enum UnpackError {
    WrongType { expected: String, found: String },
    Decode(prost::DecodeError),
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnpackError::WrongType { expected, found } => {
                write!(f, "expected type {expected}, found {found}")
            }
            UnpackError::Decode(e) => write!(f, "cannot decode: {e}"),
        }
    }
}

impl std::error::Error for UnpackError {}

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
