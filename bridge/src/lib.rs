//! Webhook bridge (issue 6).
