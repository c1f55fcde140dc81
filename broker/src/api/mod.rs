//! The management API on the HTTP listener (SPEC §8): `POST /api` with a JSON body, and
//! the legacy flat form (`GET /api?op=...`, or a form-encoded `POST /api`). Both go
//! through the one executor in [`ops`], which the real-time API over MQTT shares.
//!
//! - `GET /api`: the query string is the flat form.
//! - `POST /api` with `Content-Type: application/x-www-form-urlencoded`: the body's
//!   fields (and the query string's; the body wins) are the flat form, unless the body
//!   starts with `{` (then it is JSON: `curl -d '{...}'` sends that content type).
//! - `POST /api` otherwise: the body is JSON, whatever the content type; an empty body
//!   with a query string is the flat form.
//! - A body over [`MAX_BODY_BYTES`] is refused with 413 and a JSON `BADREQUEST`.

pub mod form;
pub mod ops;
pub mod webhooks;

use crate::router::Router;
use crate::server::Broker;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use tokio::sync::watch;

/// The largest request body accepted: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Serves the API (and MQTT over WebSocket on `/mqtt`) on `listener`, plain TCP or TLS,
/// until the broker shuts down (`shutdown` turns true): then it stops accepting and lets
/// open connections finish their current request. Connections hold the broker only
/// weakly, so that an idle keep-alive connection never keeps a stopped broker (and its
/// store's lock) alive; a WebSocket MQTT connection holds it like any MQTT connection.
pub async fn serve<L>(listener: L, broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    crate::server::websocket::Peer:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    use crate::server::websocket;
    let app = axum::Router::new()
        .route("/api", axum::routing::any(handle))
        .route("/mqtt", axum::routing::get(websocket::upgrade))
        .route(
            "/metrics",
            axum::routing::get(crate::metrics::serve_metrics),
        )
        .route("/health", axum::routing::get(crate::metrics::serve_health))
        .merge(crate::console::routes())
        .with_state(Arc::downgrade(&broker))
        .into_make_service_with_connect_info::<websocket::Peer>();
    drop(broker);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, "HTTP listener failed");
    }
}

async fn handle(State(broker): State<Weak<Broker>>, request: Request) -> Response {
    let Some(broker) = broker.upgrade() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            refusal("INTERNAL", "the broker is shutting down"),
        );
    };
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().unwrap_or("").to_string();
    let form_encoded = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let request = match parts.method {
        Method::GET => flat(query.as_bytes(), b""),
        Method::POST => {
            let body = match read_body(body).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let json_like = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            if form_encoded && !json_like {
                flat(query.as_bytes(), &body)
            } else if body.iter().all(u8::is_ascii_whitespace) && !query.is_empty() {
                flat(query.as_bytes(), b"")
            } else {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(value) => value,
                    Err(error) => {
                        return answer(
                            StatusCode::BAD_REQUEST,
                            refusal("BADREQUEST", &format!("the body is not JSON: {error}")),
                        )
                    }
                }
            }
        }
        _ => {
            return answer(
                StatusCode::METHOD_NOT_ALLOWED,
                refusal("BADREQUEST", "/api takes GET or POST"),
            )
        }
    };
    let (status, body) = ops::execute(&broker, ops::Caller::Backend, request).await;
    answer(status, body)
}

async fn read_body(body: Body) -> Result<bytes::Bytes, Response> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                refusal(
                    "BADREQUEST",
                    &format!("the body is larger than {MAX_BODY_BYTES} bytes or could not be read"),
                ),
            )
        })
}

/// The flat form: the query string's fields, then the body's (later ones win).
fn flat(query: &[u8], body: &[u8]) -> Value {
    let fields = form_urlencoded::parse(query)
        .chain(form_urlencoded::parse(body))
        .map(|(k, v)| (k.into_owned(), v.into_owned()));
    form::to_request(fields)
}

fn refusal(code: &str, message: &str) -> Value {
    json!({"op": null, "result": false, "error": code, "message": message})
}

fn answer(status: StatusCode, body: Value) -> Response {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// Routes a JSON notification the broker itself publishes: QoS 1, not retained.
pub fn publish_internal(router: &Router, topic: &str, payload: &Value) {
    use crate::codec::{MqttStr, Properties};
    let properties = Properties {
        content_type: Some(MqttStr::from("application/json")),
        payload_format_indicator: Some(1),
        ..Properties::default()
    };
    let payload = bytes::Bytes::from(serde_json::to_vec(payload).unwrap_or_default());
    router.publish_internal(topic, payload, properties);
}

/// Makes sure there is an app token: the configured one, or the one generated at first
/// start (only its SHA-256 is stored, in the directory). A new one is printed once to
/// stdout. Without durability it is generated (and printed) at every start.
pub async fn ensure_app_token(broker: &Broker) {
    let configured = broker
        .config
        .auth
        .admin_token
        .as_deref()
        .is_some_and(|t| !t.is_empty());
    let directory = &broker.router.directory;
    if configured || directory.admin_token_sha256().is_some() {
        return;
    }
    let (token, hash) = crate::groups::users::issue_token();
    let ticket = directory.set_admin_token_sha256(hash);
    if let (Some(durable), Some(ticket)) = (&broker.durable, ticket) {
        if durable.wait(ticket).await.is_err() {
            tracing::error!("the generated app token could not be stored");
        }
    }
    println!("rookery: generated the management API app token (shown only now): {token}");
}
