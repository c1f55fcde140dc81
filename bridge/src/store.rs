//! The durable side of the outbox, implemented by the broker over its database.

use crate::event::Event;

/// The broker's durable outbox. The bridge holds the same events in memory and tells the
/// store when one leaves. Writes are fire-and-forget: the methods must not block for long
/// (they are called from the delivery workers and from [`crate::Bridge::enqueue`]), and the
/// broker orders them after the put that stored the event.
pub trait OutboxStore: Send + Sync + 'static {
    /// Events that were delivered (2xx) or dropped by the overflow policy: forget them.
    fn remove(&self, endpoint_key: u64, ids: &[u64]);
    /// The event reached max age without a 2xx: move it to the endpoint's dead letters, with
    /// the last error.
    fn bury(&self, endpoint_key: u64, event: &Event, last_error: &str);
}
