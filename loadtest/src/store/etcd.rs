//! etcd over its native gRPC API (the `etcd-client` crate): `connections`
//! clients, each its own HTTP/2 connection, client `i` on connection
//! `i % connections`; gRPC multiplexes the requests in flight on each.
//! Reads are etcd's default, linearizable, like HarmonyDB's default.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use super::{OpError, Store, Version};
use crate::error::LoadError;

/// Connections to an etcd cluster.
pub struct EtcdStore {
    connections: Vec<Client>,
}

impl EtcdStore {
    /// Opens `count` connections, each to one of `endpoints` in turn, and
    /// checks each answers a read.
    pub async fn connect(
        endpoints: &[String],
        count: usize,
        timeout: Duration,
    ) -> Result<EtcdStore, LoadError> {
        let mut connections = Vec::with_capacity(count);
        for index in 0..count {
            let endpoint = endpoints[index % endpoints.len()].clone();
            let unreachable = |reason: String| LoadError::Unreachable {
                target: "etcd".into(),
                endpoint: endpoint.clone(),
                reason,
            };
            let options = ConnectOptions::new()
                .with_timeout(timeout)
                .with_connect_timeout(timeout);
            let connect = Client::connect([endpoint.as_str()], Some(options));
            let mut client = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| unreachable(format!("no connection within {timeout:?}")))?
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::time::timeout(timeout, client.get("harmonydb-loadtest-probe", None))
                .await
                .map_err(|_| unreachable(format!("no answer within {timeout:?}")))?
                .map_err(|e| unreachable(format!("probe read failed: {e}")))?;
            connections.push(client);
        }
        Ok(EtcdStore { connections })
    }

    fn kv(&self, client: usize) -> etcd_client::KvClient {
        self.connections[client % self.connections.len()].kv_client()
    }
}

fn op_error(error: etcd_client::Error) -> OpError {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let code = format!("{:?}", status.code()).to_ascii_lowercase();
            if code == "deadlineexceeded" || code == "cancelled" {
                OpError::Timeout
            } else if code == "unavailable" {
                OpError::Connection(status.message().to_string())
            } else {
                OpError::Server(code, status.message().to_string())
            }
        }
        etcd_client::Error::TransportError(error) => OpError::Connection(error.to_string()),
        etcd_client::Error::IoError(error) => OpError::Connection(error.to_string()),
        other => OpError::Protocol(other.to_string()),
    }
}

impl Store for EtcdStore {
    async fn read(&self, client: usize, key: Vec<u8>) -> Result<Version, OpError> {
        let answer = self.kv(client).get(key, None).await.map_err(op_error)?;
        match answer.kvs().first() {
            Some(kv) => Version::try_from(kv.mod_revision())
                .map_err(|_| OpError::Protocol("negative mod_revision".into())),
            None => Err(OpError::NotFound),
        }
    }

    async fn write(&self, client: usize, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.kv(client)
            .put(key, value, None)
            .await
            .map(|_| ())
            .map_err(op_error)
    }

    async fn scan(&self, client: usize, start: Vec<u8>, count: u32) -> Result<usize, OpError> {
        let options = GetOptions::new()
            .with_from_key()
            .with_limit(i64::from(count));
        let answer = self
            .kv(client)
            .get(start, Some(options))
            .await
            .map_err(op_error)?;
        Ok(answer.kvs().len())
    }

    async fn compare_and_set(
        &self,
        client: usize,
        key: Vec<u8>,
        expected: Version,
        value: Vec<u8>,
    ) -> Result<(), OpError> {
        let revision = i64::try_from(expected)
            .map_err(|_| OpError::Protocol(format!("revision {expected} out of range")))?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let answer = self.kv(client).txn(txn).await.map_err(op_error)?;
        if answer.succeeded() {
            Ok(())
        } else {
            Err(OpError::VersionMismatch)
        }
    }
}
