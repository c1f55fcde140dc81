//! The one op executor of the management API (SPEC §8), shared by the backend HTTP API
//! (`Caller::Backend`, app token checked) and the real-time API over MQTT
//! (`Caller::User`, admin flags checked).
//!
//! Every request is validated whole before the directory is touched: a wrong type, an
//! unknown field inside `user` / `group` / `members`, a missing field or an unknown op
//! is refused with `result: false` and changes nothing. A change is answered only once
//! its commit is durable ([`Durable::wait`]); its `$users/{address}/events`
//! notifications are published after that.

use crate::config::Config;
use crate::durable::{Durable, Ticket};
use crate::groups::acl::{decide, Who};
use crate::groups::directory::{
    Change, DirError, Directory, Event, GroupPatch, MembersEdit, UserPatch, ValidityPatch,
};
use crate::groups::model::{
    Action, AdminFlags, AdminPatch, Gid, Group, Member, MemberPermissionsPatch, Permissions,
};
use crate::groups::now_secs;
use crate::groups::users::{hash_token, validate_address, User, DEFAULT_TOKEN_EXPIRY_MINUTES};
use crate::router::Router;
use crate::server::Broker;
use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Who sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The backend: the request's `token` must be the app token.
    Backend,
    /// An authenticated MQTT client (real-time API): admin flags decide.
    User(String),
}

/// What the executor works on. [`execute`] builds it from the broker; the unit tests
/// build one without a network.
pub struct Context<'a> {
    pub config: &'a Config,
    pub router: &'a Router,
    pub durable: Option<&'a Arc<Durable>>,
}

impl<'a> Context<'a> {
    pub fn of(broker: &'a Broker) -> Context<'a> {
        Context {
            config: &broker.config,
            router: &broker.router,
            durable: broker.durable.as_ref(),
        }
    }

    fn directory(&self) -> &Directory {
        &self.router.directory
    }
}

/// The longest group or user name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 256;

/// Runs one request and answers it: the HTTP status and the JSON body (SPEC §8).
pub async fn execute(broker: &Arc<Broker>, caller: Caller, request: Value) -> (StatusCode, Value) {
    execute_in(&Context::of(broker), caller, request).await
}

/// [`execute`] over an explicit context.
pub async fn execute_in(ctx: &Context<'_>, caller: Caller, request: Value) -> (StatusCode, Value) {
    let op = request.get("op").cloned().unwrap_or(Value::Null);
    let id = request.get("id").cloned();
    let result = run(ctx, &caller, &request).await;
    let (status, mut body) = match result {
        Ok(Value::Object(fields)) => {
            let mut body = Map::new();
            body.insert("op".into(), op);
            body.insert("result".into(), Value::Bool(true));
            body.extend(fields);
            (StatusCode::OK, Value::Object(body))
        }
        Ok(_) => (StatusCode::OK, json!({"op": op, "result": true})),
        Err(error) => (error.status(), error.to_json(op)),
    };
    if let Some(id) = id {
        body["id"] = id;
    }
    (status, body)
}

/// A refusal: an error code of SPEC §8 and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new("BADREQUEST", message)
    }

    fn permission(message: impl Into<String>) -> ApiError {
        ApiError::new("PERMISSION", message)
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    pub fn to_json(&self, op: Value) -> Value {
        json!({"op": op, "result": false, "error": self.code, "message": self.message})
    }
}

impl From<DirError> for ApiError {
    fn from(error: DirError) -> ApiError {
        ApiError::new(error.code(), error.message())
    }
}

/// The HTTP status of an error code (SPEC §8).
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "BADREQUEST" | "BADOP" => StatusCode::BAD_REQUEST,
        "AUTHFAIL" => StatusCode::UNAUTHORIZED,
        "PERMISSION" | "GROUPINACTIVE" | "GROUPEXPIRED" => StatusCode::FORBIDDEN,
        "NOUSER" | "NOGROUP" | "NOTMEMBER" => StatusCode::NOT_FOUND,
        "EXISTS" => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Every error code an answer may carry.
pub const ERROR_CODES: [&str; 11] = [
    "BADREQUEST",
    "BADOP",
    "AUTHFAIL",
    "PERMISSION",
    "GROUPINACTIVE",
    "GROUPEXPIRED",
    "NOUSER",
    "NOGROUP",
    "NOTMEMBER",
    "EXISTS",
    "INTERNAL",
];

/// The ops this executor knows.
pub const OPS: [&str; 17] = [
    "useradd",
    "userset",
    "userdel",
    "usersget",
    "groupadd",
    "groupset",
    "groupdel",
    "groupeditmembers",
    "groupgetmembers",
    "groupget",
    "groupsget",
    "message",
    "groupmessages",
    "webhookstats",
    "webhookdeadletters",
    "webhookretry",
    "brokerstats",
];

type Answer = Result<Value, ApiError>;

async fn run(ctx: &Context<'_>, caller: &Caller, request: &Value) -> Answer {
    let Value::Object(request) = request else {
        return Err(ApiError::bad(format!(
            "a request is a JSON object, not {}",
            kind(request)
        )));
    };
    let op = match request.get("op") {
        Some(Value::String(op)) => op.as_str(),
        None | Some(Value::Null) => return Err(ApiError::bad("the request has no op")),
        Some(other) => {
            return Err(ApiError::bad(format!(
                "op must be a string, not {}",
                kind(other)
            )))
        }
    };
    if *caller == Caller::Backend && !app_token_matches(ctx, request.get("token")) {
        return Err(ApiError::new(
            "AUTHFAIL",
            "the app token is missing or wrong",
        ));
    }
    let now = now_secs();
    if matches!(op, "useradd" | "userset" | "userdel" | "usersget") {
        backend_only(caller)?;
    }
    let answer = match op {
        "useradd" => user_add(ctx, request, now).await,
        "userset" => user_set(ctx, request, now).await,
        "userdel" => user_del(ctx, request).await,
        "usersget" => users_get(ctx, request),
        "groupadd" => group_add(ctx, caller, request, now).await,
        "groupset" => group_set(ctx, caller, request, now).await,
        "groupdel" => group_del(ctx, caller, request).await,
        "groupeditmembers" => group_edit_members(ctx, caller, request, now).await,
        "groupgetmembers" => group_get_members(ctx, caller, request, now),
        "groupget" => group_get(ctx, caller, request, now),
        "groupsget" => groups_get(ctx, caller, request),
        "message" => message(ctx, caller, request).await,
        "groupmessages" => group_messages(ctx, caller, request, now),
        "webhookstats" => super::webhooks::stats(ctx, caller),
        "webhookdeadletters" => {
            super::webhooks::dead_letters(ctx, caller, request, paging(request)?)
        }
        "webhookretry" => super::webhooks::retry(ctx, caller, request).await,
        "brokerstats" => crate::console::stats_op::broker_stats(ctx, caller),
        other => Err(ApiError::new(
            "BADOP",
            format!("unknown op {other:?}; the ops are {}", OPS.join(", ")),
        )),
    }?;
    // The change's webhook event is durable before the answer, like the change.
    let ticket = super::webhooks::change_event(ctx, caller, op, request, &answer);
    durable(ctx, ticket).await?;
    Ok(answer)
}

fn backend_only(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Caller::Backend => Ok(()),
        Caller::User(_) => Err(ApiError::permission(
            "user ops need the app token (backend API only)",
        )),
    }
}

/// Compares the presented app token with the configured one, or with the stored hash of
/// the generated one, in constant time (both sides are SHA-256 hex of equal length).
fn app_token_matches(ctx: &Context<'_>, presented: Option<&Value>) -> bool {
    let Some(Value::String(presented)) = presented else {
        return false;
    };
    let expected = match ctx.config.auth.admin_token.as_deref() {
        Some(token) if !token.is_empty() => hash_token(token),
        _ => match ctx.directory().admin_token_sha256() {
            Some(hash) => hash,
            None => return false,
        },
    };
    let presented = hash_token(presented);
    bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

// ---------------------------------------------------------------------------------------
// Changes: durable first, then notifications
// ---------------------------------------------------------------------------------------

/// Waits until `ticket` is committed.
/// Waits for a commit the answer promises.
pub async fn wait_durable(ctx: &Context<'_>, ticket: Option<Ticket>) -> Result<(), ApiError> {
    durable(ctx, ticket).await
}

async fn durable(ctx: &Context<'_>, ticket: Option<Ticket>) -> Result<(), ApiError> {
    if let (Some(durable), Some(ticket)) = (ctx.durable, ticket) {
        durable.wait(ticket).await.map_err(|full| {
            ApiError::new(
                "INTERNAL",
                if full {
                    "storage is full: the change was not stored"
                } else {
                    "storage failed: the change was not stored"
                },
            )
        })?;
    }
    Ok(())
}

/// Makes a change durable, then publishes its notifications; gives back its value.
async fn commit<T>(ctx: &Context<'_>, change: Change<T>) -> Result<T, ApiError> {
    durable(ctx, change.ticket).await?;
    notify(ctx.router, &change.events);
    Ok(change.value)
}

/// Publishes each event as JSON to `$users/{address}/events` (QoS 1, not retained).
pub fn notify(router: &Router, events: &[Event]) {
    for event in events {
        let topic = format!("$users/{}/events", event.address);
        super::publish_internal(router, &topic, &event.body);
    }
}

// ---------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------

async fn user_add(ctx: &Context<'_>, request: &Map<String, Value>, now: u64) -> Answer {
    let user = required_object(request, "user", "user")?;
    allow_keys(user, &["address", "name", "active", "token"], "user")?;
    let address = address_of(user)?;
    let name = name_of(user, "user.name")?;
    let active = get_bool(user, "active", "user.active")?;
    let minutes = match object(user, "token", "user.token")? {
        Some(token) => {
            allow_keys(token, &["expiry"], "user.token")?;
            expiry_minutes(token)?
        }
        None => None,
    };
    let dir = ctx.directory();
    let change = dir.add_user(&address, name, minutes, now)?;
    let (mut user, token) = commit(ctx, change).await?;
    if active == Some(false) {
        let patch = UserPatch {
            active: Some(false),
            ..UserPatch::default()
        };
        user = commit(ctx, dir.set_user(&address, patch, now)?).await?.0;
    }
    Ok(json!({"user": user_json(&user, Some(&token))}))
}

async fn user_set(ctx: &Context<'_>, request: &Map<String, Value>, now: u64) -> Answer {
    let user = required_object(request, "user", "user")?;
    allow_keys(user, &["address", "name", "active", "token"], "user")?;
    let address = address_of(user)?;
    let mut patch = UserPatch {
        name: name_of(user, "user.name")?,
        active: get_bool(user, "active", "user.active")?,
        ..UserPatch::default()
    };
    if let Some(token) = object(user, "token", "user.token")? {
        allow_keys(token, &["expiry", "remove"], "user.token")?;
        let minutes = expiry_minutes(token)?;
        patch.remove_token = get_bool(token, "remove", "user.token.remove")? == Some(true);
        if patch.remove_token && minutes.is_some() {
            return Err(ApiError::bad(
                "user.token: remove and expiry contradict each other",
            ));
        }
        if !patch.remove_token {
            // `token: {}` issues a new token with the default lifetime.
            patch.new_token_minutes = Some(minutes.unwrap_or(DEFAULT_TOKEN_EXPIRY_MINUTES));
        }
    }
    let change = ctx.directory().set_user(&address, patch, now)?;
    let (user, token) = commit(ctx, change).await?;
    Ok(json!({"user": user_json(&user, token.as_deref())}))
}

async fn user_del(ctx: &Context<'_>, request: &Map<String, Value>) -> Answer {
    let user = required_object(request, "user", "user")?;
    allow_keys(user, &["address"], "user")?;
    let address = address_of(user)?;
    commit(ctx, ctx.directory().remove_user(&address)?).await?;
    Ok(json!({"user": {"address": address}}))
}

fn users_get(ctx: &Context<'_>, request: &Map<String, Value>) -> Answer {
    let (start, count) = paging(request)?;
    let (users, total) = ctx.directory().users(start, count);
    let users: Vec<Value> = users.iter().map(|u| user_json(u, None)).collect();
    Ok(json!({"start": start, "count": users.len(), "total": total, "users": users}))
}

fn user_json(user: &User, token: Option<&str>) -> Value {
    let mut value = json!({
        "uid": user.uid,
        "address": user.address,
        "name": user.name,
        "active": user.active,
        "has_token": user.token_hash.is_some(),
        "token_expires": user.token_expires,
        "created": user.created,
    });
    if let Some(token) = token {
        value["token"] = Value::String(token.to_string());
    }
    value
}

fn address_of(user: &Map<String, Value>) -> Result<String, ApiError> {
    let address = get_str(user, "address", "user.address")?
        .ok_or_else(|| ApiError::bad("user.address is required"))?;
    validate_address(address).map_err(|e| ApiError::bad(format!("user.address: {e}")))?;
    Ok(address.to_string())
}

fn expiry_minutes(token: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    match get_u64(token, "expiry", "user.token.expiry")? {
        Some(0) => Err(ApiError::bad(
            "user.token.expiry is in minutes and at least 1",
        )),
        other => Ok(other),
    }
}

// ---------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------

const GROUP_SETTINGS: [&str; 7] = [
    "name",
    "flags",
    "active",
    "validity",
    "permissions",
    "type",
    "gid",
];

async fn group_add(
    ctx: &Context<'_>,
    caller: &Caller,
    request: &Map<String, Value>,
    now: u64,
) -> Answer {
    let group = required_object(request, "group", "group")?;
    let mut allowed = GROUP_SETTINGS.to_vec();
    allowed.push("members");
    allow_keys(group, &allowed, "group")?;
    if group.contains_key("gid") {
        return Err(ApiError::bad(
            "group.gid is allocated by the broker: groupadd takes none",
        ));
    }
    let patch = group_patch(group)?;
    let message_type = get_u32(group, "type", "group.type")?;
    let members = match object(group, "members", "group.members")? {
        Some(members) => {
            let edit = members_edit(members, message_type)?;
            if edit.remove {
                return Err(ApiError::bad("groupadd cannot remove members"));
            }
            Some(edit)
        }
        None => None,
    };
    let creator = match caller {
        Caller::Backend => None,
        Caller::User(address) => Some(address.as_str()),
    };
    let change = ctx.directory().add_group(patch, members, creator, now)?;
    let group = commit(ctx, change).await?;
    Ok(json!({"group": group_json(&group)}))
}

async fn group_set(
    ctx: &Context<'_>,
    caller: &Caller,
    request: &Map<String, Value>,
    now: u64,
) -> Answer {
    let fields = required_object(request, "group", "group")?;
    if fields.contains_key("members") {
        return Err(ApiError::bad(
            "groupset does not change members: use groupeditmembers",
        ));
    }
    allow_keys(fields, &GROUP_SETTINGS, "group")?;
    let gid = gid_of(fields)?;
    let patch = group_patch(fields)?;
    let group = existing_group(ctx, gid)?;
    require_admin(caller, &group, |a| a.modify, "modify")?;
    let group = commit(ctx, ctx.directory().set_group(gid, patch, now)?).await?;
    Ok(json!({"group": group_json(&group)}))
}

async fn group_del(ctx: &Context<'_>, caller: &Caller, request: &Map<String, Value>) -> Answer {
    let fields = required_object(request, "group", "group")?;
    allow_keys(fields, &["gid"], "group")?;
    let gid = gid_of(fields)?;
    let group = existing_group(ctx, gid)?;
    require_admin(caller, &group, |a| a.remove, "remove")?;
    commit(ctx, ctx.directory().remove_group(gid)?).await?;
    // Its history goes with it.
    let forget = ctx.router.history.forget(gid);
    if let (Some(durable), false) = (ctx.durable, forget.is_empty()) {
        durable.submit(forget);
    }
    Ok(json!({"group": {"gid": gid}}))
}

async fn group_edit_members(
    ctx: &Context<'_>,
    caller: &Caller,
    request: &Map<String, Value>,
    now: u64,
) -> Answer {
    let fields = required_object(request, "group", "group")?;
    allow_keys(fields, &["gid", "type", "members"], "group")?;
    let gid = gid_of(fields)?;
    let message_type = get_u32(fields, "type", "group.type")?;
    let members = required_object(fields, "members", "group.members")?;
    let edit = members_edit(members, message_type)?;
    let group = existing_group(ctx, gid)?;
    if let Caller::User(actor) = caller {
        may_edit_members(actor, &group, &edit)?;
    }
    let group = commit(ctx, ctx.directory().edit_members(gid, edit, now)?).await?;
    Ok(json!({"group": group_json(&group)}))
}

fn group_get_members(
    ctx: &Context<'_>,
    caller: &Caller,
    request: &Map<String, Value>,
    now: u64,
) -> Answer {
    let fields = required_object(request, "group", "group")?;
    allow_keys(fields, &["gid"], "group")?;
    let gid = gid_of(fields)?;
    let (start, count) = paging(request)?;
    let group = existing_group(ctx, gid)?;
    if let Caller::User(actor) = caller {
        let admin = group.members.get(actor).is_some_and(|m| m.admin.any());
        if !admin {
            decide(Who::User(actor), &group, Action::List, 0, now)
                .map_err(|deny| ApiError::new(deny.code(), deny.reason()))?;
        }
    }
    let mut addresses: Vec<&String> = group.members.keys().collect();
    addresses.sort();
    let total = addresses.len();
    let members: Vec<Value> = addresses
        .into_iter()
        .skip(start)
        .take(count)
        .map(|address| member_json(address, &group.members[address]))
        .collect();
    Ok(json!({
        "group": {"gid": gid},
        "start": start,
        "count": members.len(),
        "total": total,
        "members": members,
    }))
}

fn group_get(ctx: &Context<'_>, caller: &Caller, request: &Map<String, Value>, now: u64) -> Answer {
    let fields = required_object(request, "group", "group")?;
    allow_keys(fields, &["gid"], "group")?;
    let gid = gid_of(fields)?;
    let group = existing_group(ctx, gid)?;
    if let Caller::User(actor) = caller {
        if !group.members.contains_key(actor) {
            decide(Who::User(actor), &group, Action::List, 0, now)
                .map_err(|deny| ApiError::new(deny.code(), deny.reason()))?;
        }
    }
    Ok(json!({"group": group_json(&group)}))
}

fn groups_get(ctx: &Context<'_>, caller: &Caller, request: &Map<String, Value>) -> Answer {
    let (start, count) = paging(request)?;
    let (groups, total) = match caller {
        Caller::Backend => ctx.directory().groups(start, count),
        // A user sees the groups they are a member of.
        Caller::User(actor) => {
            let (all, _) = ctx.directory().groups(0, usize::MAX);
            let mine: Vec<_> = all
                .into_iter()
                .filter(|g| g.members.contains_key(actor))
                .collect();
            let total = mine.len();
            (mine.into_iter().skip(start).take(count).collect(), total)
        }
    };
    let groups: Vec<Value> = groups.iter().map(|g| group_json(g)).collect();
    Ok(json!({"start": start, "count": groups.len(), "total": total, "groups": groups}))
}

/// `message`: a group message from the backend (or, over `$groups/ops`, from the caller
/// itself), through the same ACL as a client PUBLISH. Fields in `message: {...}` or flat:
/// `from`, `gid`, `type`, `message` (the payload), `encoding` ("utf8", default, or
/// "base64"), `qos` (0–2, default 1), `retain`.
async fn message(ctx: &Context<'_>, caller: &Caller, request: &Map<String, Value>) -> Answer {
    let fields = match request.get("message") {
        Some(Value::Object(inner)) => inner,
        _ => request,
    };
    let from = match caller {
        Caller::User(actor) => actor.clone(),
        Caller::Backend => get_str(fields, "from", "message.from")?
            .ok_or_else(|| ApiError::bad("message.from is required"))?
            .to_string(),
    };
    let to = get_str(fields, "to", "message.to")?;
    let gid = match (get_u32(fields, "gid", "message.gid")?, to) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "message.gid and message.to contradict each other: a message goes to a group \
                 or to a user",
            ))
        }
        (None, Some(_)) => 0,
        (Some(0) | None, None) => {
            return Err(ApiError::bad(
                "message.gid (a positive integer) or message.to (a user) is required",
            ))
        }
        (Some(gid), None) => gid,
    };
    let message_type = get_u32(fields, "type", "message.type")?.unwrap_or(0);
    let text = get_str(fields, "message", "message.message")?
        .ok_or_else(|| ApiError::bad("message.message (the payload) is required"))?;
    let payload = match get_str(fields, "encoding", "message.encoding")?.unwrap_or("utf8") {
        "utf8" => bytes::Bytes::copy_from_slice(text.as_bytes()),
        "base64" => {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| ApiError::bad(format!("message.message is not base64: {e}")))?;
            bytes::Bytes::from(decoded)
        }
        other => {
            return Err(ApiError::bad(format!(
                "message.encoding is utf8 or base64, not {other:?}"
            )))
        }
    };
    let qos = match get_u64(fields, "qos", "message.qos")?.unwrap_or(1) {
        0 => crate::codec::QoS::AtMostOnce,
        1 => crate::codec::QoS::AtLeastOnce,
        2 => crate::codec::QoS::ExactlyOnce,
        other => {
            return Err(ApiError::bad(format!(
                "message.qos is 0, 1 or 2, not {other}"
            )))
        }
    };
    let retain = get_bool(fields, "retain", "message.retain")?.unwrap_or(false);
    if let Some(to) = to {
        if retain {
            return Err(ApiError::bad("a user message is not retained"));
        }
        let (topic, queued) = crate::groups::backend::publish_to_user(
            ctx.router,
            ctx.durable,
            &from,
            to,
            payload,
            qos,
        )
        .await?;
        return Ok(json!({"message": {"to": to, "topic": topic, "queued": queued}}));
    }
    let request = crate::groups::backend::BackendMessage {
        from,
        gid,
        message_type,
        payload,
        qos,
        retain,
    };
    let (topic, queued) = crate::groups::backend::publish(ctx.router, ctx.durable, request).await?;
    Ok(json!({"message": {"gid": gid, "type": message_type, "topic": topic, "queued": queued}}))
}

/// `groupmessages`: the group's history, newest first, paged. Over `$groups/ops` a
/// member sees messages they may receive, from the time they joined (admins: all).
fn group_messages(
    ctx: &Context<'_>,
    caller: &Caller,
    request: &Map<String, Value>,
    now: u64,
) -> Answer {
    let fields = required_object(request, "group", "group")?;
    allow_keys(fields, &["gid"], "group")?;
    let gid = gid_of(fields)?;
    let (start, count) = paging(request)?;
    let group = existing_group(ctx, gid)?;
    let mut entries = ctx.router.history.entries(gid, now);
    if let Caller::User(actor) = caller {
        // Refused outright if the caller may receive nothing of the group.
        decide(Who::User(actor), &group, Action::Recv, 0, now)
            .map_err(|deny| ApiError::new(deny.code(), deny.reason()))?;
        let member = group.members.get(actor);
        let admin = member.is_some_and(|m| m.admin.any());
        let since = member.map_or(u64::MAX, |m| m.since);
        entries.retain(|e| {
            (admin || e.ts >= since)
                && decide(Who::User(actor), &group, Action::Recv, e.message_type, now).is_ok()
        });
    }
    let total = entries.len();
    let messages: Vec<Value> = entries
        .iter()
        .rev()
        .skip(start)
        .take(count)
        .map(|e| {
            let (payload, encoding) = match std::str::from_utf8(&e.payload) {
                Ok(text) => (text.to_string(), "utf8"),
                Err(_) => {
                    use base64::Engine;
                    (
                        base64::engine::general_purpose::STANDARD.encode(&e.payload),
                        "base64",
                    )
                }
            };
            json!({"id": e.id, "from": e.from, "type": e.message_type, "ts": e.ts,
                   "payload": payload, "encoding": encoding})
        })
        .collect();
    Ok(json!({
        "group": {"gid": gid},
        "start": start,
        "count": messages.len(),
        "total": total,
        "messages": messages,
    }))
}

fn existing_group(ctx: &Context<'_>, gid: Gid) -> Result<Arc<Group>, ApiError> {
    ctx.directory()
        .group(gid)
        .ok_or_else(|| DirError::NoGroup(gid).into())
}

fn group_patch(group: &Map<String, Value>) -> Result<GroupPatch, ApiError> {
    let flags = match get_u64(group, "flags", "group.flags")? {
        Some(flags) => Some(
            u32::try_from(flags)
                .map_err(|_| ApiError::bad(format!("group.flags {flags} does not fit 32 bits")))?,
        ),
        None => None,
    };
    let permissions = match group.get("permissions") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let permissions: Permissions = typed(value, "group.permissions")?;
            permissions
                .validate()
                .map_err(|e| ApiError::bad(format!("group.{e}")))?;
            Some(permissions)
        }
    };
    let message_type = get_u32(group, "type", "group.type")?;
    if message_type.is_some() && permissions.is_none() && !group.contains_key("members") {
        return Err(ApiError::bad(
            "group.type scopes group.permissions (or members.permissions): give them",
        ));
    }
    let validity = match object(group, "validity", "group.validity")? {
        Some(validity) => {
            allow_keys(
                validity,
                &["start", "duration", "expiryext"],
                "group.validity",
            )?;
            Some(ValidityPatch {
                start: get_u64(validity, "start", "group.validity.start")?,
                duration: get_u64(validity, "duration", "group.validity.duration")?,
                expiryext: get_u64(validity, "expiryext", "group.validity.expiryext")?,
            })
        }
        None => None,
    };
    Ok(GroupPatch {
        name: name_of(group, "group.name")?,
        flags,
        // Per-type permissions only when `type` is given; without it they are the default
        // rule's.
        permissions,
        message_type: message_type.filter(|_| group.get("permissions").is_some()),
        active: get_bool(group, "active", "group.active")?,
        validity,
    })
}

fn members_edit(
    members: &Map<String, Value>,
    message_type: Option<u32>,
) -> Result<MembersEdit, ApiError> {
    allow_keys(
        members,
        &["m", "remove", "permissions", "admin"],
        "group.members",
    )?;
    let addresses = match members.get("m") {
        Some(Value::String(list)) => list.split(',').map(str::trim).map(String::from).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.trim().to_string()),
                other => Err(ApiError::bad(format!(
                    "group.members.m lists addresses (strings), not {}",
                    kind(other)
                ))),
            })
            .collect::<Result<Vec<String>, _>>()?,
        None | Some(Value::Null) => return Err(ApiError::bad("group.members.m is required")),
        Some(other) => {
            return Err(ApiError::bad(format!(
                "group.members.m is a comma-separated string of addresses, not {}",
                kind(other)
            )))
        }
    };
    let mut unique: Vec<String> = Vec::with_capacity(addresses.len());
    for address in addresses.into_iter().filter(|a| !a.is_empty()) {
        validate_address(&address)
            .map_err(|e| ApiError::bad(format!("group.members.m: {address:?}: {e}")))?;
        if !unique.contains(&address) {
            unique.push(address);
        }
    }
    if unique.is_empty() {
        return Err(ApiError::bad("group.members.m names no member"));
    }
    let permissions: Option<MemberPermissionsPatch> = match members.get("permissions") {
        None | Some(Value::Null) => None,
        Some(value) => Some(typed(value, "group.members.permissions")?),
    };
    let admin: Option<AdminPatch> = match members.get("admin") {
        None | Some(Value::Null) => None,
        Some(value) => Some(typed(value, "group.members.admin")?),
    };
    let remove = get_bool(members, "remove", "group.members.remove")?.unwrap_or(false);
    if remove && (permissions.is_some() || admin.is_some()) {
        return Err(ApiError::bad(
            "group.members: remove cannot be combined with permissions or admin",
        ));
    }
    if message_type.is_some() && permissions.is_none() && !remove {
        return Err(ApiError::bad(
            "group.type scopes group.members.permissions: give them",
        ));
    }
    Ok(MembersEdit {
        addresses: unique,
        remove,
        permissions,
        admin,
        message_type: message_type.filter(|_| permissions.is_some()),
    })
}

fn gid_of(group: &Map<String, Value>) -> Result<Gid, ApiError> {
    match get_u32(group, "gid", "group.gid")? {
        Some(0) => Err(ApiError::bad("group.gid is a positive integer")),
        Some(gid) => Ok(gid),
        None => Err(ApiError::bad("group.gid is required")),
    }
}

fn paging(request: &Map<String, Value>) -> Result<(usize, usize), ApiError> {
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let start = get_u64(request, "start", "start")?.map_or(0, to_usize);
    // No hidden cap: without `count`, everything from `start`.
    let count = get_u64(request, "count", "count")?.map_or(usize::MAX, to_usize);
    Ok((start, count))
}

/// A group as responses show it. `validity.start` and `validity.expires` are absolute
/// Unix seconds (requests give `start` relative to now).
pub fn group_json(group: &Group) -> Value {
    let types: Vec<Value> = group
        .type_flags
        .iter()
        .map(|(t, flags)| {
            json!({"type": t, "flags": flags, "permissions": Permissions::from_flags(*flags)})
        })
        .collect();
    json!({
        "gid": group.gid,
        "name": group.name,
        "flags": group.flags,
        "permissions": Permissions::from_flags(group.flags),
        "types": types,
        "active": group.active,
        "nostore": group.no_store(),
        "loopback": group.loopback(),
        "validity": {
            "start": group.start,
            "duration": group.duration,
            "expiryext": group.expiryext,
            "expires": group.expires_at,
        },
        "created": group.created,
        "member_count": group.members.len(),
    })
}

fn member_json(address: &str, member: &Member) -> Value {
    let types: Vec<Value> = member
        .type_permissions
        .iter()
        .map(|(t, permissions)| json!({"type": t, "permissions": permissions}))
        .collect();
    json!({
        "address": address,
        "permissions": member.permissions,
        "types": types,
        "admin": member.admin,
        "since": member.since,
    })
}

// ---------------------------------------------------------------------------------------
// The real-time API's admin rules (SPEC §8)
// ---------------------------------------------------------------------------------------

fn flags_of(group: &Group, address: &str) -> AdminFlags {
    group
        .members
        .get(address)
        .map(|m| m.admin)
        .unwrap_or_default()
}

fn require_admin(
    caller: &Caller,
    group: &Group,
    flag: fn(&AdminFlags) -> bool,
    name: &str,
) -> Result<(), ApiError> {
    let Caller::User(actor) = caller else {
        return Ok(());
    };
    let flags = flags_of(group, actor);
    if flags.owner || flag(&flags) {
        Ok(())
    } else {
        Err(ApiError::permission(format!(
            "this needs the {name} admin flag (or owner) in group {}",
            group.gid
        )))
    }
}

/// Who may add, edit and remove whom: `adduser`/`remuser` for plain members,
/// `addadmin`/`remadmin` to grant / revoke admin flags (and to edit or remove members who
/// hold some), `remowner` to remove an owner or revoke `owner`; granting `owner` takes
/// an owner; an owner holds all; anyone may remove themselves.
fn may_edit_members(actor: &str, group: &Group, edit: &MembersEdit) -> Result<(), ApiError> {
    let me = flags_of(group, actor);
    let need = |has: bool, what: &str, target: &str| -> Result<(), ApiError> {
        if me.owner || has {
            Ok(())
        } else {
            Err(ApiError::permission(format!(
                "{what} {target:?} needs the matching admin flag in group {}",
                group.gid
            )))
        }
    };
    for target in &edit.addresses {
        let current = group.members.get(target.as_str());
        if edit.remove {
            if target == actor {
                continue;
            }
            match current {
                Some(m) if m.admin.owner => need(me.remowner, "removing owner", target)?,
                Some(m) if m.admin.any() => need(me.remadmin, "removing admin", target)?,
                _ => need(me.remuser, "removing", target)?,
            }
            continue;
        }
        let before = current.map(|m| m.admin).unwrap_or_default();
        match current {
            None => need(me.adduser, "adding", target)?,
            Some(m) if edit.permissions.is_some() => {
                if m.admin.owner {
                    need(me.remowner, "editing owner", target)?
                } else if m.admin.any() {
                    need(me.addadmin || me.remadmin, "editing admin", target)?
                } else {
                    need(me.adduser || me.remuser, "editing", target)?
                }
            }
            Some(_) => {}
        }
        if let Some(patch) = &edit.admin {
            let after = patch.apply_to(before);
            if after.owner && !before.owner {
                need(false, "making an owner of", target)?;
            }
            if before.owner && !after.owner {
                need(me.remowner, "revoking owner of", target)?;
            }
            let (granted, revoked) = flag_changes(&before, &after);
            if granted {
                need(me.addadmin, "granting admin flags to", target)?;
            }
            if revoked {
                need(me.remadmin, "revoking admin flags of", target)?;
            }
        }
    }
    Ok(())
}

/// Whether any non-owner admin flag goes false → true, and any true → false.
fn flag_changes(before: &AdminFlags, after: &AdminFlags) -> (bool, bool) {
    let pairs = [
        (before.admin, after.admin),
        (before.modify, after.modify),
        (before.remove, after.remove),
        (before.adduser, after.adduser),
        (before.remuser, after.remuser),
        (before.addadmin, after.addadmin),
        (before.remadmin, after.remadmin),
        (before.remowner, after.remowner),
    ];
    let granted = pairs.iter().any(|(b, a)| !b && *a);
    let revoked = pairs.iter().any(|(b, a)| *b && !a);
    (granted, revoked)
}

// ---------------------------------------------------------------------------------------
// Strict field access
// ---------------------------------------------------------------------------------------

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn allow_keys(map: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(ApiError::bad(format!(
            "{path} has no field {key:?}; its fields are {}",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(other) => Err(ApiError::bad(format!(
            "{path} must be an object, not {}",
            kind(other)
        ))),
    }
}

fn required_object<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a Map<String, Value>, ApiError> {
    object(map, key, path)?.ok_or_else(|| ApiError::bad(format!("{path} is required")))
}

fn get_str<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::bad(format!(
            "{path} must be a string, not {}",
            kind(other)
        ))),
    }
}

fn name_of(map: &Map<String, Value>, path: &str) -> Result<Option<String>, ApiError> {
    match get_str(map, "name", path)? {
        Some(name) if name.chars().count() > MAX_NAME_CHARS => Err(ApiError::bad(format!(
            "{path} has more than {MAX_NAME_CHARS} characters"
        ))),
        Some(name) if name.contains('\0') => {
            Err(ApiError::bad(format!("{path} may not contain NUL")))
        }
        other => Ok(other.map(String::from)),
    }
}

fn get_bool(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<bool>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::bad(format!(
            "{path} must be a boolean, not {}",
            kind(other)
        ))),
    }
}

fn get_u64(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u64>, ApiError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad(format!("{path} must be a non-negative integer, not {n}"))
        }),
        Some(other) => Err(ApiError::bad(format!(
            "{path} must be a non-negative integer, not {}",
            kind(other)
        ))),
    }
}

fn get_u32(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u32>, ApiError> {
    match get_u64(map, key, path)? {
        Some(n) => u32::try_from(n)
            .map(Some)
            .map_err(|_| ApiError::bad(format!("{path} {n} does not fit 32 bits"))),
        None => Ok(None),
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: &Value, path: &str) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad(format!(
            "{path} must be an object, not {}",
            kind(value)
        )));
    }
    serde_json::from_value(value.clone()).map_err(|e| ApiError::bad(format!("{path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::retained::Retained;
    use crate::stats::Stats;

    const APP: &str = "unit-app-token";

    struct Fixture {
        config: Config,
        router: Router,
    }

    impl Fixture {
        fn new() -> Fixture {
            let stats = Arc::new(Stats::default());
            let directory = Arc::new(Directory::new(None, &[]).unwrap());
            let router = Router::new(
                Retained::new(None, stats.clone()),
                None,
                None,
                directory,
                Arc::new(crate::groups::history::History::new(
                    Default::default(),
                    None,
                )),
                stats,
            );
            let mut config = Config::default();
            config.auth.admin_token = Some(APP.into());
            Fixture { config, router }
        }

        fn ctx(&self) -> Context<'_> {
            Context {
                config: &self.config,
                router: &self.router,
                durable: None,
            }
        }

        fn run(&self, caller: Caller, mut request: Value) -> (StatusCode, Value) {
            if caller == Caller::Backend && request.get("token").is_none() {
                request["token"] = json!(APP);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(execute_in(&self.ctx(), caller, request))
        }

        fn ok(&self, caller: Caller, request: Value) -> Value {
            let (status, answer) = self.run(caller, request.clone());
            assert_eq!(status, StatusCode::OK, "{request} → {answer}");
            answer
        }

        fn refused(&self, caller: Caller, request: Value, code: &str) {
            let (status, answer) = self.run(caller, request.clone());
            assert_eq!(answer["error"], code, "{request} → {answer}");
            assert_eq!(status, status_of(code));
        }

        fn user(&self, address: &str) {
            self.ok(
                Caller::Backend,
                json!({"op": "useradd", "user": {"address": address}}),
            );
        }

        fn fingerprint(&self) -> String {
            let dir = &self.router.directory;
            let (users, _) = dir.users(0, usize::MAX);
            let (groups, _) = dir.groups(0, usize::MAX);
            let groups: Vec<&Group> = groups.iter().map(|g| &**g).collect();
            format!(
                "{}{}",
                serde_json::to_string(&users).unwrap(),
                serde_json::to_string(&groups).unwrap()
            )
        }
    }

    fn u(address: &str) -> Caller {
        Caller::User(address.into())
    }

    #[test]
    fn statuses_of_every_code() {
        let expected = [
            ("BADREQUEST", 400),
            ("BADOP", 400),
            ("AUTHFAIL", 401),
            ("PERMISSION", 403),
            ("GROUPINACTIVE", 403),
            ("GROUPEXPIRED", 403),
            ("NOUSER", 404),
            ("NOGROUP", 404),
            ("NOTMEMBER", 404),
            ("EXISTS", 409),
            ("INTERNAL", 500),
        ];
        assert_eq!(expected.len(), ERROR_CODES.len());
        for (code, status) in expected {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn user_ops_are_backend_only_and_the_creator_owns_the_group() {
        let f = Fixture::new();
        f.user("alice");
        for op in ["useradd", "userset", "userdel", "usersget"] {
            f.refused(
                u("alice"),
                json!({"op": op, "user": {"address": "bob"}}),
                "PERMISSION",
            );
        }
        // The real-time API takes no app token; a user caller is not asked for one.
        let answer = f.ok(
            u("alice"),
            json!({"op": "groupadd", "group": {"name": "g"}}),
        );
        let gid = answer["group"]["gid"].as_u64().unwrap() as Gid;
        let group = f.router.directory.group(gid).unwrap();
        assert!(group.members["alice"].admin.owner);
        f.refused(
            u("ghost"),
            json!({"op": "groupadd", "group": {"name": "g"}}),
            "NOUSER",
        );
        // `message` without its fields.
        f.refused(Caller::Backend, json!({"op": "message"}), "BADREQUEST");
    }

    #[test]
    fn admin_flags_decide_who_may_do_what() {
        let f = Fixture::new();
        for user in [
            "owner", "mod", "plain", "adder", "remover", "granter", "other",
        ] {
            f.user(user);
        }
        let gid = f.ok(
            u("owner"),
            json!({"op": "groupadd", "group": {"name": "g"}}),
        )["group"]["gid"]
            .clone();
        let edit = |members: Value| json!({"op": "groupeditmembers", "group": {"gid": gid, "members": members}});
        f.ok(Caller::Backend, edit(json!({"m": "plain,other"})));
        f.ok(
            Caller::Backend,
            edit(json!({"m": "mod", "admin": {"modify": true}})),
        );
        f.ok(
            Caller::Backend,
            edit(json!({"m": "adder", "admin": {"adduser": true, "remuser": true}})),
        );
        f.ok(
            Caller::Backend,
            edit(json!({"m": "remover", "admin": {"remove": true}})),
        );
        f.ok(
            Caller::Backend,
            edit(json!({"m": "granter", "admin": {"addadmin": true}})),
        );
        let groupset = json!({"op": "groupset", "group": {"gid": gid, "name": "renamed"}});
        f.refused(u("plain"), groupset.clone(), "PERMISSION");
        f.refused(u("adder"), groupset.clone(), "PERMISSION");
        f.ok(u("mod"), groupset.clone());
        f.ok(u("owner"), groupset);
        // adduser / remuser: plain members only.
        f.user("new1");
        f.refused(u("plain"), edit(json!({"m": "new1"})), "PERMISSION");
        f.ok(u("adder"), edit(json!({"m": "new1"})));
        f.ok(
            u("adder"),
            edit(json!({"m": "new1", "permissions": {"send": false}})),
        );
        f.refused(
            u("adder"),
            edit(json!({"m": "new1", "admin": {"modify": true}})),
            "PERMISSION",
        );
        f.refused(
            u("adder"),
            edit(json!({"m": "mod", "remove": true})),
            "PERMISSION",
        );
        f.ok(u("adder"), edit(json!({"m": "new1", "remove": true})));
        // addadmin grants flags but cannot revoke them or make an owner.
        f.ok(
            u("granter"),
            edit(json!({"m": "plain", "admin": {"modify": true}})),
        );
        f.refused(
            u("granter"),
            edit(json!({"m": "plain", "admin": {"modify": false}})),
            "PERMISSION",
        );
        f.refused(
            u("granter"),
            edit(json!({"m": "other", "admin": {"owner": true}})),
            "PERMISSION",
        );
        // Only remowner (or an owner) removes an owner; the owner holds all.
        f.refused(
            u("granter"),
            edit(json!({"m": "owner", "remove": true})),
            "PERMISSION",
        );
        f.ok(
            u("owner"),
            edit(json!({"m": "other", "admin": {"owner": true}})),
        );
        f.ok(u("owner"), edit(json!({"m": "other", "remove": true})));
        // Anyone may leave; nobody else may remove a member without the flag.
        f.refused(
            u("plain"),
            edit(json!({"m": "adder", "remove": true})),
            "PERMISSION",
        );
        f.ok(u("plain"), edit(json!({"m": "plain", "remove": true})));
        // groupdel needs remove.
        let groupdel = json!({"op": "groupdel", "group": {"gid": gid}});
        f.refused(u("mod"), groupdel.clone(), "PERMISSION");
        f.ok(u("remover"), groupdel);
    }

    #[test]
    fn groupgetmembers_needs_list_or_an_admin_flag() {
        let f = Fixture::new();
        for user in ["alice", "bob", "carol", "admin"] {
            f.user(user);
        }
        let answer = f.ok(
            Caller::Backend,
            json!({"op": "groupadd", "group": {"name": "g", "permissions": {"list": 1},
                   "members": {"m": "alice,bob"}}}),
        );
        let gid = answer["group"]["gid"].clone();
        let edit = |members: Value| json!({"op": "groupeditmembers", "group": {"gid": gid, "members": members}});
        f.ok(
            Caller::Backend,
            edit(json!({"m": "bob", "permissions": {"list": false}})),
        );
        f.ok(
            Caller::Backend,
            edit(json!({"m": "admin", "permissions": {"list": false}, "admin": {"adduser": true}})),
        );
        let get = json!({"op": "groupgetmembers", "group": {"gid": gid}});
        assert_eq!(f.ok(u("alice"), get.clone())["total"], 3);
        f.refused(u("bob"), get.clone(), "PERMISSION");
        f.refused(u("carol"), get.clone(), "NOTMEMBER");
        assert_eq!(f.ok(u("admin"), get.clone())["total"], 3);
        // An inactive or expired group lists to admins only.
        f.ok(
            Caller::Backend,
            json!({"op": "groupset", "group": {"gid": gid, "active": false}}),
        );
        f.refused(u("alice"), get.clone(), "GROUPINACTIVE");
        f.ok(u("admin"), get.clone());
        f.ok(
            Caller::Backend,
            json!({"op": "groupset", "group": {"gid": gid, "active": true,
                   "validity": {"start": 0, "duration": 0}}}),
        );
        f.refused(u("alice"), get.clone(), "GROUPEXPIRED");
        // groupsget shows a user only their own groups.
        f.ok(
            Caller::Backend,
            json!({"op": "groupadd", "group": {"name": "other"}}),
        );
        assert_eq!(f.ok(u("alice"), json!({"op": "groupsget"}))["total"], 1);
        assert_eq!(
            f.ok(Caller::Backend, json!({"op": "groupsget"}))["total"],
            2
        );
    }

    #[test]
    fn the_app_token_generated_is_checked_by_its_hash() {
        let mut f = Fixture::new();
        f.config.auth.admin_token = None;
        let request = json!({"op": "usersget", "token": "generated"});
        f.refused(Caller::Backend, request.clone(), "AUTHFAIL");
        f.router
            .directory
            .set_admin_token_sha256(hash_token("generated"));
        f.ok(Caller::Backend, request);
        f.refused(
            Caller::Backend,
            json!({"op": "usersget", "token": "generate"}),
            "AUTHFAIL",
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 500,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Random JSON requests (known ops, garbage fields; as the backend with the right
        /// token or as a user) change nothing and are refused with a known code.
        #[test]
        fn garbage_changes_nothing(
            op in proptest::sample::select(&OPS[..11]),
            user in arbitrary_json(),
            group in arbitrary_json(),
            as_user in proptest::bool::ANY,
        ) {
            let f = Fixture::new();
            f.user("alice");
            f.ok(Caller::Backend, json!({"op": "groupadd", "group": {"members": {"m": "alice"}}}));
            let before = f.fingerprint();
            let caller = if as_user { u("alice") } else { Caller::Backend };
            let (status, answer) = f.run(caller, json!({"op": op, "user": user, "group": group}));
            if answer["result"] == json!(true) {
                // Only reads may succeed on garbage.
                proptest::prop_assert!(op.ends_with("get"), "{}", answer);
            } else {
                let code = answer["error"].as_str().unwrap_or_default();
                proptest::prop_assert!(ERROR_CODES.contains(&code), "{}", answer);
                proptest::prop_assert_eq!(status, status_of(code));
            }
            proptest::prop_assert_eq!(f.fingerprint(), before);
        }
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u32>().prop_map(Value::from),
            "[a-z,]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 20, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                // At least one key the API does not know.
                (
                    "x[a-z]{0,4}",
                    inner.clone(),
                    prop::collection::btree_map(
                        prop::sample::select(
                            &[
                                "gid",
                                "m",
                                "name",
                                "address",
                                "members",
                                "permissions",
                                "admin",
                                "flags",
                                "type",
                                "remove",
                                "token"
                            ][..]
                        ),
                        inner,
                        0..3,
                    )
                )
                    .prop_map(|(key, value, known)| {
                        let mut map: Map<String, Value> =
                            known.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                        map.insert(key, value);
                        Value::Object(map)
                    }),
            ]
        })
    }
}
