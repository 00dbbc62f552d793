//! The HTTP JSON API (actix-web): `/kv/{key}`, `/kv?prefix=...`, `/health`, `/metrics`.
//! Handlers only translate between JSON and [`KvOp`]/[`KvReply`]; every error
//! goes through [`ApiError`], so the JSON error shape is the same everywhere.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpRequest, HttpResponse};
use base64::Engine;
use harmonydb_actors::kv::{KvHandle, KvOp, KvReply, ScanRange, Versioned, WriteOutcome};
use harmonydb_protocol::ErrorCode;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;

/// Items a scan returns when the request gives no limit.
pub const SCAN_LIMIT_DEFAULT: usize = 1000;

/// JSON escapes can take six bytes per value byte (`\u0000`), so the body
/// limit leaves room for that beyond the value limit, plus the other fields.
const JSON_OVERHEAD_FACTOR: usize = 6;
const JSON_OVERHEAD_BYTES: usize = 64 * 1024;

/// What every handler needs.
#[derive(Clone)]
pub struct HttpState {
    /// The KV store.
    pub kv: KvHandle,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
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
    let json_limit_bytes = state.kv.limits().value_size_max_bytes * JSON_OVERHEAD_FACTOR + JSON_OVERHEAD_BYTES;
    App::new()
        .app_data(web::Data::new(state))
        .app_data(web::JsonConfig::default().limit(json_limit_bytes).error_handler(json_error))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .app_data(web::QueryConfig::default().error_handler(query_error))
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
}

/// Query of `GET /kv`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanQuery {
    #[serde(default)]
    prefix: String,
    start: Option<String>,
    end: Option<String>,
    limit: Option<usize>,
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

async fn get(state: web::Data<HttpState>, key: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner().into_bytes();
    let reply = call(&state, KvOp::Get { key: key.clone() }, &key).await?;
    let KvReply::Value(Versioned { value, version }) = reply else {
        return Err(unexpected(&reply));
    };
    Ok(HttpResponse::Ok().json(key_value_json(&key, &value, version)))
}

async fn put(
    state: web::Data<HttpState>,
    key: web::Path<String>,
    body: web::Json<PutBody>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner().into_bytes();
    let body = body.into_inner();
    let value = match (body.value, body.value_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("value_base64 is not valid base64: {e}")))?,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give either value or value_base64, not both"))
        }
        (None, None) => return Err(ApiError::bad_request("the body needs a value or value_base64 field")),
    };
    let op = KvOp::Put {
        key: key.clone(),
        value,
        expected_version: body.expected_version,
    };
    match call(&state, op, &key).await? {
        KvReply::Written(WriteOutcome::Written { version }) => {
            Ok(HttpResponse::Ok().json(key_number_json(&key, "version", version)))
        }
        other => Err(unexpected(&other)),
    }
}

async fn delete(
    state: web::Data<HttpState>,
    key: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = key.into_inner().into_bytes();
    let op = KvOp::Delete {
        key: key.clone(),
        expected_version: query.expected_version,
    };
    match call(&state, op, &key).await? {
        KvReply::Written(WriteOutcome::Deleted { deleted_version }) => {
            Ok(HttpResponse::Ok().json(key_number_json(&key, "deleted_version", deleted_version)))
        }
        other => Err(unexpected(&other)),
    }
}

async fn scan(state: web::Data<HttpState>, query: web::Query<ScanQuery>) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let range = ScanRange {
        prefix: query.prefix.into_bytes(),
        start: query.start.map(String::into_bytes),
        end: query.end.map(String::into_bytes),
        limit: query.limit.unwrap_or(SCAN_LIMIT_DEFAULT),
    };
    let reply = call(&state, KvOp::Scan(range), &[]).await?;
    let KvReply::Page(page) = reply else {
        return Err(unexpected(&reply));
    };
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|item| key_value_json(&item.key, &item.versioned.value, item.versioned.version))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "more": page.more })))
}

async fn health(state: web::Data<HttpState>) -> Result<HttpResponse, ApiError> {
    match call(&state, KvOp::Health, &[]).await? {
        KvReply::Healthy { applied_index } => Ok(HttpResponse::Ok().json(serde_json::json!({
            "status": "ok",
            "applied_index": applied_index,
        }))),
        other => Err(unexpected(&other)),
    }
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn call(state: &HttpState, op: KvOp, key: &[u8]) -> Result<KvReply, ApiError> {
    let key = (!key.is_empty()).then_some(key);
    state.kv.call(op).await.map_err(|e| ApiError::from_kv(e, key))
}

fn unexpected(reply: &KvReply) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("the store answered with {reply:?}"))
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

fn json_error(error: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api = match &error {
        JsonPayloadError::ContentType => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "the body must be JSON: send Content-Type: application/json",
        ),
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("body of {length} bytes exceeds the limit of {limit} bytes"),
        ),
        JsonPayloadError::Overflow { limit } => ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("body exceeds the limit of {limit} bytes"),
        ),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request(format!("malformed JSON body: {e}")),
        other => ApiError::bad_request(format!("unreadable body: {other}")),
    };
    api.into()
}

fn path_error(error: PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::new(ErrorCode::InvalidKey, format!("the key in the path is not valid UTF-8 text: {error}")).into()
}

fn query_error(error: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("invalid query string: {error}")).into()
}

/// Counts and times every request by route pattern (not raw path, so keys
/// don't explode the label set), method and status.
async fn record_metrics(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = request.method().to_string();
    metrics::gauge!("harmonydb_http_requests_in_flight").increment(1.0);
    let result = next.call(request).await;
    metrics::gauge!("harmonydb_http_requests_in_flight").decrement(1.0);
    let (route, status) = match &result {
        Ok(response) => (
            response.request().match_pattern().unwrap_or_else(|| "unmatched".to_string()),
            response.status().as_u16().to_string(),
        ),
        Err(error) => ("unmatched".to_string(), error.as_response_error().status_code().as_u16().to_string()),
    };
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("harmonydb_http_requests_total", &labels).increment(1);
    metrics::histogram!("harmonydb_http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Actor;
    use actix_web::test;
    use harmonydb_actors::kv::{recover_state, KvLimits, KvStore};
    use harmonydb_actors::wal::{FsyncPolicy, Wal, WalOptions, WalWriter};

    fn metrics_handle() -> PrometheusHandle {
        metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder().handle()
    }

    fn store(dir: &std::path::Path) -> (KvHandle, actix::Addr<KvStore>) {
        let (wal, _) = Wal::open(dir, WalOptions::default()).expect("open");
        let state = recover_state(&wal).expect("recover");
        let writer = WalWriter::new(wal, FsyncPolicy::Never).start();
        let addr = KvStore::new(state, 1, writer).start();
        let limits = KvLimits {
            value_size_max_bytes: 16,
            ..KvLimits::default()
        };
        (KvHandle::new(addr.clone(), limits), addr)
    }

    #[actix_web::test]
    async fn a_stopped_store_answers_503_shutting_down() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kv, addr) = store(dir.path());
        addr.send(harmonydb_actors::kv::BeginShutdown).await.expect("shutdown");
        let app = test::init_service(app(HttpState {
            kv,
            metrics: metrics_handle(),
        }))
        .await;
        let response = test::call_service(&app, test::TestRequest::get().uri("/kv/a").to_request()).await;
        assert_eq!(response.status().as_u16(), 503);
        let body: serde_json::Value = test::read_body_json(response).await;
        assert_eq!(body["error"]["code"], "shutting_down");
        let health = test::call_service(&app, test::TestRequest::get().uri("/health").to_request()).await;
        assert_eq!(health.status().as_u16(), 503);
    }

    #[actix_web::test]
    async fn binary_values_come_back_as_base64_and_text_as_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (kv, _) = store(dir.path());
        let app = test::init_service(app(HttpState {
            kv,
            metrics: metrics_handle(),
        }))
        .await;
        let put = test::TestRequest::put()
            .uri("/kv/bin")
            .insert_header(actix_web::http::header::ContentType::json())
            .set_payload(r#"{"value_base64": "AP8B"}"#)
            .to_request();
        assert_eq!(test::call_service(&app, put).await.status().as_u16(), 200);
        let body: serde_json::Value =
            test::call_and_read_body_json(&app, test::TestRequest::get().uri("/kv/bin").to_request()).await;
        assert_eq!(body["value_base64"], "AP8B");
        assert!(body.get("value").is_none());
        assert_eq!(body["key"], "bin");
    }
}
