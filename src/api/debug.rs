//! Operator-only HTTP routes: who may call them, and the profiling routes.
//!
//! `/admin/*` and `/debug/*` are off unless their flag is on
//! (`--enable-fault-injection`, `--enable-debug`), and with `--admin-token`
//! they also need `Authorization: Bearer <token>`.
//!
//! - `GET /debug/pprof/profile?seconds=N` samples the CPU for N seconds (1 to
//!   300, default 30) at 99 Hz and answers a pprof protobuf profile (`go tool
//!   pprof`, pprof.me, Speedscope read it); `&format=flamegraph` answers an
//!   SVG flame graph instead.
//! - `GET /debug/pprof/heap` answers a heap profile (pprof protobuf, gzipped)
//!   of the memory in use, in a build with `--features heap-profiling`
//!   (jemalloc with sampling on); other builds say so.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use harmonydb_protocol::ErrorCode;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::error::ApiError;
use super::http::HttpState;

/// Longest CPU profile one request may ask for.
const PROFILE_SECONDS_MAX: u64 = 300;

/// CPU profile length when the request names none (as Go's pprof).
const PROFILE_SECONDS_DEFAULT: u64 = 30;

/// Samples per second: not a multiple of common timer rates, so periodic
/// work is not always or never caught.
const PROFILE_FREQUENCY_HZ: i32 = 99;

/// One profile at a time: the CPU profiler is process-wide, and it must not
/// unwind while jemalloc's heap sampler does (both use libgcc's unwinder).
static PROFILER: Mutex<()> = Mutex::const_new(());

/// Who may call the operator routes.
#[derive(Clone, Debug, Default)]
pub struct AdminAccess {
    /// Whether `/debug/*` is served at all.
    pub debug_enabled: bool,
    /// The bearer token `/admin/*` and `/debug/*` require, if any.
    pub token: Option<String>,
}

impl AdminAccess {
    /// Refuses a request without the right bearer token, when one is set.
    pub fn authorize(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let given = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match given {
            Some(given) if same_secret(given.trim().as_bytes(), expected.as_bytes()) => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the bearer token is not this node's admin token",
            )),
            None => Err(ApiError::new(
                ErrorCode::Unauthorized,
                "this route needs an Authorization: Bearer <admin token> header",
            )),
        }
    }

    /// Refuses `/debug/*` when it is off, then checks the token.
    pub fn authorize_debug(&self, request: &HttpRequest) -> Result<(), ApiError> {
        if !self.debug_enabled {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "debug routes are disabled; start the node with --enable-debug",
            ));
        }
        self.authorize(request)
    }
}

/// Compares a secret in time that does not depend on where they differ, so
/// response times don't reveal the token a byte at a time.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Query of `/debug/pprof/profile`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileQuery {
    /// How long to sample.
    seconds: Option<u64>,
    /// `pprof` (default) or `flamegraph`.
    format: Option<String>,
}

/// `GET /debug/pprof/profile`.
pub async fn cpu_profile(
    state: web::Data<HttpState>,
    request: HttpRequest,
    query: web::Query<ProfileQuery>,
) -> Result<HttpResponse, ApiError> {
    state.access.authorize_debug(&request)?;
    let seconds = query.seconds.unwrap_or(PROFILE_SECONDS_DEFAULT);
    if !(1..=PROFILE_SECONDS_MAX).contains(&seconds) {
        return Err(ApiError::bad_request(format!(
            "seconds={seconds} is outside 1..={PROFILE_SECONDS_MAX}"
        )));
    }
    let flamegraph = match query.format.as_deref() {
        None | Some("pprof") | Some("proto") => false,
        Some("flamegraph") | Some("svg") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format={other:?} is not known; use pprof or flamegraph"
            )))
        }
    };
    let Ok(_held) = PROFILER.try_lock() else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "another profile is being taken on this node; try again when it ends",
        ));
    };
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(PROFILE_FREQUENCY_HZ)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot start the CPU profiler: {e}"),
            )
        })?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // Symbolizing takes a while and blocks: off the async workers.
    let rendered = web::block(move || render_profile(guard, flamegraph))
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("profile rendering stopped: {e}"),
            )
        })??;
    Ok(if flamegraph {
        HttpResponse::Ok()
            .content_type("image/svg+xml")
            .body(rendered)
    } else {
        HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((
                "Content-Disposition",
                "attachment; filename=\"harmonydb-cpu.pb\"",
            ))
            .body(rendered)
    })
}

/// The sampled profile as pprof protobuf or an SVG flame graph.
fn render_profile(
    guard: pprof::ProfilerGuard<'static>,
    flamegraph: bool,
) -> Result<Vec<u8>, ApiError> {
    let failed = |e: pprof::Error| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot build the CPU profile: {e}"),
        )
    };
    let report = guard.report().build().map_err(failed)?;
    drop(guard);
    if flamegraph {
        let mut svg = Vec::new();
        report.flamegraph(&mut svg).map_err(failed)?;
        Ok(svg)
    } else {
        use pprof::protos::Message;
        Ok(report.pprof().map_err(failed)?.encode_to_vec())
    }
}

/// `GET /debug/pprof/heap`.
pub async fn heap_profile(
    state: web::Data<HttpState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    state.access.authorize_debug(&request)?;
    let Ok(_held) = PROFILER.try_lock() else {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "another profile is being taken on this node; try again when it ends",
        ));
    };
    let profile = heap::dump().await?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "Content-Disposition",
            "attachment; filename=\"harmonydb-heap.pb.gz\"",
        ))
        .body(profile))
}

#[cfg(feature = "heap-profiling")]
mod heap {
    use super::*;

    /// The heap in use, as gzipped pprof protobuf, from jemalloc's samples.
    pub async fn dump() -> Result<Vec<u8>, ApiError> {
        let Some(control) = jemalloc_pprof::PROF_CTL.as_ref() else {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "jemalloc's heap profiling is off (malloc_conf has no prof:true)",
            ));
        };
        let mut control = control.lock().await;
        if !control.activated() {
            control.activate().map_err(|e| {
                ApiError::new(
                    ErrorCode::Internal,
                    format!("cannot start heap sampling: {e}"),
                )
            })?;
        }
        control.dump_pprof().map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot dump the heap profile: {e}"),
            )
        })
    }
}

#[cfg(not(feature = "heap-profiling"))]
mod heap {
    use super::*;

    /// This build has no heap sampler to read.
    pub async fn dump() -> Result<Vec<u8>, ApiError> {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "heap profiles need a build with jemalloc's sampling: cargo build --release --features heap-profiling",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3creT", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }
}
