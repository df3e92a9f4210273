//! The error policy, and the codes clients see.
//!
//! - Store functions return `StoreError` (diesel and pool failures, nothing GraphQL).
//! - The domain (`graph`) returns [`AppError`]: one variant per `extensions.code` a client may see, with
//!   a message written for that client. Background tasks use `anyhow` and log.
//! - Only the GraphQL layer turns an `AppError` into a response error. An internal error's details are
//!   logged with the request id and never sent: the client sees a generic message and the code.

use std::fmt;

/// The stable `extensions.code` values of the API (SERVICE.md, "Errors and limits").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    BadUserInput,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    InternalServerError,
    /// Apollo's APQ protocol: the hash is unknown here; the client sends the text with it again.
    PersistedQueryNotFound,
}

impl ErrorCode {
    /// Every code, for the metrics that exist from the start.
    pub const ALL: [Self; 8] = [
        Self::Unauthenticated,
        Self::Forbidden,
        Self::BadUserInput,
        Self::NotFound,
        Self::RateLimited,
        Self::ServiceUnavailable,
        Self::InternalServerError,
        Self::PersistedQueryNotFound,
    ];

    /// The wire form, as clients match on it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::NotFound => "NOT_FOUND",
            Self::RateLimited => "RATE_LIMITED",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::InternalServerError => "INTERNAL_SERVER_ERROR",
            Self::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a client may see: a code and a message meant for that client.
///
/// It deliberately implements neither `Display` nor `std::error::Error`: async-graphql converts any
/// `Display` type into an error without a code, so this keeps `?` going through our own conversion,
/// which sets `extensions.code`.
#[derive(Debug)]
pub enum AppError {
    Unauthenticated(String),
    Forbidden(String),
    BadUserInput(String),
    NotFound(String),
    ServiceUnavailable(String),
    /// Over a rate limit: the message names the limit; a retry after `retry_after_secs` passes.
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    PersistedQueryNotFound,
    /// Details are for the log only; the client sees "internal error".
    Internal(anyhow::Error),
}

impl AppError {
    /// The code this error carries to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::BadUserInput(_) => ErrorCode::BadUserInput,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::ServiceUnavailable(_) => ErrorCode::ServiceUnavailable,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::PersistedQueryNotFound => ErrorCode::PersistedQueryNotFound,
            Self::Internal(_) => ErrorCode::InternalServerError,
        }
    }

    /// The message for the client (never an internal error's details).
    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::BadUserInput(m)
            | Self::NotFound(m)
            | Self::ServiceUnavailable(m)
            | Self::RateLimited { message: m, .. } => m.clone(),
            // The protocol's own message: clients match on it.
            Self::PersistedQueryNotFound => "PersistedQueryNotFound".to_owned(),
            Self::Internal(_) => "internal error".to_owned(),
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadUserInput(message.into())
    }

    pub fn user_not_found(id: i64) -> Self {
        Self::NotFound(format!("no user with id {id}"))
    }

    pub fn viewer_not_found(id: i64) -> Self {
        Self::NotFound(format!(
            "the viewer (user {id}) has no record in this service"
        ))
    }

    pub fn needs_viewer() -> Self {
        Self::Unauthenticated(
            "this operation needs a bearer token (Authorization: Bearer <JWT>)".into(),
        )
    }
}
