//! The management API (SPEC §8) over real HTTP against a real broker: every op, every
//! error code the backend API can produce with its HTTP status, paging, the legacy flat
//! form, `id` echo, bad input that changes nothing, persistence across a restart, the
//! generated app token, `$users/{address}/events` reaching an MQTT client, and a property
//! test that throws garbage at the endpoint.
//!
//! Every wait is bounded; everything runs on 127.0.0.1.

use reqwest::Client;
use rookery::{BrokerHandle, Config};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const APP: &str = "app-token-for-tests";
const WAIT: Duration = Duration::from_secs(5);

struct Api {
    handle: Option<BrokerHandle>,
    http: SocketAddr,
    client: Client,
}

fn config(data: &Path, durability: &str) -> Config {
    let mut config = Config::default();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = data.to_path_buf();
    config.storage.durability = match durability {
        "none" => rookery::config::Durability::None,
        _ => rookery::config::Durability::Strict,
    };
    config.sys.interval_secs = 0;
    config.auth.admin_token = Some(APP.to_string());
    config
}

impl Api {
    async fn start(config: Config) -> Api {
        let handle = tokio::time::timeout(WAIT, rookery::start(config))
            .await
            .expect("the broker starts in time")
            .expect("the broker starts");
        Api {
            http: handle.http_addr(),
            handle: Some(handle),
            client: Client::builder().timeout(WAIT).build().unwrap(),
        }
    }

    /// Starts again on the data directory of a broker just stopped. `shutdown` waits for
    /// its own tasks, but a connection task may drop its hold on the store (and its lock)
    /// a moment after it stops counting, so the first attempt may find the store locked.
    async fn restart(config: Config) -> Api {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match rookery::start(config.clone()).await {
                Ok(handle) => {
                    return Api {
                        http: handle.http_addr(),
                        handle: Some(handle),
                        client: Client::builder().timeout(WAIT).build().unwrap(),
                    }
                }
                Err(error) if std::time::Instant::now() < deadline => {
                    assert!(error.to_string().contains("lock"), "{error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("the broker does not start again: {error}"),
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}/api", self.http)
    }

    fn mqtt(&self) -> SocketAddr {
        self.handle.as_ref().unwrap().mqtt_addr()
    }

    /// POSTs `body` as JSON with the app token added (unless it has one).
    async fn call(&self, mut body: Value) -> (u16, Value) {
        if body.get("token").is_none() {
            body["token"] = json!(APP);
        }
        self.raw_json(&body).await
    }

    /// Like [`Api::call`], asserting success.
    async fn ok(&self, body: Value) -> Value {
        let (status, answer) = self.call(body.clone()).await;
        assert_eq!(status, 200, "{body} → {answer}");
        assert_eq!(answer["result"], true, "{body} → {answer}");
        answer
    }

    /// Like [`Api::call`], asserting the error code and HTTP status.
    async fn fails(&self, body: Value, code: &str, status: u16) -> Value {
        let (got, answer) = self.call(body.clone()).await;
        assert_eq!(answer["result"], false, "{body} → {answer}");
        assert_eq!(answer["error"], code, "{body} → {answer}");
        assert_eq!(got, status, "{body} → {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
        answer
    }

    async fn raw_json(&self, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url())
            .json(body)
            .send()
            .await
            .unwrap();
        decode(response).await
    }

    async fn raw_bytes(&self, body: Vec<u8>, content_type: &str) -> (u16, Value) {
        let response = self
            .client
            .post(self.url())
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        decode(response).await
    }

    async fn get(&self, query: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .client
            .get(self.url())
            .query(query)
            .send()
            .await
            .unwrap();
        decode(response).await
    }

    async fn form(&self, fields: &[(&str, &str)]) -> (u16, Value) {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.raw_bytes(body.into_bytes(), "application/x-www-form-urlencoded")
            .await
    }

    async fn add_user(&self, address: &str) -> String {
        let answer = self
            .ok(json!({"op": "useradd", "user": {"address": address}}))
            .await;
        answer["user"]["token"].as_str().unwrap().to_string()
    }

    async fn add_group(&self, group: Value) -> u64 {
        let answer = self.ok(json!({"op": "groupadd", "group": group})).await;
        answer["group"]["gid"].as_u64().unwrap()
    }

    /// Everything the directory holds, as the API shows it.
    async fn snapshot(&self) -> Value {
        let users = self.ok(json!({"op": "usersget"})).await;
        let groups = self.ok(json!({"op": "groupsget"})).await;
        let mut members = Vec::new();
        for group in groups["groups"].as_array().unwrap() {
            let gid = &group["gid"];
            let answer = self
                .ok(json!({"op": "groupgetmembers", "group": {"gid": gid}}))
                .await;
            members.push(answer["members"].clone());
        }
        json!({"users": users["users"], "groups": groups["groups"], "members": members})
    }

    async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown(Duration::from_secs(1)).await;
        }
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = response.bytes().await.unwrap();
    let value: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(content_type.as_deref(), Some("application/json"));
    (status, value)
}

#[tokio::test]
async fn user_ops() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    let answer = api
        .ok(json!({"op": "useradd", "id": "r1",
                   "user": {"address": "alice", "name": "Alice", "token": {"expiry": 60}}}))
        .await;
    assert_eq!(answer["op"], "useradd");
    assert_eq!(answer["id"], "r1");
    let user = &answer["user"];
    assert_eq!(user["address"], "alice");
    assert_eq!(user["name"], "Alice");
    assert!(user["uid"].as_u64().unwrap() >= 1);
    let token = user["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 64);
    let expires = user["token_expires"].as_u64().unwrap();
    let now = rookery::groups::now_secs();
    assert!((now + 3500..=now + 3700).contains(&expires), "{expires}");

    let listed = api.ok(json!({"op": "usersget"})).await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["users"][0]["address"], "alice");
    assert!(
        listed["users"][0].get("token").is_none(),
        "a token is shown once"
    );
    assert_eq!(listed["users"][0]["has_token"], true);

    let set = api
        .ok(json!({"op": "userset", "user": {"address": "alice", "name": "A.", "active": false}}))
        .await;
    assert_eq!(set["user"]["name"], "A.");
    assert_eq!(set["user"]["active"], false);
    assert!(set["user"].get("token").is_none());

    let regenerated = api
        .ok(json!({"op": "userset", "user": {"address": "alice", "token": {"expiry": 10}}}))
        .await;
    let new_token = regenerated["user"]["token"].as_str().unwrap();
    assert_ne!(new_token, token);

    let revoked = api
        .ok(json!({"op": "userset", "user": {"address": "alice", "token": {"remove": true}}}))
        .await;
    assert_eq!(revoked["user"]["has_token"], false);

    api.add_user("bob").await;
    api.ok(json!({"op": "userdel", "user": {"address": "alice"}}))
        .await;
    let listed = api.ok(json!({"op": "usersget"})).await;
    assert_eq!(listed["total"], 1);
    assert_eq!(listed["users"][0]["address"], "bob");
    api.stop().await;
}

#[tokio::test]
async fn group_ops() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    for user in ["alice", "bob", "carol"] {
        api.add_user(user).await;
    }
    let answer = api
        .ok(json!({"op": "groupadd", "group": {
            "name": "Support", "flags": 0, "active": true,
            "validity": {"start": 0, "duration": 31536000, "expiryext": 0},
            "permissions": {"send": 0, "recv": 2, "pub": 0, "sub": 0, "list": 1},
            "members": {"m": "alice,bob", "remove": false,
                        "permissions": {"send": true, "recv": true, "pub": true, "sub": true, "list": true},
                        "admin": {"owner": false, "admin": true, "adduser": true}}}}))
        .await;
    let group = &answer["group"];
    let gid = group["gid"].as_u64().unwrap();
    assert_eq!(group["name"], "Support");
    assert_eq!(
        group["permissions"],
        json!({"send": 0, "recv": 2, "pub": 0, "sub": 0, "list": 1})
    );
    assert_eq!(group["flags"], 0x20 | 0x10000, "flags follow permissions");
    assert_eq!(group["member_count"], 2);
    assert_eq!(group["active"], true);
    let now = rookery::groups::now_secs();
    let start = group["validity"]["start"].as_u64().unwrap();
    assert!(
        start.abs_diff(now) <= 5,
        "validity.start is absolute: {start}"
    );
    assert_eq!(group["validity"]["duration"], 31536000);

    let got = api
        .ok(json!({"op": "groupget", "group": {"gid": gid}}))
        .await;
    assert_eq!(got["group"], answer["group"]);

    // groupset: name, flags, validity, active, a per-type rule.
    let set = api
        .ok(
            json!({"op": "groupset", "group": {"gid": gid, "name": "Help", "flags": 0x40 | 0x1,
                   "active": false, "validity": {"duration": 100, "expiryext": 50}}}),
        )
        .await;
    assert_eq!(set["group"]["name"], "Help");
    assert_eq!(set["group"]["flags"], 0x41);
    assert_eq!(set["group"]["nostore"], true);
    assert_eq!(set["group"]["permissions"]["send"], 1);
    assert_eq!(set["group"]["permissions"]["recv"], 0);
    assert_eq!(set["group"]["active"], false);
    assert_eq!(set["group"]["validity"]["duration"], 100);
    assert_eq!(set["group"]["validity"]["expiryext"], 50);
    let typed = api
        .ok(
            json!({"op": "groupset", "group": {"gid": gid, "type": 5, "active": true,
                   "permissions": {"send": 2}}}),
        )
        .await;
    assert_eq!(typed["group"]["types"][0]["type"], 5);
    assert_eq!(typed["group"]["types"][0]["permissions"]["send"], 2);
    assert_eq!(
        typed["group"]["permissions"]["send"], 1,
        "default rule kept"
    );
    assert_eq!(typed["group"]["active"], true);

    // groupeditmembers: add, edit (per type), remove.
    let added = api
        .ok(json!({"op": "groupeditmembers", "group": {"gid": gid,
                   "members": {"m": "carol", "permissions": {"send": false}}}}))
        .await;
    assert_eq!(added["group"]["member_count"], 3);
    api.ok(
        json!({"op": "groupeditmembers", "group": {"gid": gid, "type": 5,
               "members": {"m": ["carol"], "permissions": {"recv": false}}}}),
    )
    .await;
    let members = api
        .ok(json!({"op": "groupgetmembers", "group": {"gid": gid}}))
        .await;
    assert_eq!(members["total"], 3);
    let list = members["members"].as_array().unwrap();
    let names: Vec<&str> = list
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(list[0]["admin"]["admin"], true);
    assert_eq!(list[0]["admin"]["adduser"], true);
    assert_eq!(list[0]["admin"]["owner"], false);
    assert_eq!(list[2]["permissions"]["send"], false);
    assert_eq!(list[2]["permissions"]["recv"], true);
    assert_eq!(list[2]["types"][0]["type"], 5);
    assert_eq!(list[2]["types"][0]["permissions"]["recv"], false);
    assert!(list[2]["since"].as_u64().unwrap().abs_diff(now) <= 5);
    let removed = api
        .ok(json!({"op": "groupeditmembers", "group": {"gid": gid,
                   "members": {"m": "alice, bob", "remove": true}}}))
        .await;
    assert_eq!(removed["group"]["member_count"], 1);

    let second = api.add_group(json!({"name": "Two"})).await;
    assert!(second > gid);
    let all = api.ok(json!({"op": "groupsget"})).await;
    assert_eq!(all["total"], 2);
    assert_eq!(all["groups"][0]["gid"], gid);
    assert_eq!(all["groups"][1]["name"], "Two");

    api.ok(json!({"op": "groupdel", "group": {"gid": gid}}))
        .await;
    api.fails(
        json!({"op": "groupget", "group": {"gid": gid}}),
        "NOGROUP",
        404,
    )
    .await;
    let third = api.add_group(json!({})).await;
    assert!(third > second, "gids are never reused");
    api.stop().await;
}

#[tokio::test]
async fn error_codes_and_statuses() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    api.add_user("alice").await;
    let gid = api.add_group(json!({"name": "g"})).await;

    // 400 BADREQUEST: not JSON, not an object, no op, a wrong type, a missing field.
    let (status, answer) = api.raw_bytes(b"{nope".to_vec(), "application/json").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("BADREQUEST"))
    );
    let (status, answer) = api.raw_json(&json!([1, 2])).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("BADREQUEST"))
    );
    api.fails(json!({"token": APP}), "BADREQUEST", 400).await;
    api.fails(
        json!({"op": "groupget", "group": {"gid": "x"}}),
        "BADREQUEST",
        400,
    )
    .await;
    api.fails(json!({"op": "groupget", "group": {}}), "BADREQUEST", 400)
        .await;
    api.fails(json!({"op": "useradd"}), "BADREQUEST", 400).await;
    api.fails(
        json!({"op": "useradd", "user": {"address": "a/b"}}),
        "BADREQUEST",
        400,
    )
    .await;
    api.fails(
        json!({"op": "groupset", "group": {"gid": gid, "flags": 0x8}}),
        "BADREQUEST",
        400,
    )
    .await;
    api.fails(
        json!({"op": "groupset", "group": {"gid": gid, "permissions": {"send": 3}}}),
        "BADREQUEST",
        400,
    )
    .await;
    api.fails(
        json!({"op": "groupset", "group": {"gid": gid, "nmae": "typo"}}),
        "BADREQUEST",
        400,
    )
    .await;
    // 400 BADOP.
    let answer = api.fails(json!({"op": "frobnicate"}), "BADOP", 400).await;
    assert_eq!(answer["op"], "frobnicate");
    // 401 AUTHFAIL: no token, a wrong one, a wrong type.
    let (status, answer) = api.raw_json(&json!({"op": "usersget"})).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("AUTHFAIL")));
    api.fails(
        json!({"op": "usersget", "token": "app-token-for-testz"}),
        "AUTHFAIL",
        401,
    )
    .await;
    api.fails(json!({"op": "usersget", "token": 7}), "AUTHFAIL", 401)
        .await;
    // Unknown ops are not revealed before authentication.
    api.fails(json!({"op": "frobnicate", "token": ""}), "AUTHFAIL", 401)
        .await;
    // 404 NOUSER, NOGROUP, NOTMEMBER.
    api.fails(
        json!({"op": "userset", "user": {"address": "nobody", "name": "x"}}),
        "NOUSER",
        404,
    )
    .await;
    api.fails(
        json!({"op": "userdel", "user": {"address": "nobody"}}),
        "NOUSER",
        404,
    )
    .await;
    api.fails(
        json!({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "nobody"}}}),
        "NOUSER",
        404,
    )
    .await;
    api.fails(
        json!({"op": "groupadd", "group": {"members": {"m": "alice,nobody"}}}),
        "NOUSER",
        404,
    )
    .await;
    api.fails(
        json!({"op": "groupdel", "group": {"gid": 999999}}),
        "NOGROUP",
        404,
    )
    .await;
    api.fails(
        json!({"op": "groupgetmembers", "group": {"gid": 999999}}),
        "NOGROUP",
        404,
    )
    .await;
    api.fails(
        json!({"op": "groupeditmembers", "group": {"gid": gid,
               "members": {"m": "alice", "remove": true}}}),
        "NOTMEMBER",
        404,
    )
    .await;
    // 409 EXISTS.
    api.fails(
        json!({"op": "useradd", "user": {"address": "alice"}}),
        "EXISTS",
        409,
    )
    .await;
    // 405 for other methods, 413 for a body over 1 MiB: JSON answers too.
    let response = api.client.put(api.url()).send().await.unwrap();
    let (status, answer) = decode(response).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (405, Some("BADREQUEST"))
    );
    let big = format!(
        r#"{{"op": "usersget", "token": "{APP}", "pad": "{}"}}"#,
        "x".repeat(1 << 20)
    );
    let (status, answer) = api.raw_bytes(big.into_bytes(), "application/json").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("BADREQUEST"))
    );
    // Just under the limit is fine.
    let fits = format!(
        r#"{{"op": "usersget", "token": "{APP}", "pad": "{}"}}"#,
        "x".repeat((1 << 20) - 100)
    );
    let (status, _) = api.raw_bytes(fits.into_bytes(), "application/json").await;
    assert_eq!(status, 200);
    api.stop().await;
}

#[tokio::test]
async fn paging_has_no_hidden_cap() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "none")).await;
    let mut names = Vec::new();
    for i in 0..150 {
        let name = format!("u{i:03}");
        api.add_user(&name).await;
        names.push(name);
    }
    let all = api.ok(json!({"op": "usersget"})).await;
    assert_eq!(all["total"], 150);
    assert_eq!(all["count"], 150);
    assert_eq!(all["users"].as_array().unwrap().len(), 150);
    let page = api
        .ok(json!({"op": "usersget", "start": 140, "count": 20}))
        .await;
    assert_eq!(page["total"], 150);
    assert_eq!(page["start"], 140);
    assert_eq!(page["count"], 10);
    assert_eq!(page["users"][0]["address"], "u140");
    let past = api.ok(json!({"op": "usersget", "start": 1000})).await;
    assert_eq!(past["count"], 0);
    assert_eq!(past["total"], 150);

    let gid = api
        .add_group(json!({"name": "big", "members": {"m": names.join(",")}}))
        .await;
    let members = api
        .ok(json!({"op": "groupgetmembers", "group": {"gid": gid}}))
        .await;
    assert_eq!(members["total"], 150);
    assert_eq!(members["members"].as_array().unwrap().len(), 150);
    let page = api
        .ok(json!({"op": "groupgetmembers", "group": {"gid": gid}, "start": 10, "count": 5}))
        .await;
    assert_eq!(page["total"], 150);
    let got: Vec<&str> = page["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["u010", "u011", "u012", "u013", "u014"]);

    for i in 0..120 {
        api.add_group(json!({"name": format!("g{i}")})).await;
    }
    let groups = api.ok(json!({"op": "groupsget"})).await;
    assert_eq!(groups["total"], 121);
    assert_eq!(groups["groups"].as_array().unwrap().len(), 121);
    let page = api
        .ok(json!({"op": "groupsget", "start": 120, "count": 3}))
        .await;
    assert_eq!(page["count"], 1);
    api.fails(json!({"op": "usersget", "count": -1}), "BADREQUEST", 400)
        .await;
    api.stop().await;
}

#[tokio::test]
async fn legacy_forms_and_id_echo() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    // GET with a query string.
    let (status, answer) = api
        .get(&[
            ("op", "useradd"),
            ("token", APP),
            ("addr", "alice"),
            ("name", "Alice"),
            ("expiry", "30"),
            ("id", "q1"),
        ])
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["user"]["address"], "alice");
    assert_eq!(answer["id"], "q1");
    assert_eq!(answer["user"]["token"].as_str().unwrap().len(), 64);
    let (status, _) = api
        .get(&[("op", "useradd"), ("token", APP), ("address", "bob")])
        .await;
    assert_eq!(status, 200);
    // A form-encoded POST.
    let (status, answer) = api
        .form(&[
            ("op", "groupadd"),
            ("token", APP),
            ("name", "Legacy"),
            ("flag", "1"),
            ("expiry", "3600"),
            ("expiryext", "60"),
            ("m", "alice,bob"),
            ("cs", "0"),
            ("cr", "1"),
        ])
        .await;
    assert_eq!(status, 200, "{answer}");
    let gid = answer["group"]["gid"].as_u64().unwrap().to_string();
    assert_eq!(answer["group"]["flags"], 1);
    assert_eq!(answer["group"]["validity"]["duration"], 3600);
    assert_eq!(answer["group"]["validity"]["expiryext"], 60);
    let (_, members) = api
        .get(&[("op", "groupgetmembers"), ("token", APP), ("gid", &gid)])
        .await;
    assert_eq!(members["total"], 2);
    assert_eq!(members["members"][0]["permissions"]["send"], false);
    assert_eq!(members["members"][0]["permissions"]["recv"], true);
    // Flat edits: permissions, then removal with delete=1.
    let (status, _) = api
        .form(&[
            ("op", "groupeditmembers"),
            ("token", APP),
            ("gid", &gid),
            ("m", "bob"),
            ("canpub", "0"),
            ("cansub", "false"),
            ("canlist", "no"),
        ])
        .await;
    assert_eq!(status, 200);
    let (_, members) = api
        .get(&[
            ("op", "groupgetmembers"),
            ("token", APP),
            ("gid", &gid),
            ("start", "1"),
        ])
        .await;
    assert_eq!(members["members"][0]["address"], "bob");
    assert_eq!(
        members["members"][0]["permissions"],
        json!({"send": false, "recv": true, "pub": false, "sub": false, "list": false})
    );
    let (status, answer) = api
        .form(&[
            ("op", "groupeditmembers"),
            ("token", APP),
            ("gid", &gid),
            ("m", "bob"),
            ("delete", "1"),
        ])
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["group"]["member_count"], 1);
    // JSON sent with curl's default form content type is still JSON.
    let json_body =
        format!(r#"  {{"op": "groupget", "token": "{APP}", "group": {{"gid": {gid}}}}}"#);
    let (status, answer) = api
        .raw_bytes(json_body.into_bytes(), "application/x-www-form-urlencoded")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["group"]["name"], "Legacy");
    // A POST with the fields in the query string and no body.
    let response = api
        .client
        .post(format!("{}?op=groupget&token={APP}&gid={gid}", api.url()))
        .send()
        .await
        .unwrap();
    let (status, answer) = decode(response).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["group"]["name"], "Legacy");
    // Flat values of the wrong type are refused with the field named.
    let (status, answer) = api
        .get(&[("op", "groupget"), ("token", APP), ("gid", "x")])
        .await;
    assert_eq!(status, 400);
    assert!(answer["message"].as_str().unwrap().contains("gid"));
    let (status, answer) = api.get(&[("op", "usersget")]).await;
    assert_eq!((status, answer["error"].as_str()), (401, Some("AUTHFAIL")));
    // userset delete=1 revokes the token.
    let (status, answer) = api
        .get(&[
            ("op", "userset"),
            ("token", APP),
            ("addr", "bob"),
            ("delete", "1"),
        ])
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["user"]["has_token"], false);

    // id echo: any JSON value, on success and on failure.
    let answer = api.ok(json!({"op": "usersget", "id": 42})).await;
    assert_eq!(answer["id"], 42);
    let answer = api
        .fails(json!({"op": "nope", "id": {"k": [1]}}), "BADOP", 400)
        .await;
    assert_eq!(answer["id"], json!({"k": [1]}));
    let (_, answer) = api.raw_json(&json!({"op": "usersget", "id": "x"})).await;
    assert_eq!(answer["id"], "x", "echoed on AUTHFAIL too");
    api.stop().await;
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    api.add_user("alice").await;
    api.add_user("bob").await;
    let gid = api
        .add_group(json!({"name": "g", "members": {"m": "alice"}}))
        .await;
    let before = api.snapshot().await;
    let bad = [
        json!({"op": "groupset", "group": {"gid": "x", "name": "changed"}}),
        json!({"op": "groupset", "group": {"gid": gid, "name": "changed", "active": "no"}}),
        json!({"op": "groupset", "group": {"gid": gid, "name": "changed", "flags": -1}}),
        json!({"op": "groupset", "group": {"gid": gid, "name": "changed", "validity": {"start": -5}}}),
        json!({"op": "groupset", "group": {"gid": gid, "name": "changed", "members": {"m": "bob"}}}),
        json!({"op": "groupset", "group": {"gid": gid, "type": 1, "name": "changed"}}),
        json!({"op": "groupadd", "group": {"name": "new", "members": {"m": "alice,nobody"}}}),
        json!({"op": "groupadd", "group": {"name": "new", "gid": 77}}),
        json!({"op": "groupadd", "group": {"name": "new", "members": {"m": "bob", "remove": true}}}),
        json!({"op": "groupadd", "group": {"name": "new", "permissions": {"sned": 1}}}),
        json!({"op": "groupadd", "group": {"name": "n".repeat(300)}}),
        json!({"op": "groupadd", "group": "Support"}),
        json!({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "bob",
               "permissions": {"send": "yes"}}}}),
        json!({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "bob",
               "admin": {"superuser": true}}}}),
        json!({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "alice,bob",
               "remove": true}}}),
        json!({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": ""}}}),
        json!({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": 5}}}),
        json!({"op": "groupeditmembers", "group": {"gid": gid}}),
        json!({"op": "groupdel", "group": {"gid": gid, "force": true}}),
        json!({"op": "groupdel"}),
        json!({"op": "useradd", "user": {"address": "carol", "name": 5}}),
        json!({"op": "useradd", "user": {"address": "carol", "token": {"expiry": 0}}}),
        json!({"op": "useradd", "user": {"address": "carol", "token": {"expiry": "60"}}}),
        json!({"op": "useradd", "user": {"address": "carol", "admin": true}}),
        json!({"op": "userset", "user": {"address": "alice", "name": "x",
               "token": {"remove": true, "expiry": 5}}}),
        json!({"op": "userset", "user": {"name": "x"}}),
        json!({"op": "userdel", "user": "alice"}),
        json!({"op": ["groupdel"]}),
        json!({"op": "GROUPDEL", "group": {"gid": gid}}),
        json!({"op": "groupdel", "group": {"gid": gid}, "token": "wrong"}),
        json!({"op": "userdel", "user": {"address": "alice"}, "token": null}),
    ];
    for request in bad {
        let (status, answer) = if request.get("token").is_some() {
            api.raw_json(&request).await
        } else {
            api.call(request.clone()).await
        };
        assert_eq!(answer["result"], false, "{request} → {answer}");
        assert!(
            (400..500).contains(&status),
            "{request} → {status} {answer}"
        );
        assert!(
            ["BADREQUEST", "BADOP", "AUTHFAIL", "NOUSER", "NOTMEMBER"]
                .contains(&answer["error"].as_str().unwrap()),
            "{request} → {answer}"
        );
    }
    for body in [
        &b""[..],
        b"null",
        b"\"op\"",
        b"{\"op\": \"usersget\"",
        b"\xff\xfe",
    ] {
        let (status, answer) = api.raw_bytes(body.to_vec(), "application/json").await;
        assert_eq!(status, 400, "{body:?} → {answer}");
        assert_eq!(answer["error"], "BADREQUEST");
    }
    assert_eq!(api.snapshot().await, before);
    // The gid a refused groupadd would have taken is still the next one.
    let next = api.add_group(json!({})).await;
    assert_eq!(next, gid + 1);
    api.stop().await;
}

#[tokio::test]
async fn users_and_groups_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    let token = api.add_user("alice").await;
    api.add_user("bob").await;
    let gid = api
        .add_group(json!({"name": "kept", "permissions": {"send": 1},
                          "members": {"m": "alice,bob", "admin": {"modify": true}}}))
        .await;
    api.ok(json!({"op": "groupeditmembers", "group": {"gid": gid,
               "members": {"m": "bob", "permissions": {"send": false}}}}))
        .await;
    api.ok(json!({"op": "userdel", "user": {"address": "bob"}}))
        .await;
    let before = api.snapshot().await;
    api.stop().await;

    let api = Api::restart(config(data.path(), "strict")).await;
    assert_eq!(api.snapshot().await, before);
    let members = api
        .ok(json!({"op": "groupgetmembers", "group": {"gid": gid}}))
        .await;
    assert_eq!(members["total"], 1);
    assert_eq!(members["members"][0]["admin"]["modify"], true);
    // The token issued before the restart still logs in.
    let (client, mut events) = mqtt_connect(api.mqtt(), "alice", &token).await;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
    let next = api.add_group(json!({})).await;
    assert_eq!(next, gid + 1, "gids continue after a restart");
    api.stop().await;
}

#[tokio::test]
async fn a_generated_app_token_is_kept_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_rookery");
    let free_port = || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = Client::builder().timeout(WAIT).build().unwrap();
    let mut tokens = Vec::new();
    for run in 0..2 {
        let port = free_port();
        let mut child = tokio::process::Command::new(bin)
            .args(["--mqtt-listen", "127.0.0.1:0", "--http-listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data.path())
            .env("ROOKERY_SYS_INTERVAL_SECS", "0")
            .env_remove("ROOKERY_AUTH_ADMIN_TOKEN")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut generated = None;
        tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(token) = line.strip_prefix(
                    "rookery: generated the management API app token (shown only now): ",
                ) {
                    generated = Some(token.to_string());
                }
                if line.starts_with("rookery: MQTT listening on") {
                    break;
                }
            }
        })
        .await
        .expect("the broker starts");
        match (run, generated) {
            (0, Some(token)) => tokens.push(token),
            (0, None) => panic!("no app token was printed at first start"),
            (_, None) => {}
            (_, Some(_)) => panic!("a second app token was generated"),
        }
        let url = format!("http://127.0.0.1:{port}/api");
        let answer: Value = client
            .post(&url)
            .json(&json!({"op": "usersget", "token": tokens[0]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["result"], true, "run {run}: {answer}");
        let refused: Value = client
            .post(&url)
            .json(&json!({"op": "usersget", "token": "guess"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(refused["error"], "AUTHFAIL");
        child.kill().await.unwrap();
    }
    let stored = std::fs::read_dir(data.path()).unwrap().count();
    assert!(stored > 0);
    assert!(
        !contains_bytes(data.path(), tokens[0].as_bytes()),
        "the app token itself is stored nowhere"
    );
}

fn contains_bytes(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
        let path = entry.path();
        if path.is_dir() {
            contains_bytes(&path, needle)
        } else {
            let bytes = std::fs::read(&path).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        }
    })
}

async fn mqtt_connect(
    addr: SocketAddr,
    address: &str,
    token: &str,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let mut options = rumqttc::MqttOptions::new(
        format!("{address}-{}", rand_suffix()),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_credentials(address, token);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    let connack = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(connack))) => break connack,
                Ok(_) => {}
                Err(error) => panic!("connect failed: {error}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
    (client, events)
}

async fn next_event(events: &mut rumqttc::EventLoop) -> rumqttc::Publish {
    tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                events.poll().await.unwrap()
            {
                break p;
            }
        }
    })
    .await
    .expect("an event in time")
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn events_reach_the_user_over_mqtt() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    let token = api.add_user("alice").await;
    let gid = api.add_group(json!({"name": "news"})).await;
    let (client, mut events) = mqtt_connect(api.mqtt(), "alice", &token).await;
    client
        .subscribe("$users/alice/events", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) =
                events.poll().await.unwrap()
            {
                break ack;
            }
        }
    })
    .await
    .expect("SUBACK");
    api.ok(json!({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "alice"}}}))
        .await;
    let publish = next_event(&mut events).await;
    assert_eq!(publish.topic, "$users/alice/events");
    assert_eq!(publish.qos, rumqttc::QoS::AtLeastOnce);
    assert!(!publish.retain);
    let event: Value = serde_json::from_slice(&publish.payload).unwrap();
    assert_eq!(event["event"], "group.member_added");
    assert_eq!(event["gid"], gid);

    api.ok(json!({"op": "groupset", "group": {"gid": gid, "permissions": {"send": 1}}}))
        .await;
    let event: Value = serde_json::from_slice(&next_event(&mut events).await.payload).unwrap();
    assert_eq!(event["event"], "group.permissions_changed");
    api.ok(json!({"op": "groupset", "group": {"gid": gid, "name": "renamed"}}))
        .await;
    let event: Value = serde_json::from_slice(&next_event(&mut events).await.payload).unwrap();
    assert_eq!(event["event"], "group.updated");
    api.ok(json!({"op": "groupdel", "group": {"gid": gid}}))
        .await;
    let event: Value = serde_json::from_slice(&next_event(&mut events).await.payload).unwrap();
    assert_eq!(event["event"], "group.deleted");
    assert_eq!(event["gid"], gid);
    let _ = client.disconnect().await;
    api.stop().await;
}

/// Garbage at the endpoint: never a crash, always a JSON refusal with a known code, and
/// the directory unchanged.
#[test]
fn garbage_is_refused_and_changes_nothing() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, TestRunner};

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-z0-9,/ ]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                // Keys start with x: never a field the API knows.
                prop::collection::btree_map("x[a-z]{0,5}", inner, 1..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A request: a known op with the right token and garbage where its fields go, or
    /// garbage through and through.
    fn request() -> impl Strategy<Value = (Vec<u8>, &'static str)> {
        let ops = prop::sample::select(
            &[
                "useradd",
                "userset",
                "userdel",
                "groupadd",
                "groupset",
                "groupdel",
                "groupeditmembers",
                "groupgetmembers",
                "groupget",
                "bogus",
            ][..],
        );
        let shaped = (ops, json_value(), json_value(), any::<bool>()).prop_map(
            |(op, user, group, with_token)| {
                let mut request = json!({"op": op, "user": user, "group": group});
                if with_token {
                    request["token"] = json!(APP);
                }
                (serde_json::to_vec(&request).unwrap(), "application/json")
            },
        );
        let value =
            json_value().prop_map(|v| (serde_json::to_vec(&v).unwrap(), "application/json"));
        let bytes = prop::collection::vec(any::<u8>(), 0..200);
        prop_oneof![
            4 => shaped,
            2 => value,
            1 => bytes.clone().prop_map(|b| (b, "application/json")),
            1 => bytes.prop_map(|b| (b, "application/x-www-form-urlencoded")),
        ]
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let api = runtime.block_on(async {
        let api = Api::start(config(data.path(), "none")).await;
        api.add_user("alice").await;
        api.add_group(json!({"name": "g", "members": {"m": "alice"}}))
            .await;
        api
    });
    let before = runtime.block_on(api.snapshot());
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 300,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&request(), |(body, content_type)| {
        let (status, answer) = runtime.block_on(api.raw_bytes(body.clone(), content_type));
        prop_assert_eq!(&answer["result"], &json!(false), "{}", answer);
        let code = answer["error"].as_str().unwrap_or_default();
        prop_assert!(
            [
                "BADREQUEST",
                "BADOP",
                "AUTHFAIL",
                "NOUSER",
                "NOGROUP",
                "NOTMEMBER"
            ]
            .contains(&code),
            "{}",
            answer
        );
        prop_assert!((400..500).contains(&status), "{} {}", status, answer);
        prop_assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
        Ok(())
    });
    result.unwrap();
    assert_eq!(runtime.block_on(api.snapshot()), before);
    runtime.block_on(api.stop());
}

#[tokio::test]
async fn message_goes_through_the_acl_and_history_keeps_it() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    let alice = api.add_user("alice").await;
    api.add_user("bob").await;
    api.add_user("carol").await;
    let gid = api
        .add_group(json!({"name": "chat", "members": {"m": "alice,bob"}}))
        .await;
    let (client, mut events) = mqtt_connect(api.mqtt(), "alice", &alice).await;
    client
        .subscribe(format!("groups/{gid}/#"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) =
                events.poll().await.unwrap()
            {
                break;
            }
        }
    })
    .await
    .expect("SUBACK");
    // Backend message from bob (a member): delivered, and in the history.
    let answer = api
        .ok(json!({"op": "message", "message": {"from": "bob", "gid": gid, "type": 3, "message": "hi"}}))
        .await;
    assert_eq!(answer["message"]["topic"], format!("groups/{gid}/3"));
    let publish = next_event(&mut events).await;
    assert_eq!(
        (publish.topic.as_str(), &publish.payload[..]),
        (format!("groups/{gid}/3").as_str(), &b"hi"[..])
    );
    // Through the same ACL: carol is not a member; unknown sender; unknown group.
    api.fails(
        json!({"op": "message", "message": {"from": "carol", "gid": gid, "message": "x"}}),
        "NOTMEMBER",
        404,
    )
    .await;
    api.fails(
        json!({"op": "message", "message": {"from": "nobody", "gid": gid, "message": "x"}}),
        "NOUSER",
        404,
    )
    .await;
    api.fails(
        json!({"op": "message", "message": {"from": "bob", "gid": 999, "message": "x"}}),
        "NOGROUP",
        404,
    )
    .await;
    api.fails(
        json!({"op": "message", "message": {"from": "bob", "gid": gid}}),
        "BADREQUEST",
        400,
    )
    .await;
    // A client's group message lands in the history too; binary payloads as base64.
    client
        .publish(
            format!("groups/{gid}"),
            rumqttc::QoS::AtLeastOnce,
            false,
            vec![0xff, 0x00],
        )
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                events.poll().await.unwrap()
            {
                break;
            }
        }
    })
    .await
    .expect("PUBACK");
    let history = api
        .ok(json!({"op": "groupmessages", "group": {"gid": gid}}))
        .await;
    assert_eq!(history["total"], 2, "{history}");
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(
        (
            messages[0]["from"].as_str(),
            messages[0]["encoding"].as_str()
        ),
        (Some("alice"), Some("base64"))
    );
    assert_eq!(messages[0]["payload"], "/wA=");
    assert_eq!(
        (messages[1]["from"].as_str(), messages[1]["type"].as_u64()),
        (Some("bob"), Some(3))
    );
    assert_eq!(messages[1]["payload"], "hi");
    let page = api
        .ok(json!({"op": "groupmessages", "group": {"gid": gid}, "start": 1, "count": 5}))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    // The history survives a restart (strict durability).
    api.stop().await;
    let api = Api::restart(config(data.path(), "strict")).await;
    let history = api
        .ok(json!({"op": "groupmessages", "group": {"gid": gid}}))
        .await;
    assert_eq!(history["total"], 2, "{history}");
    // Deleting the group deletes its history.
    api.ok(json!({"op": "groupdel", "group": {"gid": gid}}))
        .await;
    api.fails(
        json!({"op": "groupmessages", "group": {"gid": gid}}),
        "NOGROUP",
        404,
    )
    .await;
    api.stop().await;
}

#[tokio::test]
async fn message_to_one_user_reaches_only_that_user() {
    let data = tempfile::tempdir().unwrap();
    let api = Api::start(config(data.path(), "strict")).await;
    let bob_token = api.add_user("bob").await;
    let eve_token = api.add_user("eve").await;
    api.add_user("alice").await;
    let (bob, mut bob_events) = mqtt_connect(api.mqtt(), "bob", &bob_token).await;
    bob.subscribe("$users/bob/messages", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    // Eve may not listen to bob's messages: refused at SUBSCRIBE.
    let (eve, mut eve_events) = mqtt_connect(api.mqtt(), "eve", &eve_token).await;
    eve.subscribe("$users/bob/messages", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut codes = Vec::new();
    for events in [&mut bob_events, &mut eve_events] {
        let ack = tokio::time::timeout(WAIT, async {
            loop {
                if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) =
                    events.poll().await.unwrap()
                {
                    break ack;
                }
            }
        })
        .await
        .expect("SUBACK");
        codes.push(ack.return_codes[0]);
    }
    assert_eq!(
        codes,
        [
            rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
            rumqttc::SubscribeReasonCode::Failure
        ]
    );
    let answer = api
        .ok(json!({"op": "message", "message": {"from": "alice", "to": "bob", "message": "psst"}}))
        .await;
    assert_eq!(answer["message"]["topic"], "$users/bob/messages");
    let publish = next_event(&mut bob_events).await;
    assert_eq!(publish.topic, "$users/bob/messages");
    assert_eq!(&publish.payload[..], b"psst");
    // To nobody, or to a group and a user at once: refused.
    let (status, body) = api
        .call(json!({"op": "message", "message": {"from": "alice", "to": "carol", "message": "x"}}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("NOUSER")),
        "{body}"
    );
    let (status, body) = api
        .call(json!({"op": "message", "message": {"from": "alice", "to": "bob", "gid": 1, "message": "x"}}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("BADREQUEST")),
        "{body}"
    );
    let _ = bob.disconnect().await;
    let _ = eve.disconnect().await;
    api.stop().await;
}

#[tokio::test]
async fn a_round_robin_groups_waiting_messages_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let settings = config(data.path(), "strict");
    let api = Api::start(settings.clone()).await;
    api.add_user("alice").await;
    let bob_token = api.add_user("bob").await;
    let gid = api
        .add_group(
            json!({"name": "hunt", "permissions": {"recv": 2}, "members": {"m": "alice,bob"}}),
        )
        .await;
    // Nobody is online: the message waits in the group's queue.
    for text in ["first", "second"] {
        let answer = api
            .ok(json!({"op": "message", "message": {"from": "alice", "gid": gid, "message": text}}))
            .await;
        assert_eq!(answer["message"]["queued"], 0, "{answer}");
    }
    api.stop().await;

    let api = Api::restart(settings).await;
    let (bob, mut events) = mqtt_connect(api.mqtt(), "bob", &bob_token).await;
    bob.subscribe(format!("groups/{gid}"), rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let first = next_event(&mut events).await;
    let second = next_event(&mut events).await;
    assert_eq!(
        [&first.payload[..], &second.payload[..]],
        [&b"first"[..], &b"second"[..]],
        "the waiting messages, in order, to the first member who subscribes"
    );
    let _ = bob.disconnect().await;
    api.stop().await;
}
