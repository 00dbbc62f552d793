//! The one place where subsystem errors become API errors: a code that is
//! the same on HTTP and TCP, a message for people, and an HTTP status.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use harmonydb_actors::kv::KvError;
use harmonydb_actors::replica::{MembershipError, SnapshotError};
use harmonydb_protocol::{ErrorCode, LeaderHint, Response};
use serde::Serialize;

/// An error as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Explanation for a person.
    pub message: String,
    /// With `not_leader`: where the leader is.
    pub leader: Option<LeaderHint>,
    /// With `version_mismatch`: the key's version when the write was refused (0 = absent).
    pub current_version: Option<u64>,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            leader: None,
            current_version: None,
        }
    }

    /// The same error naming the leader.
    pub fn with_leader(mut self, leader: Option<LeaderHint>) -> Self {
        self.leader = leader;
        self
    }

    /// The same error carrying the key's current version.
    pub fn with_current_version(mut self, current_version: Option<u64>) -> Self {
        self.current_version = current_version;
        self
    }

    /// The error as a protocol answer.
    pub fn into_response(self) -> Response {
        Response::Error {
            code: self.code,
            message: self.message,
            leader: self.leader,
            current_version: self.current_version,
        }
    }

    /// An error answer from the protocol (a forwarded request's).
    pub fn from_response(code: ErrorCode, message: String, leader: Option<LeaderHint>) -> Self {
        ApiError {
            code,
            message,
            leader,
            current_version: None,
        }
    }

    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// Maps a store error, naming the key where the store's error doesn't.
    pub fn from_kv(error: KvError, key: Option<&[u8]>) -> Self {
        let code = match &error {
            KvError::InvalidKey(_) => ErrorCode::InvalidKey,
            KvError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
            KvError::InvalidScan(_) => ErrorCode::BadRequest,
            KvError::NotFound => ErrorCode::NotFound,
            KvError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            KvError::Overloaded => ErrorCode::Overloaded,
            KvError::NotLeader { .. } => ErrorCode::NotLeader,
            KvError::NoLeader => ErrorCode::NoLeader,
            KvError::Unavailable(_) => ErrorCode::Unavailable,
            KvError::OutcomeUnknown(_) => ErrorCode::Timeout,
            KvError::ShuttingDown => ErrorCode::ShuttingDown,
            KvError::Removed { .. } => ErrorCode::Removed,
            KvError::Storage(_) => ErrorCode::StorageUnavailable,
            KvError::CorruptEntry { .. } => ErrorCode::Internal,
        };
        let message = match (key, &error) {
            (Some(key), KvError::NotFound | KvError::VersionMismatch { .. }) => {
                format!("key {}: {error}", String::from_utf8_lossy(key))
            }
            _ => error.to_string(),
        };
        let current_version = match error {
            KvError::VersionMismatch { current, .. } => Some(current),
            _ => None,
        };
        ApiError::new(code, message).with_current_version(current_version)
    }

    /// A refused or unsettled membership change; `not_leader` is left to
    /// the caller, which knows where the leader is.
    pub fn from_membership(error: MembershipError) -> Self {
        let code = match &error {
            MembershipError::NotLeader { leader: 0 } => ErrorCode::NoLeader,
            MembershipError::NotLeader { .. } => ErrorCode::NotLeader,
            MembershipError::InProgress
            | MembershipError::TransferInProgress
            | MembershipError::AlreadyMember { .. }
            | MembershipError::NotCaughtUp { .. } => ErrorCode::Conflict,
            MembershipError::UnknownNode { .. } => ErrorCode::NotFound,
            MembershipError::LastVoter { .. } | MembershipError::Invalid(_) => {
                ErrorCode::BadRequest
            }
            MembershipError::OutcomeUnknown => ErrorCode::Timeout,
            MembershipError::Unavailable(kv) => return ApiError::from_kv(kv.clone(), None),
        };
        ApiError::new(code, error.to_string())
    }

    /// A dump this node could not prepare for a follower: a storage
    /// failure as such, anything else `unavailable` (the follower asks
    /// again).
    pub fn from_snapshot(error: SnapshotError) -> Self {
        match error {
            SnapshotError::Failed(fault) => ApiError::from_kv(KvError::Storage(fault), None),
            other => ApiError::new(ErrorCode::Unavailable, other.to_string()),
        }
    }

    /// The HTTP status for this error's code.
    pub fn status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadRequest
            | ErrorCode::InvalidKey
            | ErrorCode::MalformedFrame
            | ErrorCode::UnknownOperation => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::VersionMismatch | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Removed => StatusCode::GONE,
            ErrorCode::ValueTooLarge | ErrorCode::FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::Overloaded
            | ErrorCode::ShuttingDown
            | ErrorCode::StorageUnavailable
            | ErrorCode::NoLeader
            | ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            // 421: this node is the wrong one to ask; the body names the right one.
            ErrorCode::NotLeader => StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<&'a LeaderHint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<u64>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status());
        if matches!(
            self.code,
            ErrorCode::Overloaded | ErrorCode::NoLeader | ErrorCode::Unavailable
        ) {
            response.insert_header(("Retry-After", "1"));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str(),
                message: &self.message,
                leader: self.leader.as_ref(),
                current_version: self.current_version,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmonydb_actors::kv::NodeFault;

    #[test]
    fn store_errors_map_to_the_documented_statuses() {
        let cases = [
            (KvError::InvalidKey("empty".into()), 400),
            (KvError::NotFound, 404),
            (
                KvError::VersionMismatch {
                    expected: 1,
                    current: 2,
                },
                409,
            ),
            (
                KvError::ValueTooLarge {
                    size_bytes: 2,
                    size_max_bytes: 1,
                },
                413,
            ),
            (KvError::Overloaded, 503),
            (KvError::ShuttingDown, 503),
            (
                KvError::Storage(NodeFault::new(
                    "syncing the WAL",
                    std::io::Error::other("disk"),
                )),
                503,
            ),
            (KvError::NotLeader { leader: 2 }, 421),
            (KvError::NoLeader, 503),
            (KvError::Unavailable("dropped".into()), 503),
            (KvError::OutcomeUnknown("timeout".into()), 504),
        ];
        for (error, status) in cases {
            let api = ApiError::from_kv(error.clone(), Some(b"k"));
            assert_eq!(api.status().as_u16(), status, "{error:?}");
        }
        let mismatch = ApiError::from_kv(
            KvError::VersionMismatch {
                expected: 1,
                current: 2,
            },
            Some(b"k"),
        );
        assert_eq!(mismatch.current_version, Some(2));
        let Response::Error {
            current_version, ..
        } = mismatch.into_response()
        else {
            panic!("an error answer");
        };
        assert_eq!(current_version, Some(2));
        assert_eq!(
            ApiError::from_kv(KvError::NotFound, None).current_version,
            None
        );
        let not_found = ApiError::from_kv(KvError::NotFound, Some(b"users/7"));
        assert!(
            not_found.message.contains("users/7"),
            "{}",
            not_found.message
        );
    }
}
