//! Configuration: embedded defaults, then a TOML file (`--config`), then `ROOKERY_*`
//! environment variables, then command-line flags — each overriding the one before.
//!
//! Environment variables name a key as `ROOKERY_<SECTION>_<KEY>` (or with a double
//! underscore between section and key), e.g. `ROOKERY_MQTT_LISTEN=0.0.0.0:1883` or
//! `ROOKERY_STORAGE__DURABILITY=none`. Values are parsed as TOML values when they parse
//! (numbers, booleans) and taken as strings otherwise.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub http: HttpConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub sys: SysConfig,
    pub groups: GroupsConfig,
    /// `[[webhooks]]` endpoints (SPEC §1, §9), delivered by `rookery-bridge`.
    pub webhooks: Vec<WebhookConfig>,
}

pub use rookery_bridge::WebhookConfig;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub listen: SocketAddr,
    /// MQTT over TLS (conventionally port 8883); needs `tls_cert` and `tls_key`.
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): when set, TLS clients are asked for a certificate, which
    /// must chain to one of them.
    pub tls_client_ca: Option<PathBuf>,
    /// With `tls_client_ca`: whether a client must present a certificate (`required`)
    /// or may connect without one (`optional`; one it presents is still verified).
    pub tls_client_auth: ClientAuth,
    /// Cap on a v5 client's keep-alive: a client asking for more (or for 0) gets this
    /// value in CONNACK's Server Keep Alive. 0 disables the cap. Default 60 s (the value
    /// the Paho interoperability suite expects), not the spec example's 65535.
    pub max_keepalive: u16,
    pub max_packet_size: u32,
    pub max_connections: usize,
    /// QoS 1/2 messages in flight to one client (v5: the minimum with its Receive Maximum).
    pub max_inflight: u16,
    /// Receive Maximum the broker announces: QoS 2 messages a client may have unreleased.
    pub receive_maximum: u16,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    /// What to do with a QoS >= 1 message when a session's queue is full (QoS 0 messages
    /// are always dropped first): `drop_new` drops the arriving message, `drop_oldest`
    /// evicts the oldest queued one.
    pub overflow_policy: OverflowPolicy,
    /// Topic Alias Maximum the broker announces to v5 clients.
    pub topic_alias_maximum: u16,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    /// Seconds a new connection has to send CONNECT before it is closed.
    pub connect_timeout_secs: u64,
    /// Session expiry granted to 3.1.1 persistent sessions and the cap for v5 (seconds).
    pub max_session_expiry_secs: u32,
    /// Queue QoS 0 messages for offline persistent sessions (Mosquitto's
    /// `queue_qos0_messages`); off by default.
    pub queue_qos0_offline: bool,
    /// 3.1.1 clients denied a publish are disconnected instead of silently acknowledged.
    pub disconnect_on_denied_publish: bool,
    /// New connections per second from one source address (IPv6: one /64), a token
    /// bucket refilled at this rate and holding up to `connect_burst`; 0 = no limit. Over
    /// it, a TCP client gets CONNACK 0x9F (3.1.1: 3), a TLS one is closed before its
    /// handshake, a WebSocket one gets HTTP 429.
    pub max_connect_rate: u32,
    /// Connections one source address may open at once before `max_connect_rate` applies.
    pub connect_burst: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    #[default]
    DropNew,
    DropOldest,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// HTTPS with the same routes (WSS on `/mqtt`); its certificate is `[http]
    /// tls_cert`/`tls_key`, or else `[mqtt]`'s. No client certificates are asked for.
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    #[default]
    Strict,
    Batched,
    None,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// With `batched`: the longest time an acknowledged message may wait for its fsync
    /// (the loss window after a crash).
    pub flush_interval_ms: u64,
    /// With `strict` and `batched`: how long a stored operation waits in memory before it
    /// is written, so that a message its (online) subscriber acknowledges within that time
    /// is never written at all. Acknowledgements that wait for a commit wait this much
    /// longer (see `durable/mod.rs`, "Write-behind"). 0 = write as soon as possible.
    pub write_behind_ms: u64,
    /// Global storage limit: the store may take this many bytes on disk (0 = no limit).
    pub max_bytes: u64,
    /// Storage is also full when the data directory's file system has less free space
    /// than this (0 = never), so that the broker stops before the disk does.
    pub min_free_bytes: u64,
    /// What happens to durable work while storage is full.
    pub full_policy: StorageFullPolicy,
}

/// While storage is full (over `max_bytes`, under `min_free_bytes`, or after a write
/// failed), QoS 0 traffic and QoS >= 1 deliveries that need no storage keep flowing.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum StorageFullPolicy {
    /// A QoS >= 1 PUBLISH that would have to be stored is refused whole (delivered to
    /// nobody): v5 PUBACK / PUBREC 0x97 (quota exceeded); a 3.1.1 client, which cannot be
    /// told, is disconnected before it is acknowledged, and resends after reconnecting.
    #[default]
    Refuse,
    /// The PUBLISH is accepted and acknowledged; the copies that would have been stored
    /// (offline or persistent subscribers, the retained store) are dropped and counted.
    Drop,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub allow_anonymous: bool,
    pub admin_token: Option<String>,
    pub acl_file: Option<PathBuf>,
    /// Failed logins (a user name with a wrong token, or an unknown, inactive or expired
    /// user) from one source address within `auth_failure_window_secs` that put it in
    /// back-off: every CONNECT from it is then refused (v5 CONNACK 0x8A, 3.1.1: 5) for
    /// `auth_backoff_secs`, doubling with each further failure up to
    /// `auth_backoff_max_secs`. A successful login resets it. 0 = no back-off.
    pub max_auth_failures: u32,
    pub auth_failure_window_secs: u64,
    pub auth_backoff_secs: u64,
    pub auth_backoff_max_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SysConfig {
    /// Seconds between `$SYS/broker/...` updates; 0 turns them off.
    pub interval_secs: u64,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_client_auth: ClientAuth::Required,
            max_keepalive: 60,
            max_packet_size: 1_048_576,
            max_connections: 100_000,
            max_inflight: 100,
            receive_maximum: 100,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            overflow_policy: OverflowPolicy::DropNew,
            topic_alias_maximum: 64,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            connect_timeout_secs: 10,
            max_session_expiry_secs: u32::MAX,
            queue_qos0_offline: false,
            disconnect_on_denied_publish: false,
            // Generous: the `idle` benchmark opens 5,000 connections from 127.0.0.1 at
            // ~16,000/s, and a NAT may hide many clients behind one address.
            max_connect_rate: 100,
            connect_burst: 10_000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./rookery-data"),
            durability: Durability::Strict,
            flush_interval_ms: 100,
            write_behind_ms: 20,
            max_bytes: 0,
            min_free_bytes: 256 * 1024 * 1024,
            full_policy: StorageFullPolicy::Refuse,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: true,
            admin_token: None,
            acl_file: None,
            max_auth_failures: 5,
            auth_failure_window_secs: 60,
            auth_backoff_secs: 1,
            auth_backoff_max_secs: 300,
        }
    }
}

/// `[groups]`: group history bounds (SPEC §7 "Stored groups").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Messages kept per group (0 = no history).
    pub history_max_messages: usize,
    /// Seconds a history entry is kept.
    pub history_max_age_secs: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            history_max_messages: 1000,
            history_max_age_secs: 30 * 24 * 3600,
        }
    }
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig { interval_secs: 10 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

const SECTIONS: [&str; 6] = ["mqtt", "http", "storage", "auth", "sys", "groups"];

impl Config {
    /// Builds the configuration from an optional TOML file and the given environment
    /// variables (pass `std::env::vars()`); command-line flags are applied by the caller.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("ROOKERY_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = split_env_key(&rest) else {
                continue;
            };
            let section_table = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section_table) = section_table {
                section_table.insert(key.to_string(), parse_env_value(&value));
            }
        }
        let config = toml::Value::Table(table)
            .try_into::<Config>()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        for (index, webhook) in config.webhooks.iter().enumerate() {
            webhook
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("webhooks[{index}]: {e}")))?;
        }
        let mut keys: Vec<u64> = config.webhooks.iter().map(|w| w.endpoint_key()).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(
                "webhooks: two endpoints with the same name (or url without a name)".into(),
            ));
        }
        Ok(config)
    }
}

fn split_env_key(rest: &str) -> Option<(&str, &str)> {
    if let Some((section, key)) = rest.split_once("__") {
        return SECTIONS.contains(&section).then_some((section, key));
    }
    let (section, key) = rest.split_once('_')?;
    SECTIONS.contains(&section).then_some((section, key))
}

fn parse_env_value(value: &str) -> toml::Value {
    match format!("v = {value}").parse::<toml::Table>() {
        Ok(mut parsed) => parsed
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.to_string())),
        Err(_) => toml::Value::String(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let config = Config::load(None, Vec::new()).unwrap();
        assert_eq!(config.mqtt.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.storage.data_dir, PathBuf::from("./rookery-data"));
        assert_eq!(config.storage.durability, Durability::Strict);
        assert!(config.auth.allow_anonymous);
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rookery.toml");
        std::fs::write(
            &path,
            "[mqtt]\nlisten = \"127.0.0.1:1999\"\nmax_inflight = 7\n[storage]\ndurability = \"batched\"\n",
        )
        .unwrap();
        let env = vec![
            (
                "ROOKERY_STORAGE__DURABILITY".to_string(),
                "none".to_string(),
            ),
            ("ROOKERY_MQTT_MAX_INFLIGHT".to_string(), "9".to_string()),
            (
                "ROOKERY_AUTH_ALLOW_ANONYMOUS".to_string(),
                "false".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let config = Config::load(Some(&path), env).unwrap();
        assert_eq!(config.mqtt.listen.port(), 1999);
        assert_eq!(config.mqtt.max_inflight, 9);
        assert_eq!(config.storage.durability, Durability::None);
        assert!(!config.auth.allow_anonymous);
    }

    #[test]
    fn the_spec_example_config_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rookery.toml");
        std::fs::write(
            &path,
            r#"
[mqtt]
listen = "127.0.0.1:1883"
tls_listen = "127.0.0.1:8883"
max_keepalive = 65535
max_packet_size = 1048576
max_connections = 100000
max_inflight = 100
max_queued_messages = 10000
max_queued_bytes = 67108864
[http]
listen = "127.0.0.1:8080"
[storage]
data_dir = "./rookery-data"
durability = "strict"
[auth]
allow_anonymous = true
admin_token = "change-me"
acl_file = "acl.conf"
[[webhooks]]
url = "http://127.0.0.1:9000/hook"
secret = "s3cret"
events = ["message.publish", "group.members"]
topics = ["groups/#"]
"#,
        )
        .unwrap();
        let config = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(config.webhooks.len(), 1);
        assert_eq!(config.mqtt.max_keepalive, 65535);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let env = vec![("ROOKERY_MQTT_NO_SUCH_KEY".to_string(), "1".to_string())];
        assert!(Config::load(None, env).is_err());
    }
}
