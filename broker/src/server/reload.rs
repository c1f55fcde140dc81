//! Reloading the configuration without a restart (SIGHUP in `main.rs`).
//!
//! What can change: the `[mqtt]` limits and per-connection settings (for connections
//! made afterwards; the queue limits for every session at once), the connect rate and
//! the authentication back-off, `[auth] allow_anonymous`, the ACL file (always read
//! again: its content may have changed under the same name) and `[[webhooks]]`. What
//! cannot (listeners, TLS certificates, `[http]`, `[storage]`, `[sys]`, `[groups]`, the
//! admin token) keeps its value as started, and a change to it is logged as needing a
//! restart.
//!
//! Everything that can fail (reading the ACL file, recovering the webhook outboxes) is
//! done before anything changes, so a refused reload changes nothing.

use super::{Broker, BrokerHandle};
use crate::acl::Acl;
use crate::config::Config;
use std::sync::Arc;

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings now in force that differ from before, as `section.key: old -> new`.
    pub changed: Vec<String>,
    /// Settings that differ from the running broker's but need a restart.
    pub need_restart: Vec<String>,
    /// The ACL file was read again (whether or not its content changed).
    pub acl_reread: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
    #[error("webhooks: {0}")]
    Webhooks(String),
}

/// Appends `section.key: old -> new` for each listed field that differs.
macro_rules! diff {
    ($out:expr, $section:literal, $old:expr, $new:expr, [$($field:ident),* $(,)?]) => {
        $(
            if $old.$field != $new.$field {
                $out.push(format!(
                    concat!($section, ".", stringify!($field), ": {:?} -> {:?}"),
                    $old.$field, $new.$field
                ));
            }
        )*
    };
}

/// Appends `section.key` for each listed field that differs (values left out: some are
/// secrets).
macro_rules! names {
    ($out:expr, $section:literal, $old:expr, $new:expr, [$($field:ident),* $(,)?]) => {
        $(
            if $old.$field != $new.$field {
                $out.push(concat!($section, ".", stringify!($field)).to_string());
            }
        )*
    };
}

impl BrokerHandle {
    /// Applies `config` (read like at start: file, environment, flags) to the running
    /// broker. On an error nothing changes.
    pub async fn reload(&self, config: Config) -> Result<Reloaded, ReloadError> {
        reload(&self.broker, config).await
    }
}

pub(super) async fn reload(broker: &Arc<Broker>, new: Config) -> Result<Reloaded, ReloadError> {
    let _one_at_a_time = broker.reloading.lock().await;
    let old = broker.current();
    let started = &broker.config;
    // Everything that can fail, first.
    let acl = match &new.auth.acl_file {
        Some(path) => Some(Acl::load(path)?),
        None => None,
    };
    let mut report = Reloaded::default();
    restart_only(&mut report.need_restart, started, &new);
    let mut effective = new;
    keep_restart_only(&mut effective, started);
    let changed = &mut report.changed;
    diff!(
        changed,
        "mqtt",
        old.mqtt,
        effective.mqtt,
        [
            max_keepalive,
            max_packet_size,
            max_connections,
            max_inflight,
            receive_maximum,
            max_queued_messages,
            max_queued_bytes,
            overflow_policy,
            topic_alias_maximum,
            max_topic_length,
            max_topic_levels,
            connect_timeout_secs,
            max_session_expiry_secs,
            queue_qos0_offline,
            disconnect_on_denied_publish,
            max_connect_rate,
            connect_burst,
        ]
    );
    diff!(
        changed,
        "auth",
        old.auth,
        effective.auth,
        [
            allow_anonymous,
            acl_file,
            max_auth_failures,
            auth_failure_window_secs,
            auth_backoff_secs,
            auth_backoff_max_secs,
        ]
    );
    if effective.webhooks != old.webhooks {
        broker
            .router
            .events
            .reload(effective.webhooks.clone(), broker.durable.clone())
            .await
            .map_err(ReloadError::Webhooks)?;
        let names: Vec<&str> = effective
            .webhooks
            .iter()
            .map(|w| w.display_name())
            .collect();
        changed.push(format!("webhooks: {names:?}"));
    }
    // From here on nothing fails.
    report.acl_reread = acl.is_some();
    broker.router.set_acl(acl);
    let queue_limits = super::outbox_limits(&effective.mqtt);
    if queue_limits != super::outbox_limits(&old.mqtt) {
        broker.registry.set_limits_all(queue_limits);
    }
    broker.live.store(Arc::new(effective));
    Ok(report)
}

/// The keys that differ from the running broker's and take a restart.
fn restart_only(out: &mut Vec<String>, started: &Config, new: &Config) {
    names!(
        out,
        "mqtt",
        started.mqtt,
        new.mqtt,
        [
            listen,
            tls_listen,
            tls_cert,
            tls_key,
            tls_client_ca,
            tls_client_auth
        ]
    );
    names!(
        out,
        "http",
        started.http,
        new.http,
        [listen, tls_listen, tls_cert, tls_key]
    );
    names!(
        out,
        "storage",
        started.storage,
        new.storage,
        [
            data_dir,
            durability,
            flush_interval_ms,
            write_behind_ms,
            max_bytes,
            min_free_bytes,
            full_policy
        ]
    );
    names!(out, "auth", started.auth, new.auth, [admin_token]);
    names!(out, "sys", started.sys, new.sys, [interval_secs]);
    names!(
        out,
        "groups",
        started.groups,
        new.groups,
        [history_max_messages, history_max_age_secs]
    );
}

/// Puts the running broker's values back into the keys a reload does not change, so
/// that the configuration in force says what is in force.
fn keep_restart_only(config: &mut Config, started: &Config) {
    let mqtt = &mut config.mqtt;
    mqtt.listen = started.mqtt.listen;
    mqtt.tls_listen = started.mqtt.tls_listen;
    mqtt.tls_cert.clone_from(&started.mqtt.tls_cert);
    mqtt.tls_key.clone_from(&started.mqtt.tls_key);
    mqtt.tls_client_ca.clone_from(&started.mqtt.tls_client_ca);
    mqtt.tls_client_auth = started.mqtt.tls_client_auth;
    config.http = started.http.clone();
    config.storage = started.storage.clone();
    config
        .auth
        .admin_token
        .clone_from(&started.auth.admin_token);
    config.sys = started.sys.clone();
    config.groups = started.groups.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_reported_and_kept() {
        let started = Config::default();
        let mut new = Config::default();
        new.mqtt.listen = "127.0.0.1:1".parse().unwrap();
        new.storage.max_bytes = 7;
        new.auth.admin_token = Some("secret".into());
        let mut out = Vec::new();
        restart_only(&mut out, &started, &new);
        assert_eq!(
            out,
            ["mqtt.listen", "storage.max_bytes", "auth.admin_token"]
        );
        keep_restart_only(&mut new, &started);
        assert_eq!(new, started);
    }
}
