//! One connection policy for both front doors (TCP and HTTP; pgwire will
//! follow it): how many connections may be open, from one source and in
//! all, and how long a connection may take to say something.
//!
//! A slow or silent client must not hold what others need. So every
//! connection is admitted by an [`Admission`] (a total cap and a cap per
//! source address, each refusal counted and logged at a bounded rate),
//! must send a whole request within [`ConnectionPolicy::read_timeout`] of
//! beginning it (its first within that time of connecting), and is closed
//! after [`ConnectionPolicy::idle_timeout`] with nothing to do.
//!
//! On the TCP port peers and clients share one listener, and a connection
//! is unidentified until its first frame: unidentified connections come
//! from a small pool of their own (per source and in all), so a flood of
//! half-open connections fills that pool, not the client pool, and each
//! of them loses its slot after the read timeout. A connection whose first
//! frame is a member's `raft` frame becomes a peer link, which no client
//! cap applies to; one from an address a member is known at may take an
//! unidentified slot beyond the pool's cap, so a restarted peer is never
//! locked out by clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

/// How connections are bounded in number and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionPolicy {
    /// Client connections open at once, per front door.
    pub connections_max: usize,
    /// Client connections open at once from one source address.
    pub connections_per_source_max: usize,
    /// How long a request (a TCP frame; an HTTP head and body) may take
    /// to arrive once begun, and the first one once connected.
    pub read_timeout: Duration,
    /// How long a connection may stay open with nothing in flight.
    pub idle_timeout: Duration,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        ConnectionPolicy {
            connections_max: CONNECTIONS_DEFAULT_MAX,
            connections_per_source_max: CONNECTIONS_PER_SOURCE_DEFAULT_MAX,
            read_timeout: Duration::from_millis(READ_TIMEOUT_DEFAULT_MS),
            idle_timeout: Duration::from_millis(IDLE_TIMEOUT_DEFAULT_MS),
        }
    }
}

/// Client connections per front door by default.
pub const CONNECTIONS_DEFAULT_MAX: usize = 1024;

/// Client connections per source address by default.
pub const CONNECTIONS_PER_SOURCE_DEFAULT_MAX: usize = 256;

/// Read timeout by default, in milliseconds.
pub const READ_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// Idle timeout by default, in milliseconds.
pub const IDLE_TIMEOUT_DEFAULT_MS: u64 = 60_000;

/// Unidentified TCP connections at once, as a share of the client cap
/// (at least [`UNIDENTIFIED_MIN`]).
const UNIDENTIFIED_SHARE_DIVISOR: usize = 4;

/// Fewest unidentified TCP connections allowed at once.
const UNIDENTIFIED_MIN: usize = 16;

/// Unidentified TCP connections from one source, as a share of its cap:
/// room for a client that opens a pool of connections before using them,
/// and less than the whole unidentified pool, so one source can't take it.
const UNIDENTIFIED_PER_SOURCE_DIVISOR: usize = 2;

/// Unidentified connections from a member's address allowed beyond the
/// pool's cap, so peers always get in.
const MEMBER_RESERVE: usize = 16;

/// At most one refusal log line per this interval and reason; the others
/// are counted in the metric and summed in the next line.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Which pool a connection holds a place in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pool {
    /// TCP connections that have not sent a whole first frame.
    Unidentified,
    /// Client connections.
    Clients,
    /// Peer links (members' Raft traffic), not capped by clients.
    Peers,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The pool is full.
    TooMany,
    /// Its source has its share of the pool.
    TooManyFromSource,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TooMany => "too_many",
            Refusal::TooManyFromSource => "too_many_from_source",
        }
    }

    /// Every refusal, for registering the metric's series.
    pub const ALL: [Refusal; 2] = [Refusal::TooMany, Refusal::TooManyFromSource];
}

#[derive(Default)]
struct Counts {
    /// Open connections by pool.
    total: HashMap<Pool, usize>,
    /// Open connections by pool and source.
    by_source: HashMap<(Pool, IpAddr), usize>,
}

#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

struct Inner {
    api: &'static str,
    policy: ConnectionPolicy,
    counts: Mutex<Counts>,
    /// Addresses members are known at (refreshed by the caller).
    member_ips: Mutex<Vec<IpAddr>>,
    log: Mutex<HashMap<Refusal, RefusalLog>>,
    refused: AtomicU64,
}

/// Admits connections to one front door under a [`ConnectionPolicy`].
/// Cheap to clone; every clone counts the same connections.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

impl Admission {
    /// Admission for the front door named `api` (`tcp`, `http`), the
    /// label of its metrics.
    pub fn new(api: &'static str, policy: ConnectionPolicy) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                api,
                policy,
                counts: Mutex::new(Counts::default()),
                member_ips: Mutex::new(Vec::new()),
                log: Mutex::new(HashMap::new()),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// The policy it admits by.
    pub fn policy(&self) -> ConnectionPolicy {
        self.inner.policy
    }

    /// Tells which addresses members are at (their peer links may take an
    /// unidentified slot beyond the pool's cap).
    pub fn set_member_ips(&self, ips: Vec<IpAddr>) {
        if let Ok(mut known) = self.inner.member_ips.lock() {
            *known = ips;
        }
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    fn caps(&self, pool: Pool) -> (usize, usize) {
        let policy = &self.inner.policy;
        match pool {
            Pool::Clients => (policy.connections_max, policy.connections_per_source_max),
            Pool::Unidentified => (
                (policy.connections_max / UNIDENTIFIED_SHARE_DIVISOR).max(UNIDENTIFIED_MIN),
                (policy.connections_per_source_max / UNIDENTIFIED_PER_SOURCE_DIVISOR).max(1),
            ),
            Pool::Peers => (usize::MAX, usize::MAX),
        }
    }

    /// Takes a place for a connection from `source` in `pool`, or says why
    /// not (and counts and logs the refusal).
    pub fn admit(&self, pool: Pool, source: IpAddr) -> Result<Slot, Refusal> {
        let (total_max, per_source_max) = self.caps(pool);
        let is_member = || {
            self.inner
                .member_ips
                .lock()
                .is_ok_and(|ips| ips.contains(&source))
        };
        let outcome = match self.inner.counts.lock() {
            Ok(mut counts) => {
                let total = counts.total.get(&pool).copied().unwrap_or(0);
                let from_source = counts.by_source.get(&(pool, source)).copied().unwrap_or(0);
                let reserve = if pool == Pool::Unidentified && is_member() {
                    MEMBER_RESERVE
                } else {
                    0
                };
                if from_source >= per_source_max.saturating_add(reserve) {
                    Err(Refusal::TooManyFromSource)
                } else if total >= total_max.saturating_add(reserve) {
                    Err(Refusal::TooMany)
                } else {
                    *counts.total.entry(pool).or_default() += 1;
                    *counts.by_source.entry((pool, source)).or_default() += 1;
                    Ok(())
                }
            }
            Err(_) => Err(Refusal::TooMany),
        };
        match outcome {
            Ok(()) => Ok(Slot {
                admission: self.clone(),
                pool,
                source,
            }),
            Err(refusal) => {
                self.refuse(refusal, source, pool);
                Err(refusal)
            }
        }
    }

    fn release(&self, pool: Pool, source: IpAddr) {
        if let Ok(mut counts) = self.inner.counts.lock() {
            if let Some(total) = counts.total.get_mut(&pool) {
                *total = total.saturating_sub(1);
            }
            let key = (pool, source);
            let gone = counts.by_source.get_mut(&key).is_some_and(|count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
            if gone {
                counts.by_source.remove(&key);
            }
        }
    }

    /// Counts a refusal and logs it, at most once a second per reason.
    fn refuse(&self, refusal: Refusal, source: IpAddr, pool: Pool) {
        self.inner.refused.fetch_add(1, Ordering::Relaxed);
        let api = self.inner.api;
        metrics::counter!(
            format!("harmonydb_{api}_connections_refused_total"),
            "reason" => refusal.as_str()
        )
        .increment(1);
        let Ok(mut logs) = self.inner.log.lock() else {
            return;
        };
        let log = logs.entry(refusal).or_default();
        if log
            .last
            .is_some_and(|at| at.elapsed() < REFUSAL_LOG_INTERVAL)
        {
            log.suppressed += 1;
            return;
        }
        let (total_max, per_source_max) = self.caps(pool);
        warn!(
            api,
            %source,
            reason = refusal.as_str(),
            pool = ?pool,
            total_max,
            per_source_max,
            refused_since_last_line = log.suppressed,
            "refusing a connection"
        );
        log.last = Some(Instant::now());
        log.suppressed = 0;
    }
}

/// A connection's place in a pool, given back when dropped.
pub struct Slot {
    admission: Admission,
    pool: Pool,
    source: IpAddr,
}

impl Slot {
    /// Moves the connection to `pool` (an unidentified TCP connection that
    /// turned out to be a client or a peer), or says why it can't.
    pub fn move_to(&mut self, pool: Pool) -> Result<(), Refusal> {
        if pool == self.pool {
            return Ok(());
        }
        let next = self.admission.admit(pool, self.source)?;
        // The new place is taken; the old one goes when `next` takes over.
        let previous = std::mem::replace(self, next);
        drop(previous);
        Ok(())
    }

    /// The pool it is in.
    pub fn pool(&self) -> Pool {
        self.pool
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.pool, self.source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(total: usize, per_source: usize) -> ConnectionPolicy {
        ConnectionPolicy {
            connections_max: total,
            connections_per_source_max: per_source,
            ..ConnectionPolicy::default()
        }
    }

    #[test]
    fn one_source_cannot_take_every_place() {
        let admission = Admission::new("test", policy(8, 3));
        let attacker: IpAddr = "127.0.0.2".parse().expect("ip");
        let client: IpAddr = "127.0.0.1".parse().expect("ip");
        let held: Vec<Slot> = (0..3)
            .map(|_| {
                admission
                    .admit(Pool::Clients, attacker)
                    .expect("within its share")
            })
            .collect();
        assert_eq!(
            admission.admit(Pool::Clients, attacker).err(),
            Some(Refusal::TooManyFromSource)
        );
        let _client = admission
            .admit(Pool::Clients, client)
            .expect("another source");
        drop(held);
        admission
            .admit(Pool::Clients, attacker)
            .expect("places come back");
        assert_eq!(admission.refused(), 1);
    }

    #[test]
    fn unidentified_connections_have_a_small_pool_and_members_a_reserve() {
        // 64 clients: 16 unidentified at once; 16 per source: 8 unidentified each.
        let admission = Admission::new("test", policy(64, 16));
        let sources: Vec<IpAddr> = (2..=3)
            .map(|i| format!("127.0.0.{i}").parse().expect("ip"))
            .collect();
        let mut held = Vec::new();
        for source in &sources {
            for _ in 0..8 {
                held.push(admission.admit(Pool::Unidentified, *source).expect("place"));
            }
            assert_eq!(
                admission.admit(Pool::Unidentified, *source).err(),
                Some(Refusal::TooManyFromSource)
            );
        }
        let stranger: IpAddr = "127.0.0.9".parse().expect("ip");
        assert_eq!(
            admission.admit(Pool::Unidentified, stranger).err(),
            Some(Refusal::TooMany)
        );
        // A member's address gets in past the full pool.
        let member: IpAddr = "127.0.0.1".parse().expect("ip");
        admission.set_member_ips(vec![member]);
        let mut peer = admission
            .admit(Pool::Unidentified, member)
            .expect("reserve");
        // Identified as a peer, it leaves the unidentified pool.
        peer.move_to(Pool::Peers)
            .expect("peers are not capped by clients");
        assert_eq!(peer.pool(), Pool::Peers);
        // Clients identified from the pool take client places.
        let mut client = held.pop().expect("one");
        client.move_to(Pool::Clients).expect("client place");
        admission
            .admit(Pool::Unidentified, stranger)
            .expect("a place came free");
    }
}
