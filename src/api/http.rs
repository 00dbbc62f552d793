//! The HTTP JSON API (actix-web): `/kv/{key}`, `/kv?prefix=...`, `/health`,
//! `/cluster`, `/metrics`, `/admin/fault` (only with
//! `--enable-fault-injection`) and `/debug/pprof/*` (only with
//! `--enable-debug`; see [`super::debug`]). Handlers translate JSON and query strings
//! into protocol requests for the [`Service`] (the same one the TCP API
//! uses, so forwarding and consistency behave the same) and its answers
//! back into JSON; every error goes through [`ApiError`].
//!
//! Reads take `consistency=linearizable|lease|stale`; every key-value route
//! takes `forward=false` to get `not_leader` (421) instead of forwarding.

use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Next};
use actix_web::{web, App, HttpRequest, HttpResponse};
use base64::Engine;
use harmonydb_actors::cluster::fault::Fault;
use harmonydb_actors::observe;
use harmonydb_protocol::{Consistency, ErrorCode, Request, Response, Staleness};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument;

use super::debug::{cpu_profile, heap_profile, AdminAccess};
use super::error::ApiError;
use super::http_server::{GuardState, HeadRejection, REJECTED_ROUTE};
use super::service::Service;

/// JSON escapes can take six bytes per value byte (`\u0000`), so the body
/// limit leaves room for that beyond the value limit, plus the other fields.
const JSON_OVERHEAD_FACTOR: usize = 6;
const JSON_OVERHEAD_BYTES: usize = 64 * 1024;

/// Every route pattern and method the app serves (the `route` and `method`
/// labels of the request metrics), so their series exist from the start.
pub const HTTP_ROUTES: &[(&str, &str)] = &[
    ("/kv", "GET"),
    ("/kv/{key:.*}", "GET"),
    ("/kv/{key:.*}", "PUT"),
    ("/kv/{key:.*}", "DELETE"),
    ("/health", "GET"),
    ("/ready", "GET"),
    ("/cluster", "GET"),
    ("/cluster/leader", "POST"),
    ("/cluster/members", "POST"),
    ("/cluster/members/{id}", "DELETE"),
    ("/cluster/members/{id}/promote", "POST"),
    ("/admin/fault", "GET"),
    ("/admin/fault", "POST"),
    ("/debug/pprof/profile", "GET"),
    ("/debug/pprof/heap", "GET"),
    ("/metrics", "GET"),
];

/// What every handler needs.
#[derive(Clone)]
pub struct HttpState {
    /// The node's request service.
    pub service: Service,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Who may call `/admin/*` and `/debug/*`.
    pub access: AdminAccess,
}

/// Builds the application: routes, extractor error handlers and the metrics middleware.
pub fn app(
    state: HttpState,
) -> App<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let json_limit_bytes =
        state.service.value_size_max_bytes() * JSON_OVERHEAD_FACTOR + JSON_OVERHEAD_BYTES;
    App::new()
        .app_data(web::Data::new(state))
        .app_data(
            web::JsonConfig::default()
                .limit(json_limit_bytes)
                .error_handler(json_error),
        )
        .app_data(web::QueryConfig::default().error_handler(query_error))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .app_data(web::PayloadConfig::default().limit(json_limit_bytes))
        // Any error answer not already in the JSON error format (actix's
        // own, from an extractor or a limit) is rewritten into it.
        .wrap(ErrorHandlers::new().default_handler(json_error_body))
        .wrap(actix_web::middleware::from_fn(record_metrics))
        .service(
            web::resource("/kv")
                .route(web::get().to(scan))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/kv/{key:.*}")
                .route(web::get().to(get))
                .route(web::put().to(put))
                .route(web::delete().to(delete))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/health")
                .route(web::get().to(health))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/ready")
                .route(web::get().to(ready))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/cluster")
                .route(web::get().to(cluster))
                .default_service(web::to(method_not_allowed)),
        )
        .service(web::resource(REJECTED_ROUTE).to(rejected))
        .service(
            web::resource("/cluster/leader")
                .route(web::post().to(transfer_leader))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/cluster/members")
                .route(web::post().to(add_member))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/cluster/members/{id}")
                .route(web::delete().to(remove_member))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/cluster/members/{id}/promote")
                .route(web::post().to(promote_member))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/admin/fault")
                .route(web::get().to(admin_faults))
                .route(web::post().to(admin_fault))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/debug/pprof/profile")
                .route(web::get().to(cpu_profile))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/debug/pprof/heap")
                .route(web::get().to(heap_profile))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/metrics")
                .route(web::get().to(metrics))
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(no_route))
}

/// Body of `PUT /kv/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    value: Option<String>,
    value_base64: Option<String>,
    expected_version: Option<u64>,
}

/// Query of `DELETE /kv/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    expected_version: Option<u64>,
    forward: Option<bool>,
}

/// Query of `PUT /kv/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    forward: Option<bool>,
}

/// Query of `GET /kv/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    consistency: Option<String>,
    forward: Option<bool>,
}

/// Body of `POST /admin/fault`: the fault on this node's traffic to `peers`
/// (all false/zero clears it). Also the shape `GET /admin/fault` lists.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    #[serde(default)]
    peers: Vec<u64>,
    #[serde(default)]
    drop: bool,
    #[serde(default)]
    loss_percent: u8,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    delay_ms: u64,
    /// The WAL's next this many syncs fail (the node then restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wal_sync_failures: Option<u32>,
    /// Every WAL sync waits this long first (a slow disk; 0 clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wal_sync_delay_ms: Option<u64>,
    /// Cut the node's power at the WAL's next sync: what it wrote since the
    /// last sync is lost and the process ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    power_cut: bool,
}

impl FaultBody {
    fn new(peers: Vec<u64>, fault: &Fault) -> Self {
        FaultBody {
            peers,
            drop: fault.drop,
            loss_percent: fault.loss_percent,
            duplicate: fault.duplicate,
            delay_ms: u64::try_from(fault.delay.as_millis()).unwrap_or(u64::MAX),
            wal_sync_failures: None,
            wal_sync_delay_ms: None,
            power_cut: false,
        }
    }
}

fn consistency(text: Option<&str>) -> Result<Option<Consistency>, ApiError> {
    text.map(|t| t.parse().map_err(ApiError::bad_request))
        .transpose()
}

/// The key of `/kv/{key}`: the raw path after `/kv/`, percent-decoded to
/// bytes. actix's own path decoding replaces invalid UTF-8 silently, which
/// would store a different key than the client named, so it is not used here.
fn path_key(request: &HttpRequest) -> Result<Vec<u8>, ApiError> {
    let raw = request
        .uri()
        .path()
        .strip_prefix("/kv/")
        .unwrap_or_default();
    percent_decode_strict(raw).map_err(|message| ApiError::new(ErrorCode::InvalidKey, message))
}

/// Percent-decodes, refusing a `%` that is not followed by two hex digits.
fn percent_decode_strict(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    for (at, byte) in bytes.iter().enumerate() {
        let escape_ok = bytes
            .get(at + 1..at + 3)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if *byte == b'%' && !escape_ok {
            return Err(format!("invalid percent-escape at byte {at} of {text:?}"));
        }
    }
    Ok(percent_encoding::percent_decode(bytes).collect())
}

/// A scan's query string: the request it asks for, and `forward`.
#[derive(Debug)]
struct ScanQuery {
    request: Request,
    forward: Option<bool>,
}

/// Parses `prefix`, `start`, `end`, `limit`, `consistency` and `forward`
/// from a scan's query string into the scan request (the service applies
/// the default limit). Values are percent-decoded to bytes (`+` is a
/// space), like keys in paths.
fn scan_query(query: &str) -> Result<ScanQuery, ApiError> {
    let (mut prefix, mut start, mut end, mut limit, mut consistency) =
        (Vec::new(), None, None, None, None);
    let mut forward = None;
    let mut seen = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if seen.contains(&name) {
            return Err(ApiError::bad_request(format!(
                "query parameter {name:?} is given twice"
            )));
        }
        seen.push(name);
        let value = percent_decode_strict(&value.replace('+', " "))
            .map_err(|e| ApiError::bad_request(format!("query parameter {name:?}: {e}")))?;
        match name {
            "prefix" => prefix = value,
            "start" => start = Some(value),
            "end" => end = Some(value),
            "consistency" => {
                consistency = self::consistency(Some(&String::from_utf8_lossy(&value)))?
            }
            "forward" => {
                forward = Some(match value.as_slice() {
                    b"true" => true,
                    b"false" => false,
                    _ => {
                        return Err(ApiError::bad_request(
                            "forward must be true or false".to_string(),
                        ))
                    }
                })
            }
            "limit" => {
                limit = Some(
                    std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse::<u32>().ok())
                        .ok_or_else(|| {
                            ApiError::bad_request(format!(
                                "limit {:?} is not a whole number",
                                value.escape_ascii().to_string()
                            ))
                        })?,
                )
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; expected prefix, start, end, limit, consistency or forward"
                )))
            }
        }
    }
    Ok(ScanQuery {
        request: Request::Scan {
            prefix,
            start,
            end,
            limit,
            consistency,
        },
        forward,
    })
}

/// Adds `bytes` to `object` as `name: "text"` when they are UTF-8 and as
/// `name_base64: "..."` otherwise, so text stays readable and binary survives.
fn insert_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_string(), Value::from(text)),
        Err(_) => object.insert(
            format!("{name}_base64"),
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    };
}

/// `{"key", "value", "version"}` of one key.
fn key_value_json(key: &[u8], value: &[u8], version: u64) -> Value {
    let mut object = Map::new();
    insert_bytes(&mut object, "key", key);
    insert_bytes(&mut object, "value", value);
    object.insert("version".into(), Value::from(version));
    Value::Object(object)
}

/// `{"key", NAME: number}`.
fn key_number_json(key: &[u8], name: &str, number: u64) -> Value {
    let mut object = Map::new();
    insert_bytes(&mut object, "key", key);
    object.insert(name.into(), Value::from(number));
    Value::Object(object)
}

async fn get(
    state: web::Data<HttpState>,
    request: HttpRequest,
    query: web::Query<ReadQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = path_key(&request)?;
    let request = Request::Get {
        key,
        consistency: consistency(query.consistency.as_deref())?,
    };
    call(&state, request, query.forward).await
}

async fn put(
    state: web::Data<HttpState>,
    request: HttpRequest,
    query: web::Query<WriteQuery>,
    body: web::Json<PutBody>,
) -> Result<HttpResponse, ApiError> {
    let key = path_key(&request)?;
    let body = body.into_inner();
    let value = match (body.value, body.value_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("value_base64 is not valid base64: {e}")))?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either value or value_base64, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "the body needs a value or value_base64 field",
            ))
        }
    };
    let request = Request::Put {
        key,
        value,
        expected_version: body.expected_version,
    };
    call(&state, request, query.forward).await
}

async fn delete(
    state: web::Data<HttpState>,
    request: HttpRequest,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = path_key(&request)?;
    let request = Request::Delete {
        key,
        expected_version: query.expected_version,
    };
    call(&state, request, query.forward).await
}

async fn scan(state: web::Data<HttpState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let query = scan_query(request.query_string())?;
    call(&state, query.request, query.forward).await
}

async fn health(state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    call(&state, Request::Health, None).await
}

async fn ready(state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    call(&state, Request::Ready, None).await
}

/// A request whose head was refused before actix read it (see
/// [`super::http_server`]): its query says why.
async fn rejected(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(HeadRejection::error_for_query(request.query_string()))
}

async fn cluster(state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    call(&state, Request::ClusterStatus, None).await
}

/// Body of `POST /cluster/leader`: the voter to lead next; empty or `{}`
/// lets the leader choose the most caught-up voter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    #[serde(default)]
    target: Option<u64>,
}

async fn transfer_leader(
    state: web::Data<HttpState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    // The body is optional here: an empty one means "the leader chooses".
    let body: TransferBody = if body.iter().all(u8::is_ascii_whitespace) {
        TransferBody::default()
    } else {
        json_body(&request, &body, "{\"target\": <node id>} or nothing")?
    };
    call(
        &state,
        Request::TransferLeader {
            target: body.target,
        },
        None,
    )
    .await
}

/// A JSON body read by hand (where it is optional), under the same rule
/// as the `Json` extractor's: `Content-Type: application/json` (or a
/// `+json` type), else 415; JSON of the expected shape, else 400.
fn json_body<T: serde::de::DeserializeOwned>(
    request: &HttpRequest,
    body: &[u8],
    expected: &str,
) -> Result<T, ApiError> {
    let is_json = actix_web::HttpMessage::mime_type(request)
        .ok()
        .flatten()
        .is_some_and(|mime| {
            mime.subtype() == actix_web::mime::JSON || mime.suffix() == Some(actix_web::mime::JSON)
        });
    if !is_json {
        return Err(unsupported_media_type());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("malformed JSON body: {e}; expected {expected}"))
    })
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        ErrorCode::UnsupportedMediaType,
        "the body must be JSON: send Content-Type: application/json",
    )
}

/// Body of `POST /cluster/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMemberBody {
    id: u64,
    address: String,
}

async fn add_member(
    state: web::Data<HttpState>,
    body: web::Json<AddMemberBody>,
) -> Result<HttpResponse, ApiError> {
    let AddMemberBody { id, address } = body.into_inner();
    call(&state, Request::AddMember { id, address }, None).await
}

/// The member id in a `/cluster/members/{id}` path.
fn member_id(path: &str) -> Result<u64, ApiError> {
    match path.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "member id {path:?} is not a node id (a whole number from 1)"
        ))),
    }
}

async fn promote_member(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = member_id(&path)?;
    call(&state, Request::PromoteMember { id }, None).await
}

async fn remove_member(
    state: web::Data<HttpState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = member_id(&path)?;
    call(&state, Request::RemoveMember { id }, None).await
}

async fn admin_fault(
    state: web::Data<HttpState>,
    request: HttpRequest,
    body: web::Json<FaultBody>,
) -> Result<HttpResponse, ApiError> {
    state.access.authorize(&request)?;
    state.service.set_wal_faults(
        body.wal_sync_failures,
        body.wal_sync_delay_ms,
        body.power_cut,
    )?;
    let fault = Fault {
        drop: body.drop,
        loss_percent: body.loss_percent,
        duplicate: body.duplicate,
        delay: Duration::from_millis(body.delay_ms),
    };
    state.service.set_fault(&body.peers, fault)?;
    let mut answer = FaultBody::new(body.peers.clone(), &fault);
    answer.wal_sync_failures = body.wal_sync_failures;
    answer.wal_sync_delay_ms = body.wal_sync_delay_ms;
    answer.power_cut = body.power_cut;
    Ok(HttpResponse::Ok().json(answer))
}

async fn admin_faults(
    state: web::Data<HttpState>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    state.access.authorize(&request)?;
    let faults: Vec<FaultBody> = state
        .service
        .faults()?
        .iter()
        .map(|(peer, fault)| FaultBody::new(vec![*peer], fault))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "faults": faults })))
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    let members = state.service.member_ids();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::telemetry::render_metrics(
            &state.metrics,
            state.service.node_id(),
            &members,
        ))
}

/// Adds a stale read's `staleness` to its JSON answer.
fn with_staleness(mut json: Value, staleness: Option<Staleness>) -> Value {
    if let (Some(staleness), Value::Object(object)) = (staleness, &mut json) {
        object.insert("staleness".into(), serde_json::json!(staleness));
    }
    json
}

/// Runs a request through the service and renders its answer as JSON.
async fn call(
    state: &HttpState,
    request: Request,
    forward: Option<bool>,
) -> Result<HttpResponse, ApiError> {
    let no_forward = forward == Some(false);
    let json = match state.service.call(request, no_forward).await? {
        Response::Value {
            key,
            value,
            version,
            staleness,
        } => with_staleness(key_value_json(&key, &value, version), staleness),
        Response::Written { key, version } => key_number_json(&key, "version", version),
        Response::Deleted {
            key,
            deleted_version,
        } => key_number_json(&key, "deleted_version", deleted_version),
        Response::Items {
            items,
            more,
            staleness,
        } => {
            let items: Vec<Value> = items
                .iter()
                .map(|item| key_value_json(&item.key, &item.value, item.version))
                .collect();
            with_staleness(
                serde_json::json!({ "items": items, "more": more }),
                staleness,
            )
        }
        Response::Health { applied_index } => serde_json::json!({
            "status": "ok",
            "applied_index": applied_index,
        }),
        Response::ClusterStatus(status) => serde_json::json!(status),
        Response::Ready(readiness) => {
            let mut json = serde_json::json!(readiness);
            if let Value::Object(object) = &mut json {
                object.insert("status".into(), Value::from("ready"));
            }
            json
        }
        Response::LeaderTransferred { leader, term } => serde_json::json!({
            "leader": leader,
            "term": term,
        }),
        Response::Membership(membership) => serde_json::json!(membership),
        // Node-to-node answers, and errors, which the service gives as
        // `Err`: HTTP never gets them here.
        Response::SnapshotReady { .. }
        | Response::SnapshotChunk { .. }
        | Response::Error { .. } => {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "an answer HTTP never asks for",
            ))
        }
    };
    Ok(HttpResponse::Ok().json(json))
}

async fn method_not_allowed(request: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}", request.method(), request.path()),
    )
    .error_response()
}

async fn no_route(request: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", request.method(), request.path()),
    )
    .error_response()
}

/// The error for a body the connection's guard cut short (late or
/// malformed), if it did.
fn cut_body_error(request: &HttpRequest) -> Option<ApiError> {
    request
        .conn_data::<GuardState>()
        .and_then(GuardState::body_error)
}

fn json_error(error: JsonPayloadError, request: &HttpRequest) -> actix_web::Error {
    if matches!(error, JsonPayloadError::Payload(_)) {
        if let Some(api) = cut_body_error(request) {
            return api.into();
        }
    }
    let api = match &error {
        JsonPayloadError::ContentType => unsupported_media_type(),
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("body of {length} bytes exceeds the limit of {limit} bytes"),
        ),
        JsonPayloadError::Overflow { limit } => ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("body exceeds the limit of {limit} bytes"),
        ),
        JsonPayloadError::Deserialize(e) => {
            ApiError::bad_request(format!("malformed JSON body: {e}"))
        }
        other => ApiError::bad_request(format!("unreadable body: {other}")),
    };
    api.into()
}

fn query_error(error: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("invalid query string: {error}")).into()
}

fn path_error(error: PathError, request: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("invalid path {}: {error}", request.path())).into()
}

/// The code an error status gets when something other than our handlers
/// answered with it.
fn code_for_status(status: actix_web::http::StatusCode) -> ErrorCode {
    match status.as_u16() {
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::RequestTimeout,
        413 => ErrorCode::ValueTooLarge,
        414 => ErrorCode::UriTooLong,
        415 => ErrorCode::UnsupportedMediaType,
        431 => ErrorCode::HeadersTooLarge,
        503 => ErrorCode::Unavailable,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    }
}

/// Rewrites an error answer that is not in the JSON error format (actix's
/// plain-text ones) into it, keeping its status and its text as the message.
fn json_error_body<B: MessageBody + 'static>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = response
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json || !(response.status().is_client_error() || response.status().is_server_error()) {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let status = response.status();
    let (request, answer) = response.into_parts();
    // A body the guard cut short fails whatever extractor read it.
    if let Some(api) = cut_body_error(&request) {
        let json = actix_web::ResponseError::error_response(&api);
        return Ok(ErrorHandlerResponse::Response(
            ServiceResponse::new(request, json).map_into_right_body(),
        ));
    }
    let text = answer
        .error()
        .map(ToString::to_string)
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("request refused")
                .to_lowercase()
        });
    let mut json =
        actix_web::ResponseError::error_response(&ApiError::new(code_for_status(status), text));
    *json.status_mut() = status;
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(request, json).map_into_right_body(),
    ))
}

/// Counts a request in flight until dropped, also when the request's future
/// is dropped before it completes (a client that disconnects).
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        metrics::gauge!("harmonydb_http_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("harmonydb_http_requests_in_flight").decrement(1.0);
    }
}

/// Counts and times every request by route pattern (not raw path, so keys
/// don't explode the label set), method and status; counts body bytes; and
/// runs it in a trace span, a child of the caller's `traceparent` if any.
async fn record_metrics(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = request.method().to_string();
    let received = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    metrics::counter!("harmonydb_http_received_bytes_total").increment(received);
    let span = observe::request_span(
        || {
            format!(
                "{method} {}",
                request.match_pattern().as_deref().unwrap_or("unmatched")
            )
        },
        request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok()),
    );
    let in_flight = InFlight::enter();
    let result = next.call(request).instrument(span).await;
    drop(in_flight);
    if let Ok(response) = &result {
        if let actix_web::body::BodySize::Sized(sent) = response.response().body().size() {
            metrics::counter!("harmonydb_http_sent_bytes_total").increment(sent);
        }
    }
    let (route, status) = match &result {
        Ok(response) => (
            response
                .request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string()),
            response.status().as_u16().to_string(),
        ),
        Err(error) => (
            "unmatched".to_string(),
            error.as_response_error().status_code().as_u16().to_string(),
        ),
    };
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("harmonydb_http_requests_total", &labels).increment(1);
    metrics::histogram!("harmonydb_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Actor;
    use actix_web::test as web_test;
    use std::collections::BTreeMap;

    use harmonydb_actors::cluster::members::MemberBook;
    use harmonydb_actors::kv::KvLimits;
    use harmonydb_actors::replica::wal_log::load;
    use harmonydb_actors::replica::RaftReplica;
    use harmonydb_actors::wal::{FsyncPolicy, Wal, WalOptions, WalWriter};
    use harmonydb_protocol::FRAME_SIZE_DEFAULT_MAX_BYTES;
    use harmonydb_raft::{PersistedState, Raft};

    use crate::api::service::FrontDoor;
    use crate::node::{raft_config, start_replica, ReplicaSettings};
    use harmonydb_actors::storage::buffer::{Policy, PoolConfig};

    fn metrics_handle() -> PrometheusHandle {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle()
    }

    /// The HTTP app over a one-member node in `dir`, and its replica. A macro
    /// because the app's service type can't be named here.
    macro_rules! one_member_app {
        ($dir:expr, $fault_injection:expr) => {{
            let (service, replica) = one_member_service($dir, $fault_injection);
            let app = web_test::init_service(super::app(HttpState {
                service,
                metrics: metrics_handle(),
                access: AdminAccess::default(),
            }))
            .await;
            (app, replica)
        }};
    }

    /// A one-member node's service over a WAL in `dir`.
    fn one_member_service(
        dir: &std::path::Path,
        fault_injection: bool,
    ) -> (Service, actix::Addr<RaftReplica>) {
        let (wal, _) = Wal::open(dir, WalOptions::default()).expect("open");
        let persisted = load(&wal, PersistedState::bootstrap([1])).expect("load");
        let raft =
            Raft::new(raft_config(1, FRAME_SIZE_DEFAULT_MAX_BYTES, 64), persisted).expect("core");
        let next_index = wal.last_index() + 1;
        let writer = WalWriter::new(wal, FsyncPolicy::Never).start();
        let settings = ReplicaSettings {
            node_id: 1,
            members: MemberBook::new(BTreeMap::from([(1, "127.0.0.1:1".to_string())])),
            tick: Duration::from_millis(10),
            limits: KvLimits {
                value_size_max_bytes: 16,
                ..KvLimits::default()
            },
            frame_size_max_bytes: FRAME_SIZE_DEFAULT_MAX_BYTES,
            data_dir: dir.to_path_buf(),
            pool: PoolConfig::with_megabytes(8, Policy::Lru2),
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_policy: Default::default(),
            disk: harmonydb_actors::disk::DiskMonitor::unlimited(dir),
            rpc: harmonydb_actors::cluster::rpc::RpcSettings::default(),
        };
        let parts = start_replica(&settings, raft, writer, next_index).expect("start");
        let service = Service::new(
            &parts,
            FrontDoor {
                fault_injection,
                ready_lag_max_entries: 1000,
                wal_faults: Default::default(),
            },
        );
        (service, parts.replica)
    }

    #[actix_web::test]
    async fn membership_changes_are_checked_and_answered_with_the_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, _replica) = one_member_app!(dir.path(), false);
        // The one member elects itself; wait for it to lead.
        let mut added = None;
        for _ in 0..200 {
            let response = web_test::call_service(
                &app,
                web_test::TestRequest::post()
                    .uri("/cluster/members")
                    .set_json(serde_json::json!({"id": 2, "address": "127.0.0.1:9"}))
                    .to_request(),
            )
            .await;
            if response.status().is_success() {
                added = Some(web_test::read_body_json::<Value, _>(response).await);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let added = added.expect("node 2 added as a learner");
        assert_eq!(added["voters"], serde_json::json!([1]));
        assert_eq!(added["learners"], serde_json::json!([2]));
        assert_eq!(added["addresses"]["2"], "127.0.0.1:9");
        let call = |method: actix_web::http::Method, uri: &str, body: Option<Value>| {
            let mut request = web_test::TestRequest::default().method(method).uri(uri);
            if let Some(body) = body {
                request = request.set_json(body);
            }
            web_test::call_service(&app, request.to_request())
        };
        use actix_web::http::Method;
        let cases = [
            // Node 2 never answered: it can't vote yet.
            (
                Method::POST,
                "/cluster/members/2/promote",
                None,
                409,
                "not caught up",
            ),
            (
                Method::DELETE,
                "/cluster/members/1",
                None,
                400,
                "last voter",
            ),
            (
                Method::DELETE,
                "/cluster/members/9",
                None,
                404,
                "not a member",
            ),
            (
                Method::DELETE,
                "/cluster/members/x",
                None,
                400,
                "not a node id",
            ),
            (
                Method::POST,
                "/cluster/members",
                Some(serde_json::json!({"id": 2, "address": "127.0.0.1:10"})),
                409,
                "already a member",
            ),
            (
                Method::POST,
                "/cluster/members",
                Some(serde_json::json!({"id": 3, "address": "no-port"})),
                400,
                "not host:port",
            ),
        ];
        for (method, uri, body, status, complaint) in cases {
            let response = call(method.clone(), uri, body).await;
            assert_eq!(response.status().as_u16(), status, "{method} {uri}");
            let body: Value = web_test::read_body_json(response).await;
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(complaint), "{method} {uri}: {message}");
        }
        // Promoting a voter is already done; an address nobody else can
        // reach is refused.
        let promoted = call(Method::POST, "/cluster/members/1/promote", None).await;
        assert_eq!(promoted.status().as_u16(), 200);
        let wildcard = call(
            Method::POST,
            "/cluster/members",
            Some(serde_json::json!({"id": 3, "address": "0.0.0.0:7070"})),
        )
        .await;
        assert_eq!(wildcard.status().as_u16(), 400);
        // Asking again for the same node at the same address is not an error.
        let again = call(
            Method::POST,
            "/cluster/members",
            Some(serde_json::json!({"id": 2, "address": "127.0.0.1:9"})),
        )
        .await;
        assert_eq!(again.status().as_u16(), 200);
        let removed = call(Method::DELETE, "/cluster/members/2", None).await;
        assert_eq!(removed.status().as_u16(), 200);
        let removed: Value = web_test::read_body_json(removed).await;
        assert_eq!(removed["learners"], serde_json::json!([]));
    }

    #[actix_web::test]
    async fn a_stopped_store_answers_503_shutting_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, replica) = one_member_app!(dir.path(), false);
        replica
            .send(harmonydb_actors::kv::BeginShutdown)
            .await
            .expect("shutdown");
        let response =
            web_test::call_service(&app, web_test::TestRequest::get().uri("/kv/a").to_request())
                .await;
        assert_eq!(response.status().as_u16(), 503);
        let body: serde_json::Value = web_test::read_body_json(response).await;
        assert_eq!(body["error"]["code"], "shutting_down");
        let health = web_test::call_service(
            &app,
            web_test::TestRequest::get().uri("/health").to_request(),
        )
        .await;
        assert_eq!(health.status().as_u16(), 503);
    }

    #[actix_web::test]
    async fn binary_values_come_back_as_base64_and_text_as_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, _) = one_member_app!(dir.path(), false);
        let put = web_test::TestRequest::put()
            .uri("/kv/bin")
            .insert_header(actix_web::http::header::ContentType::json())
            .set_payload(r#"{"value_base64": "AP8B"}"#)
            .to_request();
        assert_eq!(
            web_test::call_service(&app, put).await.status().as_u16(),
            200
        );
        let body: serde_json::Value = web_test::call_and_read_body_json(
            &app,
            web_test::TestRequest::get().uri("/kv/bin").to_request(),
        )
        .await;
        assert_eq!(body["value_base64"], "AP8B");
        assert!(body.get("value").is_none());
        assert_eq!(body["key"], "bin");
    }

    #[actix_web::test]
    async fn cluster_status_stale_reads_and_the_fault_route() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, _) = one_member_app!(dir.path(), false);
        let put = web_test::TestRequest::put()
            .uri("/kv/k")
            .insert_header(actix_web::http::header::ContentType::json())
            .set_payload(r#"{"value": "v"}"#)
            .to_request();
        assert_eq!(
            web_test::call_service(&app, put).await.status().as_u16(),
            200
        );
        let status: serde_json::Value = web_test::call_and_read_body_json(
            &app,
            web_test::TestRequest::get().uri("/cluster").to_request(),
        )
        .await;
        assert_eq!(status["node_id"], 1);
        assert_eq!(status["role"], "leader");
        assert_eq!(status["leader"], 1);
        assert_eq!(status["members"][0]["lag"], 0);
        assert!(status["commit_index"].as_u64() >= Some(2), "{status}");

        let stale: serde_json::Value = web_test::call_and_read_body_json(
            &app,
            web_test::TestRequest::get()
                .uri("/kv/k?consistency=stale")
                .to_request(),
        )
        .await;
        assert_eq!(stale["value"], "v");
        assert_eq!(stale["staleness"]["node_id"], 1);
        assert_eq!(stale["staleness"]["leader_contact_ms"], 0);
        let fresh: serde_json::Value = web_test::call_and_read_body_json(
            &app,
            web_test::TestRequest::get()
                .uri("/kv/k?consistency=lease")
                .to_request(),
        )
        .await;
        assert_eq!(fresh["value"], "v");
        assert!(fresh.get("staleness").is_none());
        let bad = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/kv/k?consistency=eventual")
                .to_request(),
        )
        .await;
        assert_eq!(bad.status().as_u16(), 400);

        let fault = || {
            web_test::TestRequest::post()
                .uri("/admin/fault")
                .insert_header(actix_web::http::header::ContentType::json())
                .set_payload(r#"{"peers": [2], "drop": true}"#)
                .to_request()
        };
        let refused = web_test::call_service(&app, fault()).await;
        assert_eq!(refused.status().as_u16(), 403);
        let body: serde_json::Value = web_test::read_body_json(refused).await;
        assert_eq!(body["error"]["code"], "forbidden");

        // With the flag, a peer that is not a member is still refused.
        let dir = tempfile::tempdir().expect("tempdir");
        let (with_faults, _) = one_member_app!(dir.path(), true);
        let unknown_peer = web_test::call_service(&with_faults, fault()).await;
        assert_eq!(unknown_peer.status().as_u16(), 400);
        let listed: serde_json::Value = web_test::call_and_read_body_json(
            &with_faults,
            web_test::TestRequest::get()
                .uri("/admin/fault")
                .to_request(),
        )
        .await;
        assert_eq!(listed, serde_json::json!({ "faults": [] }));
        let listing_refused = web_test::call_service(
            &app,
            web_test::TestRequest::get()
                .uri("/admin/fault")
                .to_request(),
        )
        .await;
        assert_eq!(listing_refused.status().as_u16(), 403);
        let unknown_field = web_test::call_service(
            &with_faults,
            web_test::TestRequest::post()
                .uri("/admin/fault")
                .insert_header(actix_web::http::header::ContentType::json())
                .set_payload(r#"{"peers": [], "cut": true}"#)
                .to_request(),
        )
        .await;
        assert_eq!(unknown_field.status().as_u16(), 400);
    }

    #[test]
    fn keys_and_scan_parameters_decode_to_exact_bytes() {
        assert_eq!(
            percent_decode_strict("a%2Fb%FF").expect("valid"),
            b"a/b\xff".to_vec()
        );
        assert!(percent_decode_strict("bad%G1").is_err());
        assert!(percent_decode_strict("cut%F").is_err());
        let scan = |query: &str| scan_query(query).map(|q| q.request);
        assert_eq!(
            scan("prefix=a%20b&start=x+y&limit=5").expect("valid"),
            Request::Scan {
                prefix: b"a b".to_vec(),
                start: Some(b"x y".to_vec()),
                end: None,
                limit: Some(5),
                consistency: None,
            }
        );
        assert!(scan_query("limit=5&limit=6").is_err());
        assert!(scan_query("colour=blue").is_err());
        assert!(scan_query("limit=-1").is_err());
        // No limit given: the service applies its default, once.
        assert!(matches!(
            scan("").expect("empty"),
            Request::Scan { limit: None, .. }
        ));
        let query = scan_query("consistency=stale&forward=false").expect("valid");
        assert_eq!(query.request.consistency(), Some(Consistency::Stale));
        assert_eq!(query.forward, Some(false));
        assert!(scan_query("consistency=eventual").is_err());
        assert!(scan_query("forward=maybe").is_err());
    }
}
