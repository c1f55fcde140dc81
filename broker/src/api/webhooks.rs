//! The webhook side of the management API: the events of API changes (`group.*`,
//! `user.*`), and the backend ops over the bridge — `webhookstats`,
//! `webhookdeadletters`, `webhookretry` (SPEC §9: dead letters visible and retryable).

use super::ops::{ApiError, Caller, Context};
use crate::durable::Ticket;
use crate::events::DeadLetter;
use rookery_bridge::{delivery_id_string, EventKind, WebhookConfig};
use serde_json::{json, Map, Value};

/// The webhook event of a successful change op, from the request and its answer; the
/// ticket the answer waits for.
pub fn change_event(
    ctx: &Context<'_>,
    caller: &Caller,
    op: &str,
    request: &Map<String, Value>,
    answer: &Value,
) -> Option<Ticket> {
    let events = &ctx.router.events;
    let by = match caller {
        Caller::Backend => Value::Null,
        Caller::User(address) => address.as_str().into(),
    };
    let group = answer.get("group");
    let gid = group.and_then(|g| g.get("gid")).and_then(Value::as_u64);
    let user = answer.get("user");
    let (kind, fields) = match op {
        "useradd" => (
            EventKind::UserCreated,
            // Never the token: it is shown once, to the caller only.
            json!({
                "address": user.and_then(|u| u.get("address")),
                "uid": user.and_then(|u| u.get("uid")),
                "name": user.and_then(|u| u.get("name")),
            }),
        ),
        "userdel" => (
            EventKind::UserDeleted,
            json!({"address": user.and_then(|u| u.get("address"))}),
        ),
        "groupadd" => (
            EventKind::GroupCreated,
            json!({"gid": gid, "by": by, "group": group}),
        ),
        "groupset" => (
            EventKind::GroupUpdated,
            json!({"gid": gid, "by": by, "group": group}),
        ),
        "groupdel" => (EventKind::GroupDeleted, json!({"gid": gid, "by": by})),
        "groupeditmembers" => {
            let members = request
                .get("group")
                .and_then(|g| g.get("members"))
                .cloned()
                .unwrap_or(Value::Null);
            let addresses: Vec<&str> = members
                .get("m")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .collect();
            let removed = members.get("remove").and_then(Value::as_bool) == Some(true);
            (
                EventKind::GroupMembers,
                json!({
                    "gid": gid,
                    "by": by,
                    "action": if removed { "removed" } else { "added_or_changed" },
                    "members": addresses,
                    "type": request.get("group").and_then(|g| g.get("type")),
                }),
            )
        }
        _ => return None,
    };
    let Value::Object(fields) = fields else {
        return None;
    };
    events.api_change(kind, gid, fields)
}

fn backend_only(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Backend => Ok(()),
        Caller::User(_) => Err(ApiError::new(
            "PERMISSION",
            "webhook ops are for the backend (app token) only",
        )),
    }
}

/// `webhookstats`: per endpoint, what the bridge counted since the start.
pub fn stats(ctx: &Context<'_>, caller: &Caller) -> Result<Value, ApiError> {
    backend_only(caller)?;
    let endpoints: Vec<Value> = ctx
        .router
        .events
        .stats()
        .into_iter()
        .map(|s| {
            json!({
                "name": s.name,
                "url": s.url,
                "delivered": s.delivered,
                "retries": s.retries,
                "failures": s.failures,
                "dead_letters": s.dead_letters,
                "dropped_overflow": s.dropped_overflow,
                "outbox_depth": s.outbox_depth,
                "outbox_bytes": s.outbox_bytes,
                "in_flight": s.in_flight,
                "latency_ms": {"count": s.latency.count, "sum": s.latency.sum_ms},
            })
        })
        .collect();
    Ok(json!({"webhooks": endpoints}))
}

/// The dead letters a request selects: optional `endpoint` (name, or url without one)
/// and optional `delivery` (an id as sent in `X-Rookery-Delivery`).
fn selected(ctx: &Context<'_>, request: &Map<String, Value>) -> Result<Vec<DeadLetter>, ApiError> {
    let text = |key: &str| -> Result<Option<&str>, ApiError> {
        match request.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::bad(format!("{key} must be a string"))),
        }
    };
    let endpoint = text("endpoint")?;
    let delivery = text("delivery")?;
    let configs = ctx.router.events.endpoints();
    let endpoint_index = match endpoint {
        None => None,
        Some(name) => Some(
            configs
                .iter()
                .position(|c| c.display_name() == name)
                .ok_or_else(|| {
                    ApiError::new("BADREQUEST", format!("no webhook endpoint named {name:?}"))
                })?,
        ),
    };
    let letters = ctx
        .router
        .events
        .dead_letters()
        .map_err(|e| ApiError::new("INTERNAL", format!("reading dead letters: {e}")))?;
    Ok(letters
        .into_iter()
        .filter(|l| endpoint_index.is_none_or(|i| l.endpoint == i))
        .filter(|l| delivery.is_none_or(|d| delivery_id_string(l.event.id) == d))
        .collect())
}

/// `webhookdeadletters`: oldest first, paged (`start`, `count`; no hidden cap).
pub fn dead_letters(
    ctx: &Context<'_>,
    caller: &Caller,
    request: &Map<String, Value>,
    (start, count): (usize, usize),
) -> Result<Value, ApiError> {
    backend_only(caller)?;
    let letters = selected(ctx, request)?;
    let total = letters.len();
    let configs = ctx.router.events.endpoints();
    let shown: Vec<Value> = letters
        .into_iter()
        .skip(start)
        .take(count)
        .map(|l| {
            // As the endpoint would be sent it (a message is rendered with its encoding).
            let rendered = match configs.get(l.endpoint) {
                Some(config) => l.event.render(config),
                None => l.event.render(&WebhookConfig::new("")),
            };
            let body: Value = serde_json::from_slice(&rendered).unwrap_or(Value::Null);
            json!({
                "endpoint": configs.get(l.endpoint).map(|c| c.display_name()),
                "delivery": delivery_id_string(l.event.id),
                "event": l.event.kind.as_str(),
                "created": l.event.created_ms,
                "error": l.error,
                "body": body,
            })
        })
        .collect();
    Ok(json!({"total": total, "deadletters": shown}))
}

/// `webhookretry`: one dead letter (`delivery`), or all of them (`all: true`), optionally
/// of one `endpoint`, back into the outbox with a fresh age and the same delivery id.
pub async fn retry(
    ctx: &Context<'_>,
    caller: &Caller,
    request: &Map<String, Value>,
) -> Result<Value, ApiError> {
    backend_only(caller)?;
    let all = match request.get("all") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad("all must be a boolean")),
    };
    if !all && request.get("delivery").is_none_or(Value::is_null) {
        return Err(ApiError::bad(
            "webhookretry needs a delivery id, or all: true",
        ));
    }
    let letters = selected(ctx, request)?;
    if letters.is_empty() && !all {
        return Err(ApiError::new("BADREQUEST", "no such dead letter"));
    }
    let mut retried = 0;
    let mut last = None;
    for letter in letters {
        last = last.max(ctx.router.events.retry(letter));
        retried += 1;
    }
    super::ops::wait_durable(ctx, last).await?;
    Ok(json!({"retried": retried}))
}
