//! The App Mesh error taxonomy, shared by the API, the file loaders and the
//! client so a rejected manifest reads the same as a rejected API call.

use crate::service_model::ValidationError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    ResourceInUse,
    LimitExceeded,
    TooManyTags,
    Forbidden,
    UnrecognizedClient,
    InvalidSignature,
    UnknownOperation,
    InternalServerError,
}

impl ErrorKind {
    /// The `x-amzn-ErrorType` value; botocore maps it to its exception class.
    pub fn type_name(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "BadRequestException",
            ErrorKind::NotFound => "NotFoundException",
            ErrorKind::Conflict => "ConflictException",
            ErrorKind::ResourceInUse => "ResourceInUseException",
            ErrorKind::LimitExceeded => "LimitExceededException",
            ErrorKind::TooManyTags => "TooManyTagsException",
            ErrorKind::Forbidden => "ForbiddenException",
            ErrorKind::UnrecognizedClient => "UnrecognizedClientException",
            ErrorKind::InvalidSignature => "InvalidSignatureException",
            ErrorKind::UnknownOperation => "UnknownOperationException",
            ErrorKind::InternalServerError => "InternalServerErrorException",
        }
    }

    pub fn from_type_name(name: &str) -> Option<ErrorKind> {
        [
            ErrorKind::BadRequest,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::ResourceInUse,
            ErrorKind::LimitExceeded,
            ErrorKind::TooManyTags,
            ErrorKind::Forbidden,
            ErrorKind::UnrecognizedClient,
            ErrorKind::InvalidSignature,
            ErrorKind::UnknownOperation,
            ErrorKind::InternalServerError,
        ]
        .into_iter()
        .find(|k| k.type_name() == name)
    }

    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest | ErrorKind::LimitExceeded | ErrorKind::TooManyTags => 400,
            ErrorKind::NotFound | ErrorKind::UnknownOperation => 404,
            ErrorKind::Conflict | ErrorKind::ResourceInUse => 409,
            ErrorKind::Forbidden | ErrorKind::UnrecognizedClient | ErrorKind::InvalidSignature => {
                403
            }
            ErrorKind::InternalServerError => 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.type_name())]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Conflict, message)
    }

    pub fn in_use(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::ResourceInUse, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InternalServerError, message)
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> ApiError {
        tracing::error!(error = %e, "database error");
        ApiError::internal("internal storage error")
    }
}
