//! Test fixtures: a real HTTP endpoint on 127.0.0.1 that records what it receives and answers
//! as scripted, an in-memory outbox store, and event builders.

#![allow(dead_code)] // Each test file uses a different part of this module.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use rookery_bridge::{delivery_id_string, Event, EventKind, OutboxStore, WebhookConfig};

/// One request as the endpoint received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// How the endpoint answers one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn ok() -> Answer {
        Answer::status(200)
    }

    pub fn with_body(mut self, body: impl Into<String>) -> Answer {
        self.body = body.into();
        self
    }

    pub fn after(mut self, delay: Duration) -> Answer {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct Recorder {
    received: Mutex<Vec<Received>>,
    /// Answers for the next requests, in order; then `otherwise`.
    script: Mutex<VecDeque<Answer>>,
    otherwise: Mutex<Option<Answer>>,
}

pub struct TestServer {
    pub addr: SocketAddr,
    recorder: Arc<Recorder>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// A server on a fresh port that answers 200 unless told otherwise.
    pub async fn start() -> TestServer {
        TestServer::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A server on `addr` (e.g. a port reserved earlier with [`unused_addr`]).
    pub async fn start_on(addr: SocketAddr) -> TestServer {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder::default());
        let app = Router::new()
            .fallback(answer)
            .with_state(Arc::clone(&recorder));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestServer {
            addr,
            recorder,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next requests get these answers, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.recorder.script.lock().unwrap().extend(answers);
    }

    /// Every request after the script gets this answer.
    pub fn otherwise(&self, answer: Answer) {
        *self.recorder.otherwise.lock().unwrap() = Some(answer);
    }

    pub fn received(&self) -> Vec<Received> {
        self.recorder.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.recorder.received.lock().unwrap().len()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    State(recorder): State<Arc<Recorder>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    recorder.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    let scripted = recorder.script.lock().unwrap().pop_front();
    let answer = scripted
        .or_else(|| recorder.otherwise.lock().unwrap().clone())
        .unwrap_or_else(Answer::ok);
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    (StatusCode::from_u16(answer.status).unwrap(), answer.body)
}

/// An address nothing listens on (bound, then released), to play a dead endpoint or one
/// that comes up later.
pub fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// What the bridge told the durable outbox.
#[derive(Default)]
pub struct MemoryStore {
    pub removed: Mutex<Vec<(u64, u64)>>,
    /// (endpoint key, event, last error, wall-clock ms when buried)
    pub buried: Mutex<Vec<(u64, Event, String, u64)>>,
}

impl MemoryStore {
    pub fn removed_ids(&self) -> Vec<u64> {
        self.removed
            .lock()
            .unwrap()
            .iter()
            .map(|&(_, id)| id)
            .collect()
    }

    pub fn buried_ids(&self) -> Vec<u64> {
        self.buried.lock().unwrap().iter().map(|b| b.1.id).collect()
    }
}

impl OutboxStore for MemoryStore {
    fn remove(&self, endpoint_key: u64, ids: &[u64]) {
        self.removed
            .lock()
            .unwrap()
            .extend(ids.iter().map(|&id| (endpoint_key, id)));
    }

    fn bury(&self, endpoint_key: u64, event: &Event, last_error: &str) {
        self.buried.lock().unwrap().push((
            endpoint_key,
            event.clone(),
            last_error.to_owned(),
            now_ms(),
        ));
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An event rendered the way the broker would, created now.
pub fn event(id: u64, kind: EventKind) -> Event {
    let created_ms = now_ms();
    let body = serde_json::json!({
        "event": kind.as_str(),
        "delivery": delivery_id_string(id),
        "ts": created_ms,
        "n": id,
    });
    Event {
        id,
        kind,
        created_ms,
        body: serde_json::to_vec(&body).unwrap().into(),
    }
}

pub fn message(id: u64) -> Event {
    event(id, EventKind::MessagePublish)
}

/// A configuration with quick retries, for tests.
pub fn config(url: impl Into<String>) -> WebhookConfig {
    let mut config = WebhookConfig::new(url);
    config.backoff_initial_ms = 10;
    config.backoff_max_ms = 50;
    config.timeout_ms = 2000;
    config
}

/// Polls `condition` every 10 ms for up to 5 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
