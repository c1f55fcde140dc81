//! Rookery: an MQTT broker in which groups are first-class topics.
pub mod codec;
