//! Rookery: an MQTT broker in which groups are first-class topics.
//!
//! Start at [`server::start`]; ARCHITECTURE.md at the repository root maps the modules.

pub mod acl;
pub mod api;
pub mod codec;
pub mod config;
pub mod console;
pub mod durable;
pub mod events;
pub mod groups;
pub mod message;
pub mod metrics;
pub mod router;
pub mod server;
pub mod session;
pub mod stats;
mod sys;

pub use config::Config;
pub use server::{start, BrokerHandle};
