//! Bad input gets a clear error and never hurts the node: every HTTP error
//! case with its status and code, every TCP error frame, then random garbage
//! on the TCP port, after which the node still answers correctly.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{http, http_agent, Node, Rng};
use harmonydb_protocol::{ErrorCode, Response, ResponseFrame};

const VALUE_LIMIT: usize = 1024;
const FRAME_LIMIT: usize = 100_000;

fn start(dir: &std::path::Path) -> Node {
    Node::start(
        dir,
        &[
            "--max-value-bytes",
            &VALUE_LIMIT.to_string(),
            "--max-frame-bytes",
            &FRAME_LIMIT.to_string(),
        ],
    )
}

/// Asserts a JSON error with `status` and `code` and a non-empty message.
fn expect_error(result: (u16, String), status: u16, code: &str) {
    let (actual_status, body) = result;
    assert_eq!(actual_status, status, "body: {body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(json["error"]["code"], code, "body: {body}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "empty message: {body}");
}

#[test]
fn http_errors_have_the_right_status_and_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path());
    let agent = http_agent();
    let put = |key: &str, body: &str| {
        http(
            agent
                .put(&node.url(&format!("/kv/{key}")))
                .set("Content-Type", "application/json"),
            Some(body),
        )
    };

    // 400: malformed bodies and keys.
    expect_error(put("k", "{not json"), 400, "bad_request");
    expect_error(
        put("k", r#"{"value": "a", "value_base64": "YQ=="}"#),
        400,
        "bad_request",
    );
    expect_error(put("k", r#"{}"#), 400, "bad_request");
    expect_error(
        put("k", r#"{"value_base64": "not base64!"}"#),
        400,
        "bad_request",
    );
    expect_error(
        put("k", r#"{"value": "a", "colour": "blue"}"#),
        400,
        "bad_request",
    );
    expect_error(
        put("k", r#"{"value": "a", "expected_version": -1}"#),
        400,
        "bad_request",
    );
    expect_error(put("k", r#"{"value": 7}"#), 400, "bad_request");
    expect_error(
        put(&"k".repeat(5000), r#"{"value": "a"}"#),
        400,
        "invalid_key",
    );
    expect_error(
        http(agent.get(&node.url("/kv/bad%G1escape")), None),
        400,
        "invalid_key",
    );
    expect_error(put("", r#"{"value": "a"}"#), 400, "invalid_key");
    expect_error(
        http(agent.get(&node.url("/kv?limit=0")), None),
        400,
        "bad_request",
    );
    expect_error(
        http(agent.get(&node.url("/kv?limit=10001")), None),
        400,
        "bad_request",
    );
    expect_error(
        http(agent.get(&node.url("/kv?limit=many")), None),
        400,
        "bad_request",
    );
    expect_error(
        http(agent.get(&node.url("/kv?colour=blue")), None),
        400,
        "bad_request",
    );

    // 404: missing keys and routes.
    expect_error(
        http(agent.get(&node.url("/kv/missing")), None),
        404,
        "not_found",
    );
    expect_error(
        http(agent.delete(&node.url("/kv/missing")), None),
        404,
        "not_found",
    );
    expect_error(
        http(agent.get(&node.url("/nowhere")), None),
        404,
        "not_found",
    );
    expect_error(
        http(agent.post(&node.url("/kv/k")), Some("")),
        405,
        "method_not_allowed",
    );

    // 409: compare-and-set on the wrong version.
    let (status, body) = put("cas", r#"{"value": "first", "expected_version": 0}"#);
    assert_eq!(status, 200, "{body}");
    let version = serde_json::from_str::<serde_json::Value>(&body).expect("json")["version"]
        .as_u64()
        .expect("version");
    expect_error(
        put("cas", r#"{"value": "again", "expected_version": 0}"#),
        409,
        "version_mismatch",
    );
    let stale = format!(r#"{{"value": "x", "expected_version": {}}}"#, version + 100);
    expect_error(put("cas", &stale), 409, "version_mismatch");
    expect_error(
        http(
            agent.delete(&node.url(&format!("/kv/cas?expected_version={}", version + 1))),
            None,
        ),
        409,
        "version_mismatch",
    );
    let (status, body) = http(
        agent.delete(&node.url(&format!("/kv/cas?expected_version={version}"))),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("\"deleted_version\":{version}")),
        "{body}"
    );

    // 413: a value over the node's limit, and a body over the JSON limit.
    let big = format!(r#"{{"value": "{}"}}"#, "x".repeat(VALUE_LIMIT + 1));
    expect_error(put("big", &big), 413, "value_too_large");
    let huge = format!(r#"{{"value": "{}"}}"#, "x".repeat(VALUE_LIMIT * 7 + 70_000));
    expect_error(put("big", &huge), 413, "value_too_large");
    let exactly = format!(r#"{{"value": "{}"}}"#, "x".repeat(VALUE_LIMIT));
    assert_eq!(put("big", &exactly).0, 200);

    // 415: not JSON.
    expect_error(
        http(agent.put(&node.url("/kv/k")), Some(r#"{"value": "a"}"#)),
        415,
        "unsupported_media_type",
    );
    expect_error(
        http(
            agent
                .put(&node.url("/kv/k"))
                .set("Content-Type", "text/plain"),
            Some(r#"{"value": "a"}"#),
        ),
        415,
        "unsupported_media_type",
    );

    // After all that the node serves normally.
    assert_eq!(put("fine", r#"{"value": "ok"}"#).0, 200);
    let (status, body) = http(agent.get(&node.url("/health")), None);
    assert_eq!(status, 200, "{body}");
}

fn connect(node: &Node) -> TcpStream {
    let stream = TcpStream::connect(node.tcp).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads one answer frame, then asserts the node closes the connection.
fn read_error_then_eof(stream: &mut TcpStream) -> (u64, ErrorCode) {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).expect("error frame length");
    let mut body = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).expect("error frame body");
    let answer: ResponseFrame = rmp_serde::from_slice(&body).expect("decodable answer");
    let Response::Error { code, message, .. } = answer.body else {
        panic!("expected an error frame, got {:?}", answer.body);
    };
    assert!(!message.is_empty());
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the node closes the connection");
    assert!(rest.is_empty(), "bytes after the error frame: {rest:?}");
    (answer.id, code)
}

#[derive(serde::Serialize)]
struct RawFrame<B> {
    id: u64,
    body: B,
}

#[test]
fn tcp_bad_frames_get_an_error_frame_and_a_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path());

    // A frame over the limit: only the length is sent; the node must not wait for the body.
    let mut stream = connect(&node);
    stream
        .write_all(&((FRAME_LIMIT as u32) + 1).to_be_bytes())
        .expect("write");
    assert_eq!(
        read_error_then_eof(&mut stream),
        (0, ErrorCode::FrameTooLarge)
    );

    // A body that is not MessagePack.
    let mut stream = connect(&node);
    stream
        .write_all(&frame(b"\xc1\xc1 definitely not msgpack"))
        .expect("write");
    assert_eq!(
        read_error_then_eof(&mut stream),
        (0, ErrorCode::MalformedFrame)
    );

    // An unknown operation: the id is still answered.
    #[derive(serde::Serialize)]
    struct Op {
        op: &'static str,
    }
    let mut stream = connect(&node);
    let body = rmp_serde::to_vec_named(&RawFrame {
        id: 42,
        body: Op { op: "explode" },
    })
    .expect("encode");
    stream.write_all(&frame(&body)).expect("write");
    assert_eq!(
        read_error_then_eof(&mut stream),
        (42, ErrorCode::UnknownOperation)
    );

    // A known operation missing a field.
    let mut stream = connect(&node);
    let body = rmp_serde::to_vec_named(&RawFrame {
        id: 43,
        body: Op { op: "put" },
    })
    .expect("encode");
    stream.write_all(&frame(&body)).expect("write");
    assert_eq!(
        read_error_then_eof(&mut stream),
        (43, ErrorCode::MalformedFrame)
    );

    // Valid requests before a bad one are still answered before the close.
    let mut stream = connect(&node);
    #[derive(serde::Serialize)]
    struct Get {
        op: &'static str,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    }
    let get = rmp_serde::to_vec_named(&RawFrame {
        id: 7,
        body: Get {
            op: "get",
            key: b"absent".to_vec(),
        },
    })
    .expect("encode");
    stream.write_all(&frame(&get)).expect("write");
    stream.write_all(&frame(b"\xc1")).expect("write");
    let mut answers = Vec::new();
    stream.read_to_end(&mut answers).expect("read until close");
    let mut codes = Vec::new();
    let mut rest = answers.as_slice();
    while rest.len() >= 4 {
        let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let answer: ResponseFrame = rmp_serde::from_slice(&rest[4..4 + length]).expect("answer");
        if let Response::Error { code, .. } = answer.body {
            codes.push((answer.id, code));
        }
        rest = &rest[4 + length..];
    }
    codes.sort_by_key(|(id, _)| *id);
    assert_eq!(
        codes,
        [(0, ErrorCode::MalformedFrame), (7, ErrorCode::NotFound)]
    );

    // A frame cut off by the client closing: the node just drops the connection.
    let mut stream = connect(&node);
    stream.write_all(&100u32.to_be_bytes()).expect("write");
    stream.write_all(b"only part of it").expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the node closes the connection");

    assert_node_serves(&node);
}

#[test]
fn random_garbage_on_the_tcp_port_never_hurts_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path());
    let mut rng = Rng::new(0x5eed_cafe);
    for round in 0..300 {
        let mut stream = connect(&node);
        let length = rng.below(256) as usize;
        let mut garbage: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
        // Half the rounds get a plausible length prefix, to reach the decoder.
        if round % 2 == 0 {
            let mut framed = (garbage.len() as u32).to_be_bytes().to_vec();
            framed.append(&mut garbage);
            garbage = framed;
        }
        stream.write_all(&garbage).expect("write");
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut rest = Vec::new();
        // The node answers (or not) and closes; it must not keep us waiting.
        if let Err(error) = stream.read_to_end(&mut rest) {
            assert!(
                error.kind() == std::io::ErrorKind::ConnectionReset,
                "round {round}: connection not closed: {error}"
            );
        }
    }
    assert_node_serves(&node);
}

fn assert_node_serves(node: &Node) {
    common::block_on(async {
        let client = harmonydb_protocol::Client::connect(node.tcp)
            .await
            .expect("connect");
        let version = client.put(b"still", b"alive").await.expect("put");
        let item = client.get(b"still").await.expect("get").expect("present");
        assert_eq!(
            (item.value.as_slice(), item.version),
            (&b"alive"[..], version)
        );
    });
    let (status, _) = http(http_agent().get(&node.url("/health")), None);
    assert_eq!(status, 200);
}
