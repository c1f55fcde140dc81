//! The legacy flat form of the backend API (SPEC §8): `GET /api?op=...&token=...` or a
//! form-encoded `POST /api`, turned into the JSON request the executor takes.
//!
//! | flat field | JSON field |
//! |---|---|
//! | `op`, `token`, `id`, `start`, `count` | the same, top level |
//! | `addr` / `address` | `user.address` (user ops) |
//! | `name` | `user.name` (user ops) or `group.name` |
//! | `active` | `user.active` or `group.active` |
//! | `expiry` | `user.token.expiry` (minutes; user ops) or `group.validity.duration` (seconds) |
//! | `delete` | `user.token.remove` (userset) or `group.members.remove` |
//! | `flag` | `group.flags` |
//! | `expiryext` | `group.validity.expiryext` |
//! | `gid`, `type` | `group.gid`, `group.type` |
//! | `m` | `group.members.m` |
//! | `cs`, `cr`, `canpub`, `cansub`, `canlist` | `group.members.permissions.{send, recv, pub, sub, list}` |
//!
//! Numbers and booleans (`1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`) are converted;
//! a value that is neither stays a string, so the executor refuses it with the JSON
//! field's name. Unknown fields are ignored (mesibo clients send e.g. `appid`); for a
//! repeated field the last value counts.

use serde_json::{Map, Value};

/// The JSON request for the flat `fields`.
pub fn to_request(fields: impl IntoIterator<Item = (String, String)>) -> Value {
    let mut flat: Vec<(String, String)> = Vec::new();
    for (key, value) in fields {
        flat.retain(|(k, _)| *k != key);
        flat.push((key, value));
    }
    let get = |key: &str| flat.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let mut request = Map::new();
    if let Some(op) = get("op") {
        request.insert("op".into(), Value::String(op.to_string()));
    }
    for key in ["token", "id"] {
        if let Some(value) = get(key) {
            request.insert(key.into(), Value::String(value.to_string()));
        }
    }
    for key in ["start", "count"] {
        if let Some(value) = get(key) {
            request.insert(key.into(), number(value));
        }
    }
    let op = get("op").unwrap_or_default();
    if op.starts_with("user") {
        let mut user = Map::new();
        if let Some(address) = get("address").or(get("addr")) {
            user.insert("address".into(), Value::String(address.to_string()));
        }
        if let Some(name) = get("name") {
            user.insert("name".into(), Value::String(name.to_string()));
        }
        if let Some(active) = get("active") {
            user.insert("active".into(), boolean(active));
        }
        let mut token = Map::new();
        if let Some(expiry) = get("expiry") {
            token.insert("expiry".into(), number(expiry));
        }
        if let Some(delete) = get("delete").filter(|_| op == "userset") {
            token.insert("remove".into(), boolean(delete));
        }
        if !token.is_empty() {
            user.insert("token".into(), Value::Object(token));
        }
        if !user.is_empty() || op != "usersget" {
            request.insert("user".into(), Value::Object(user));
        }
        return Value::Object(request);
    }
    if !op.starts_with("group") {
        return Value::Object(request);
    }
    let mut group = Map::new();
    if let Some(name) = get("name") {
        group.insert("name".into(), Value::String(name.to_string()));
    }
    for (flat_key, key) in [("gid", "gid"), ("flag", "flags"), ("type", "type")] {
        if let Some(value) = get(flat_key) {
            group.insert(key.into(), number(value));
        }
    }
    if let Some(active) = get("active") {
        group.insert("active".into(), boolean(active));
    }
    let mut validity = Map::new();
    for (flat_key, key) in [("expiry", "duration"), ("expiryext", "expiryext")] {
        if let Some(value) = get(flat_key) {
            validity.insert(key.into(), number(value));
        }
    }
    if !validity.is_empty() {
        group.insert("validity".into(), Value::Object(validity));
    }
    let mut members = Map::new();
    if let Some(m) = get("m") {
        members.insert("m".into(), Value::String(m.to_string()));
    }
    if let Some(delete) = get("delete") {
        members.insert("remove".into(), boolean(delete));
    }
    let mut permissions = Map::new();
    for (flat_key, key) in [
        ("cs", "send"),
        ("cr", "recv"),
        ("canpub", "pub"),
        ("cansub", "sub"),
        ("canlist", "list"),
    ] {
        if let Some(value) = get(flat_key) {
            permissions.insert(key.into(), boolean(value));
        }
    }
    if !permissions.is_empty() {
        members.insert("permissions".into(), Value::Object(permissions));
    }
    if !members.is_empty() {
        group.insert("members".into(), Value::Object(members));
    }
    if !group.is_empty() || op != "groupsget" {
        request.insert("group".into(), Value::Object(group));
    }
    Value::Object(request)
}

fn number(value: &str) -> Value {
    match value.trim().parse::<u64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::String(value.to_string()),
    }
}

fn boolean(value: &str) -> Value {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Value::Bool(true),
        "0" | "false" | "no" | "off" => Value::Bool(false),
        _ => Value::String(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn flat_fields_become_the_json_shape() {
        assert_eq!(
            to_request(fields(&[
                ("op", "useradd"),
                ("token", "T"),
                ("addr", "alice"),
                ("name", "Alice"),
                ("expiry", "60"),
                ("appid", "ignored"),
            ])),
            json!({"op": "useradd", "token": "T",
                   "user": {"address": "alice", "name": "Alice", "token": {"expiry": 60}}})
        );
        assert_eq!(
            to_request(fields(&[
                ("op", "groupeditmembers"),
                ("gid", "7"),
                ("m", "a,b"),
                ("cs", "1"),
                ("cr", "0"),
                ("canlist", "true"),
                ("delete", "0"),
                ("type", "3"),
            ])),
            json!({"op": "groupeditmembers", "group": {"gid": 7, "type": 3, "members": {
                "m": "a,b", "remove": false,
                "permissions": {"send": true, "recv": false, "list": true}}}})
        );
        assert_eq!(
            to_request(fields(&[
                ("op", "groupadd"),
                ("name", "g"),
                ("flag", "x"),
                ("expiry", "100"),
                ("expiryext", "5"),
                ("active", "maybe"),
            ])),
            json!({"op": "groupadd", "group": {"name": "g", "flags": "x", "active": "maybe",
                   "validity": {"duration": 100, "expiryext": 5}}})
        );
        assert_eq!(
            to_request(fields(&[
                ("op", "groupsget"),
                ("start", "2"),
                ("count", "1")
            ])),
            json!({"op": "groupsget", "start": 2, "count": 1})
        );
        assert_eq!(
            to_request(fields(&[
                ("op", "userset"),
                ("address", "a"),
                ("delete", "1")
            ])),
            json!({"op": "userset", "user": {"address": "a", "token": {"remove": true}}})
        );
        assert_eq!(
            to_request(fields(&[("op", "x"), ("op", "groupget"), ("gid", "1")])),
            json!({"op": "groupget", "group": {"gid": 1}})
        );
    }
}
