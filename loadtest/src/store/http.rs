//! HarmonyDB over its HTTP JSON API, with ureq's blocking client run on
//! tokio's blocking pool. HTTP/1.1 has no pipelining, so each request in
//! flight holds a connection of its own from the agent's pool; the pool
//! keeps one idle connection per client, so steady load reuses them.

use std::time::Duration;

use serde_json::{json, Value};

use super::{OpError, Store, Version};
use crate::error::LoadError;

/// An HTTP client for HarmonyDB nodes.
pub struct HttpStore {
    agent: ureq::Agent,
    bases: Vec<String>,
}

impl HttpStore {
    /// A client for `endpoints` (`host:port`), client `i` talking to
    /// endpoint `i % endpoints`; checks each answers `GET /health`.
    pub async fn connect(
        endpoints: &[String],
        clients: usize,
        timeout: Duration,
    ) -> Result<HttpStore, LoadError> {
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .max_idle_connections(clients.max(1) * endpoints.len())
            .max_idle_connections_per_host(clients.max(1))
            .build();
        let bases: Vec<String> = endpoints.iter().map(|e| format!("http://{e}")).collect();
        for (endpoint, base) in endpoints.iter().zip(&bases) {
            let probe = agent.get(&format!("{base}/health"));
            let answer = tokio::task::spawn_blocking(move || {
                probe.call().map(|_| ()).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            answer.map_err(|reason| LoadError::Unreachable {
                target: "harmonydb-http".into(),
                endpoint: endpoint.clone(),
                reason: format!("health probe failed: {reason}"),
            })?;
        }
        Ok(HttpStore { agent, bases })
    }

    fn url(&self, client: usize, path: &str) -> String {
        format!("{}{path}", self.bases[client % self.bases.len()])
    }

    /// Sends a request on the blocking pool; the answer's JSON body.
    async fn call(&self, request: ureq::Request, body: Option<Value>) -> Result<Value, OpError> {
        let answer = tokio::task::spawn_blocking(move || {
            let response = match body {
                Some(body) => request.send_json(body),
                None => request.call(),
            };
            match response {
                Ok(response) => response
                    .into_json::<Value>()
                    .map_err(|e| OpError::Protocol(e.to_string())),
                Err(ureq::Error::Status(status, response)) => {
                    let body: Value = response.into_json().unwrap_or(Value::Null);
                    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
                    let message = body["error"]["message"].as_str().unwrap_or("").to_string();
                    Err(match code.as_str() {
                        "not_found" => OpError::NotFound,
                        "version_mismatch" => OpError::VersionMismatch,
                        "" => OpError::Server(format!("http_{status}"), message),
                        _ => OpError::Server(code, message),
                    })
                }
                Err(ureq::Error::Transport(transport)) => {
                    let text = transport.to_string();
                    if text.contains("timed out") {
                        Err(OpError::Timeout)
                    } else {
                        Err(OpError::Connection(text))
                    }
                }
            }
        })
        .await;
        answer.unwrap_or_else(|e| Err(OpError::Connection(format!("blocking task failed: {e}"))))
    }
}

/// Keys are `user` and digits (see `generator::record_key`); anything
/// else is percent-encoded byte by byte.
fn encode_key(key: &[u8]) -> String {
    let mut text = String::with_capacity(key.len());
    for byte in key {
        if byte.is_ascii_alphanumeric() {
            text.push(char::from(*byte));
        } else {
            text.push_str(&format!("%{byte:02X}"));
        }
    }
    text
}

/// Values are ASCII (see `generator::record_value`); anything else is
/// sent lossily, which a load test can afford.
fn value_text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

impl Store for HttpStore {
    async fn read(&self, client: usize, key: Vec<u8>) -> Result<Version, OpError> {
        let request = self
            .agent
            .get(&self.url(client, &format!("/kv/{}", encode_key(&key))));
        let body = self.call(request, None).await?;
        body["version"]
            .as_u64()
            .ok_or_else(|| OpError::Protocol(format!("read answer without a version: {body}")))
    }

    async fn write(&self, client: usize, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        let request = self
            .agent
            .put(&self.url(client, &format!("/kv/{}", encode_key(&key))));
        self.call(request, Some(json!({ "value": value_text(&value) })))
            .await
            .map(|_| ())
    }

    async fn scan(&self, client: usize, start: Vec<u8>, count: u32) -> Result<usize, OpError> {
        let path = format!("/kv?start={}&limit={count}", encode_key(&start));
        let request = self.agent.get(&self.url(client, &path));
        let body = self.call(request, None).await?;
        body["items"]
            .as_array()
            .map(Vec::len)
            .ok_or_else(|| OpError::Protocol(format!("scan answer without items: {body}")))
    }

    async fn compare_and_set(
        &self,
        client: usize,
        key: Vec<u8>,
        expected: Version,
        value: Vec<u8>,
    ) -> Result<(), OpError> {
        let request = self
            .agent
            .put(&self.url(client, &format!("/kv/{}", encode_key(&key))));
        let body = json!({ "value": value_text(&value), "expected_version": expected });
        self.call(request, Some(body)).await.map(|_| ())
    }
}
