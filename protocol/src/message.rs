//! Client <-> node messages. Each frame body is a MessagePack map with field
//! names (see `protocol/README.md`); enums are tagged by a string field
//! (`op` for requests, `type` for responses) so other languages can build
//! and read them as plain maps.

use serde::{Deserialize, Serialize};

/// A request with its correlation id and optional W3C trace context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the client, echoed in the answer; 1 or above (0 is reserved
    /// for errors about the connection itself).
    pub id: u64,
    /// W3C `traceparent` of the caller's span, if it is tracing.
    #[serde(default)]
    pub trace: Option<String>,
    /// The operation.
    pub body: Request,
}

/// An answer, matched to its request by `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request's id, or 0 for a connection-level error.
    pub id: u64,
    /// The result.
    pub body: Response,
}

/// Every operation a client can ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Read one key.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Write one key; with `expected_version` a compare-and-set (0 = must not exist).
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// The version the key must have for the write to happen.
        #[serde(default)]
        expected_version: Option<u64>,
    },
    /// Delete one key; with `expected_version` only at that version.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The version the key must have for the delete to happen.
        #[serde(default)]
        expected_version: Option<u64>,
    },
    /// Read keys in order: those with `prefix`, from `start` (inclusive) to `end` (exclusive).
    Scan {
        /// Only keys starting with this (empty = all keys).
        #[serde(default, with = "serde_bytes")]
        prefix: Vec<u8>,
        /// First key, inclusive.
        #[serde(default, with = "serde_bytes")]
        start: Option<Vec<u8>>,
        /// Last key, exclusive.
        #[serde(default, with = "serde_bytes")]
        end: Option<Vec<u8>>,
        /// Most items to return (default 1000, at most 10000).
        #[serde(default)]
        limit: Option<u32>,
    },
    /// Is the node serving?
    Health,
}

impl Request {
    /// The operation's name as it appears on the wire (`op`).
    pub fn op_name(&self) -> &'static str {
        match self {
            Request::Get { .. } => "get",
            Request::Put { .. } => "put",
            Request::Delete { .. } => "delete",
            Request::Scan { .. } => "scan",
            Request::Health => "health",
        }
    }
}

/// Names of every request `op`, to tell an unknown operation from a malformed one.
pub const REQUEST_OPS: [&str; 5] = ["get", "put", "delete", "scan", "health"];

/// One key of a scan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Its version.
    pub version: u64,
}

/// Every answer a node can give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `get`.
    Value {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Its value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Its version.
        version: u64,
    },
    /// Answer to `put`.
    Written {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The key's new version.
        version: u64,
    },
    /// Answer to `delete`.
    Deleted {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The version the key had before it was deleted.
        deleted_version: u64,
    },
    /// Answer to `scan`.
    Items {
        /// Keys in order.
        items: Vec<Item>,
        /// More keys match after the last item.
        more: bool,
    },
    /// Answer to `health`.
    Health {
        /// Index of the last applied write.
        applied_index: u64,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// What went wrong, for a person.
        message: String,
    },
}

/// Machine-readable error codes, the same on HTTP and TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is not well formed (body, parameters).
    BadRequest,
    /// The key is empty or too long.
    InvalidKey,
    /// The key does not exist.
    NotFound,
    /// A compare-and-set found a different version.
    VersionMismatch,
    /// The value is over the node's limit.
    ValueTooLarge,
    /// The request body has the wrong content type (HTTP).
    UnsupportedMediaType,
    /// The route exists but not for this HTTP method.
    MethodNotAllowed,
    /// A TCP frame longer than the node's limit.
    FrameTooLarge,
    /// A TCP frame that is not a valid request.
    MalformedFrame,
    /// A TCP request whose `op` the node does not know.
    UnknownOperation,
    /// Too many requests in flight; retry later.
    Overloaded,
    /// The node is shutting down.
    ShuttingDown,
    /// The node's storage failed; the write's outcome is unknown.
    StorageUnavailable,
    /// A bug in the node.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::NotFound => "not_found",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::ValueTooLarge => "value_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownOperation => "unknown_operation",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Encodes a frame body as MessagePack with field names.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(message).expect("protocol messages always serialize")
}

/// What a server can tell about a frame body that failed to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeFailure {
    /// The request id, if the body had a readable one.
    pub id: u64,
    /// `UnknownOperation` if `body.op` is a string the node doesn't know, else `MalformedFrame`.
    pub code: ErrorCode,
    /// The decoder's complaint.
    pub message: String,
}

/// Decodes a request frame body; on failure, salvages the id and says why.
pub fn decode_request(bytes: &[u8]) -> Result<RequestFrame, DecodeFailure> {
    let error = match rmp_serde::from_slice::<RequestFrame>(bytes) {
        Ok(frame) if frame.id == 0 => {
            return Err(DecodeFailure {
                id: 0,
                code: ErrorCode::MalformedFrame,
                message: "request id 0 is reserved for connection errors; use 1 or above".into(),
            })
        }
        Ok(frame) => return Ok(frame),
        Err(error) => error.to_string(),
    };
    // A lenient second look, only to answer the right id with the right code.
    #[derive(Deserialize)]
    struct Probe {
        id: Option<u64>,
        body: Option<ProbeBody>,
    }
    #[derive(Deserialize)]
    struct ProbeBody {
        op: Option<String>,
    }
    let probe = rmp_serde::from_slice::<Probe>(bytes).ok();
    let id = probe.as_ref().and_then(|p| p.id).unwrap_or(0);
    let op = probe.and_then(|p| p.body).and_then(|b| b.op);
    match op {
        Some(op) if !REQUEST_OPS.contains(&op.as_str()) => Err(DecodeFailure {
            id,
            code: ErrorCode::UnknownOperation,
            message: format!(
                "unknown operation {op:?}; known: {}",
                REQUEST_OPS.join(", ")
            ),
        }),
        _ => Err(DecodeFailure {
            id,
            code: ErrorCode::MalformedFrame,
            message: format!("frame body is not a valid request: {error}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(request: Request) {
        let frame = RequestFrame {
            id: 9,
            trace: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            body: request,
        };
        assert_eq!(decode_request(&encode(&frame)), Ok(frame));
    }

    #[test]
    fn every_request_round_trips() {
        round_trip(Request::Get { key: b"k".to_vec() });
        round_trip(Request::Put {
            key: b"k".to_vec(),
            value: vec![0, 255, 1],
            expected_version: Some(0),
        });
        round_trip(Request::Delete {
            key: b"k".to_vec(),
            expected_version: None,
        });
        round_trip(Request::Scan {
            prefix: b"p".to_vec(),
            start: Some(b"a".to_vec()),
            end: None,
            limit: Some(10),
        });
        round_trip(Request::Health);
    }

    #[test]
    fn responses_round_trip() {
        for body in [
            Response::Items {
                items: vec![Item {
                    key: b"a".to_vec(),
                    value: b"b".to_vec(),
                    version: 3,
                }],
                more: true,
            },
            Response::Error {
                code: ErrorCode::VersionMismatch,
                message: "x".into(),
            },
        ] {
            let frame = ResponseFrame { id: 4, body };
            let decoded: ResponseFrame = rmp_serde::from_slice(&encode(&frame)).expect("decode");
            assert_eq!(decoded, frame);
        }
    }

    #[test]
    fn the_wire_shape_is_a_map_with_names() {
        let bytes = encode(&RequestFrame {
            id: 1,
            trace: None,
            body: Request::Get { key: b"k".to_vec() },
        });
        // fixmap of 3: id, trace, body; body is a fixmap of 2: op, key (bin 8).
        assert_eq!(
            bytes,
            [
                &[0x83, 0xa2][..],
                b"id",
                &[0x01, 0xa5],
                b"trace",
                &[0xc0, 0xa4],
                b"body",
                &[0x82, 0xa2],
                b"op",
                &[0xa3],
                b"get",
                &[0xa3],
                b"key",
                &[0xc4, 0x01],
                b"k",
            ]
            .concat()
        );
    }

    #[test]
    fn an_unknown_op_keeps_its_id() {
        #[derive(Serialize)]
        struct Odd {
            id: u64,
            body: OddBody,
        }
        #[derive(Serialize)]
        struct OddBody {
            op: &'static str,
        }
        let bytes = encode(&Odd {
            id: 77,
            body: OddBody { op: "explode" },
        });
        let failure = decode_request(&bytes).expect_err("unknown op");
        assert_eq!(
            (failure.id, failure.code),
            (77, ErrorCode::UnknownOperation)
        );
    }

    #[test]
    fn garbage_is_malformed_with_id_zero() {
        let failure = decode_request(b"\xff\x00garbage").expect_err("garbage");
        assert_eq!((failure.id, failure.code), (0, ErrorCode::MalformedFrame));
        let reserved_id = encode(&RequestFrame {
            id: 0,
            trace: None,
            body: Request::Health,
        });
        let failure = decode_request(&reserved_id).expect_err("id 0 is reserved");
        assert_eq!((failure.id, failure.code), (0, ErrorCode::MalformedFrame));
    }
}
