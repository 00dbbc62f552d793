//! Bad input gets a clear error and never hurts the node: every HTTP error
//! case with its status and code, in the JSON error format even where actix
//! refuses a request before any handler runs; every TCP error frame, for
//! every operation; then random garbage on the TCP port, after which the
//! node still answers correctly.

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
            "--read-timeout-ms",
            "2000",
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

/// Sends `request` as raw bytes on a new connection and reads the answer
/// until the node closes it: its status and body.
fn raw_http(node: &Node, request: &[u8]) -> (u16, String) {
    let (status, body, _) = common::raw_http_exchange(node.http, &[request], Duration::ZERO);
    assert_ne!(status, 0, "no HTTP answer: {body:?}");
    (status, body)
}

#[test]
fn every_http_error_is_the_json_error_even_before_a_handler_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path());
    let get = |target: &str, headers: &str| {
        raw_http(
            &node,
            format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    let body = |method: &str, target: &str, content_type: Option<&str>, body: &str| {
        let content_type = content_type
            .map(|t| format!("Content-Type: {t}\r\n"))
            .unwrap_or_default();
        raw_http(
            &node,
            format!(
                "{method} {target} HTTP/1.1\r\nHost: x\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let many_headers: String = (0..100).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let cases: Vec<(&str, (u16, String), u16, &str)> = vec![
        // actix refuses these before any handler runs; the node's guard
        // answers them in the JSON error format instead.
        (
            "a 100,000-byte key in the URL",
            get(&format!("/kv/{}", "k".repeat(100_000)), ""),
            414,
            "uri_too_long",
        ),
        (
            "a 200,000-byte URL",
            get(&format!("/kv/{}", "k".repeat(200_000)), ""),
            414,
            "uri_too_long",
        ),
        (
            "a 140,000-byte header",
            get("/kv/a", &format!("X-Big: {}\r\n", "x".repeat(140_000))),
            431,
            "headers_too_large",
        ),
        (
            "100 headers",
            get("/kv/a", &many_headers),
            431,
            "headers_too_large",
        ),
        (
            "a request line that is not HTTP",
            raw_http(&node, b"GE T / HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            "HTTP/1.1 without Host",
            raw_http(&node, b"GET /health HTTP/1.1\r\n\r\n"),
            400,
            "bad_request",
        ),
        // Errors the app's extractors and routes give.
        (
            "bad JSON",
            body("PUT", "/kv/a", Some("application/json"), "{not json"),
            400,
            "bad_request",
        ),
        (
            "a wrong Content-Type",
            body("PUT", "/kv/a", Some("text/plain"), r#"{"value": "a"}"#),
            415,
            "unsupported_media_type",
        ),
        (
            "POST /cluster/members without Content-Type",
            body(
                "POST",
                "/cluster/members",
                None,
                r#"{"id": 2, "address": "a:1"}"#,
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "POST /cluster/leader with a body and no Content-Type",
            body("POST", "/cluster/leader", None, r#"{"target": 2}"#),
            415,
            "unsupported_media_type",
        ),
        (
            "a wrong method",
            body("PATCH", "/kv/a", None, ""),
            405,
            "method_not_allowed",
        ),
        ("an unknown route", get("/nowhere", ""), 404, "not_found"),
        (
            "a member id that is not a number",
            body("DELETE", "/cluster/members/x", None, ""),
            400,
            "bad_request",
        ),
        (
            "a body over the limit",
            body(
                "PUT",
                "/kv/a",
                Some("application/json"),
                &format!(r#"{{"value": "{}"}}"#, "x".repeat(VALUE_LIMIT * 7 + 70_000)),
            ),
            413,
            "value_too_large",
        ),
    ];
    for (what, result, status, code) in cases {
        println!("{what}: {} {}", result.0, result.1);
        let (actual, text) = result;
        assert_eq!(actual, status, "{what}: {text}");
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: not the JSON error ({e}): {text:?}"));
        assert_eq!(json["error"]["code"], code, "{what}: {text}");
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {text}"
        );
    }
    // An empty body where one is optional needs no Content-Type: a node of
    // one has nobody to hand leadership to, which is what it says.
    let (status, text) = body("POST", "/cluster/leader", None, "");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("no other voter"), "{text}");

    // A head that never finishes: 408 in the JSON format, within the read
    // timeout (2 s here) and a margin, then the connection is closed.
    let started = std::time::Instant::now();
    let (status, text) = raw_http(&node, b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    // Requests before a refused head on the same connection are answered
    // first, in order.
    let (status, text) = raw_http(
        &node,
        format!(
            "GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /kv/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "k".repeat(70_000)
        )
        .as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"uri_too_long\""), "{text}");
    assert_node_serves(&node);
}

#[test]
fn every_tcp_operation_answers_bad_fields_as_malformed_and_unknown_ones_as_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path());
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Field {
        Text(&'static str),
        Map(std::collections::BTreeMap<&'static str, u8>),
    }
    for operation in harmonydb_protocol::OPERATIONS {
        // Every field any request has, each of the wrong type.
        let mut body = std::collections::BTreeMap::new();
        body.insert("op", Field::Text(operation.name));
        for field in [
            "key",
            "value",
            "id",
            "address",
            "target",
            "min_index",
            "index",
            "offset",
            "max_bytes",
            "from",
            "to",
            "messages",
            "limit",
            "traces",
        ] {
            body.insert(field, Field::Map([("x", 1)].into()));
        }
        let mut stream = connect(&node);
        let bytes = rmp_serde::to_vec_named(&RawFrame { id: 9, body }).expect("encode");
        stream.write_all(&frame(&bytes)).expect("write");
        if matches!(operation.name, "health" | "cluster_status" | "ready") {
            // No fields to get wrong: answered, and the connection stays.
            let mut length = [0u8; 4];
            stream.read_exact(&mut length).expect("answer length");
            let mut answer = vec![0u8; u32::from_be_bytes(length) as usize];
            stream.read_exact(&mut answer).expect("answer");
            let answer: ResponseFrame = rmp_serde::from_slice(&answer).expect("answer");
            assert_eq!(answer.id, 9, "{}", operation.name);
            continue;
        }
        assert_eq!(
            read_error_then_eof(&mut stream),
            (9, ErrorCode::MalformedFrame),
            "{}",
            operation.name
        );
    }
    // An unknown operation is named as such, with every known one listed.
    #[derive(serde::Serialize)]
    struct Op {
        op: &'static str,
    }
    let mut stream = connect(&node);
    let bytes = rmp_serde::to_vec_named(&RawFrame {
        id: 10,
        body: Op { op: "explode" },
    })
    .expect("encode");
    stream.write_all(&frame(&bytes)).expect("write");
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).expect("length");
    let mut answer = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut answer).expect("answer");
    let answer: ResponseFrame = rmp_serde::from_slice(&answer).expect("answer");
    let Response::Error { code, message, .. } = answer.body else {
        panic!("an error: {:?}", answer.body);
    };
    assert_eq!(code, ErrorCode::UnknownOperation);
    for operation in harmonydb_protocol::OPERATIONS {
        assert!(message.contains(operation.name), "{message}");
    }
    assert_node_serves(&node);
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
