//! A real HTTP endpoint for the webhook tests: an axum server on 127.0.0.1 that records
//! every request and answers as told (fail the first N, fail always, or succeed).

#![allow(dead_code)] // each test binary uses a different subset

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The events of the request: one object, or each of a batch.
    pub fn events(&self) -> Vec<Value> {
        match serde_json::from_slice(&self.body).expect("the body is JSON") {
            Value::Array(events) => events,
            event => vec![event],
        }
    }
}

#[derive(Clone, Default)]
pub struct Hook {
    received: Arc<Mutex<Vec<Received>>>,
    /// Answer 500 to this many more requests.
    pub fail_next: Arc<AtomicUsize>,
    pub fail_always: Arc<AtomicBool>,
    pub answered_500: Arc<AtomicUsize>,
    /// `X-Rookery-Delivery` of each request answered 500.
    failed_ids: Arc<Mutex<Vec<String>>>,
}

impl Hook {
    pub fn failed_ids(&self) -> Vec<String> {
        self.failed_ids.lock().unwrap().clone()
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every event received with a 2xx answer... and the failed ones too: the test
    /// decides (each `Received` is one request).
    pub fn events(&self) -> Vec<Value> {
        self.received().iter().flat_map(Received::events).collect()
    }
}

async fn answer(State(hook): State<Hook>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let fail = hook.fail_always.load(Ordering::SeqCst)
        || hook
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if fail {
        hook.answered_500.fetch_add(1, Ordering::SeqCst);
        let id = headers
            .get("x-rookery-delivery")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        hook.failed_ids.lock().unwrap().push(id.to_string());
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    hook.received
        .lock()
        .unwrap()
        .push(Received { headers, body });
    StatusCode::NO_CONTENT
}

/// Serves `hook` on `listener` until the test ends.
pub fn serve_on(listener: tokio::net::TcpListener, hook: Hook) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(answer))
        .with_state(hook);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

pub async fn start(hook: Hook) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, serve_on(listener, hook))
}

/// `sha256=<hex>` computed here, independently of the bridge.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
