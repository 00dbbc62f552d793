//! HarmonyDB over its TCP protocol: `connections` pipelined connections,
//! client `i` on connection `i % connections`, so each connection carries
//! `clients / connections` requests in flight.

use std::time::Duration;

use harmonydb_protocol::{Client, ClientError, ErrorCode, Request};

use super::{OpError, Store, Version};
use crate::error::LoadError;

/// Connections to HarmonyDB nodes over TCP.
pub struct TcpStore {
    connections: Vec<Client>,
}

impl TcpStore {
    /// Opens `count` connections, spread round-robin over `endpoints`, and
    /// checks each answers a health probe.
    pub async fn connect(
        endpoints: &[String],
        count: usize,
        timeout: Duration,
    ) -> Result<TcpStore, LoadError> {
        let mut connections = Vec::with_capacity(count);
        for index in 0..count {
            let endpoint = &endpoints[index % endpoints.len()];
            let unreachable = |reason: String| LoadError::Unreachable {
                target: "harmonydb-tcp".into(),
                endpoint: endpoint.clone(),
                reason,
            };
            let client = tokio::time::timeout(timeout, Client::connect(endpoint.as_str()))
                .await
                .map_err(|_| unreachable(format!("no connection within {timeout:?}")))?
                .map_err(|e| unreachable(e.to_string()))?
                .with_timeout(timeout);
            client
                .health()
                .await
                .map_err(|e| unreachable(format!("health probe failed: {e}")))?;
            connections.push(client);
        }
        Ok(TcpStore { connections })
    }

    fn connection(&self, client: usize) -> &Client {
        &self.connections[client % self.connections.len()]
    }
}

fn op_error(error: ClientError) -> OpError {
    match error {
        ClientError::Server {
            code: ErrorCode::NotFound,
            ..
        } => OpError::NotFound,
        ClientError::Server {
            code: ErrorCode::VersionMismatch,
            ..
        } => OpError::VersionMismatch,
        ClientError::Server { code, message, .. } => OpError::Server(code.to_string(), message),
        ClientError::Timeout(_) => OpError::Timeout,
        ClientError::Connect { reason, .. } => OpError::Connection(reason),
        ClientError::ConnectionLost(reason) => OpError::Connection(reason),
        other => OpError::Protocol(other.to_string()),
    }
}

impl Store for TcpStore {
    async fn read(&self, client: usize, key: Vec<u8>) -> Result<Version, OpError> {
        match self.connection(client).get(&key).await {
            Ok(Some(item)) => Ok(item.version),
            Ok(None) => Err(OpError::NotFound),
            Err(error) => Err(op_error(error)),
        }
    }

    async fn write(&self, client: usize, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.connection(client)
            .put(&key, &value)
            .await
            .map(|_| ())
            .map_err(op_error)
    }

    async fn scan(&self, client: usize, start: Vec<u8>, count: u32) -> Result<usize, OpError> {
        let request = Request::Scan {
            prefix: Vec::new(),
            start: Some(start),
            end: None,
            limit: Some(count),
            consistency: None,
        };
        self.connection(client)
            .scan(request)
            .await
            .map(|(items, _)| items.len())
            .map_err(op_error)
    }

    async fn compare_and_set(
        &self,
        client: usize,
        key: Vec<u8>,
        expected: Version,
        value: Vec<u8>,
    ) -> Result<(), OpError> {
        self.connection(client)
            .cas(&key, expected, &value)
            .await
            .map(|_| ())
            .map_err(op_error)
    }
}
