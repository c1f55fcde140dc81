//! `/metrics` in the Prometheus text format (SPEC §10), with `prometheus-client`. The
//! broker's counters are plain atomics on its hot paths (`Stats`); a collector reads them
//! at scrape time, so metrics cost nothing between scrapes. Every series is listed in the
//! README ("Metrics").

use crate::server::Broker;
use crate::stats::Stats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// What one scrape reads: the counters, and values computed for it.
#[derive(Debug)]
struct Snapshot {
    stats: Arc<Stats>,
    queued_messages: u64,
    /// Addresses in authentication back-off now.
    auth_backoff: u64,
    commit: Option<crate::stats::HistogramSnapshot>,
    webhooks: Vec<rookery_bridge::EndpointStats>,
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One counter family with a label per value.
fn labelled_counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        let labels = [(label.to_string(), value.to_string())];
        ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = &self.stats;
        let e = &mut encoder;
        let get = Stats::get;
        gauge(
            e,
            "rookery_connections",
            "Client connections open now",
            get(&s.connections_current) as i64,
        )?;
        counter(
            e,
            "rookery_connections_accepted",
            "Client connections accepted",
            get(&s.connections_total),
        )?;
        labelled_counters(
            e,
            "rookery_connections_refused",
            "Connections refused by a limit, by reason",
            "reason",
            &[
                ("max_connections", get(&s.refused_max_connections)),
                ("connect_rate", get(&s.refused_connect_rate)),
                ("auth_backoff", get(&s.refused_auth_backoff)),
            ],
        )?;
        counter(
            e,
            "rookery_auth_failures",
            "Failed logins (user name given, login refused)",
            get(&s.auth_failures),
        )?;
        gauge(
            e,
            "rookery_auth_backoff_addresses",
            "Source addresses in back-off after failed logins",
            self.auth_backoff as i64,
        )?;
        counter(
            e,
            "rookery_messages_received",
            "Packets received from clients",
            get(&s.messages_received),
        )?;
        counter(
            e,
            "rookery_messages_sent",
            "Packets sent to clients",
            get(&s.messages_sent),
        )?;
        counter(
            e,
            "rookery_publish_received",
            "PUBLISH packets received",
            get(&s.publish_received),
        )?;
        counter(
            e,
            "rookery_publish_sent",
            "PUBLISH packets sent",
            get(&s.publish_sent),
        )?;
        counter(
            e,
            "rookery_bytes_received",
            "Bytes received from clients",
            get(&s.bytes_received),
        )?;
        counter(
            e,
            "rookery_bytes_sent",
            "Bytes sent to clients",
            get(&s.bytes_sent),
        )?;
        labelled_counters(
            e,
            "rookery_messages_dropped",
            "Messages dropped, by reason",
            "reason",
            &[
                ("queue_full_qos0", get(&s.dropped_qos0)),
                ("queue_full_qos12", get(&s.dropped_qos12)),
                ("expired", get(&s.dropped_expired)),
                ("too_large", get(&s.dropped_too_large)),
                ("storage_full", get(&s.dropped_storage_full)),
                ("no_store", get(&s.dropped_no_store)),
                ("no_receiver", get(&s.dropped_no_receiver)),
            ],
        )?;
        counter(
            e,
            "rookery_acl_denied",
            "Publishes, subscriptions and deliveries the ACL refused",
            get(&s.acl_denied),
        )?;
        counter(
            e,
            "rookery_protocol_errors",
            "Connections closed for a protocol violation",
            get(&s.protocol_errors),
        )?;
        gauge(
            e,
            "rookery_subscriptions",
            "Subscriptions",
            get(&s.subscriptions) as i64,
        )?;
        gauge(
            e,
            "rookery_retained_messages",
            "Retained messages",
            get(&s.retained) as i64,
        )?;
        gauge(
            e,
            "rookery_sessions",
            "Sessions (online and offline)",
            get(&s.sessions) as i64,
        )?;
        gauge(
            e,
            "rookery_queued_messages",
            "Messages queued in memory for sessions",
            self.queued_messages as i64,
        )?;
        gauge(
            e,
            "rookery_storage_bytes",
            "Size of the data directory",
            get(&s.storage_bytes) as i64,
        )?;
        gauge(
            e,
            "rookery_storage_full",
            "1 while storage is full",
            get(&s.storage_full) as i64,
        )?;
        counter(
            e,
            "rookery_storage_refused",
            "Durable work refused because storage is full",
            get(&s.storage_refused),
        )?;
        gauge(
            e,
            "rookery_uptime_seconds",
            "Seconds since the broker started",
            s.started.elapsed().as_secs() as i64,
        )?;
        if let Some((sum, count, buckets)) = &self.commit {
            let family = e.encode_descriptor(
                "rookery_storage_commit_seconds",
                "Duration of storage commits (apply and fsync)",
                None,
                MetricType::Histogram,
            )?;
            let mut family = family;
            family.encode_histogram::<()>(*sum, *count, buckets, None)?;
        }
        self.encode_webhooks(e)
    }
}

impl Snapshot {
    fn encode_webhooks(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        if self.webhooks.is_empty() {
            return Ok(());
        }
        type Pick = fn(&rookery_bridge::EndpointStats) -> u64;
        let counters: [(&str, &str, Pick); 5] = [
            (
                "rookery_webhook_deliveries",
                "Events delivered (2xx)",
                |w| w.delivered,
            ),
            (
                "rookery_webhook_retries",
                "Events rescheduled after a failure",
                |w| w.retries,
            ),
            (
                "rookery_webhook_failures",
                "Requests that failed (non-2xx, timeout, connection)",
                |w| w.failures,
            ),
            (
                "rookery_webhook_dead_letters",
                "Events that became dead letters",
                |w| w.dead_letters,
            ),
            (
                "rookery_webhook_dropped",
                "Events dropped by the outbox overflow policy",
                |w| w.dropped_overflow,
            ),
        ];
        for (name, help, pick) in counters {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for w in &self.webhooks {
                let labels = [("endpoint".to_string(), w.name.clone())];
                ConstCounter::new(pick(w)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauges: [(&str, &str, Pick); 2] = [
            (
                "rookery_webhook_outbox_depth",
                "Events waiting in the outbox",
                |w| w.outbox_depth,
            ),
            ("rookery_webhook_in_flight", "Requests in flight", |w| {
                w.in_flight
            }),
        ];
        for (name, help, pick) in gauges {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for w in &self.webhooks {
                let labels = [("endpoint".to_string(), w.name.clone())];
                ConstGauge::new(pick(w) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = e.encode_descriptor(
            "rookery_webhook_delivery_seconds",
            "Time from an event's creation to its 2xx",
            None,
            MetricType::Histogram,
        )?;
        for w in &self.webhooks {
            let labels = [("endpoint".to_string(), w.name.clone())];
            // Per-bucket counts: `encode_histogram` accumulates them.
            let buckets: Vec<(f64, u64)> = w
                .latency
                .counts
                .iter()
                .enumerate()
                .map(|(i, count)| {
                    let bound = w
                        .latency
                        .bounds_ms
                        .get(i)
                        .map_or(f64::MAX, |ms| *ms as f64 / 1000.0);
                    (bound, *count)
                })
                .collect();
            family.encode_family(&labels)?.encode_histogram::<()>(
                w.latency.sum_ms as f64 / 1000.0,
                w.latency.count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// The current metrics, rendered.
pub fn render(broker: &Broker) -> String {
    let snapshot = Snapshot {
        stats: broker.stats.clone(),
        queued_messages: broker.registry.queued_messages(),
        auth_backoff: broker.admission.in_backoff(std::time::Instant::now()) as u64,
        commit: broker.durable.as_ref().map(|d| d.commit_latency.snapshot()),
        webhooks: broker.router.events.stats(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(%error, "encoding metrics");
    }
    text
}

/// `GET /metrics`.
pub async fn serve_metrics(
    axum::extract::State(broker): axum::extract::State<std::sync::Weak<Broker>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match broker.upgrade() {
        Some(broker) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            render(&broker),
        )
            .into_response(),
        None => axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// `GET /health`: 200 once the broker serves (the HTTP listener starts only after the
/// store is open and recovered), with the storage state; 503 while it shuts down.
pub async fn serve_health(
    axum::extract::State(broker): axum::extract::State<std::sync::Weak<Broker>>,
) -> axum::response::Response {
    let Some(broker) = broker.upgrade() else {
        return json(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "stopping"}),
        );
    };
    let storage = match &broker.durable {
        None => "none",
        Some(durable) if durable.is_full() => "full",
        Some(_) => "ok",
    };
    json(
        axum::http::StatusCode::OK,
        serde_json::json!({
            "status": "ready",
            "storage": storage,
            "connections": Stats::get(&broker.stats.connections_current),
            "uptime_secs": broker.stats.started.elapsed().as_secs(),
        }),
    )
}

fn json(status: axum::http::StatusCode, body: serde_json::Value) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
