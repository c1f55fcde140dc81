//! Groups enforced inside the broker (SPEC §4–§7), with real MQTT clients (v5 and 3.1.1)
//! logging in with broker-issued tokens: the permission matrix for send and recv,
//! revocation on live wildcard subscriptions without resubscribing, round-robin,
//! loopback, no-store, live topics, login.

mod common;

use common::{v4, v5, TestBroker};
use rookery::groups::directory::{GroupPatch, MembersEdit};
use rookery::groups::model::{MemberPermissionsPatch, Permissions};
use rookery::groups::now_secs;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

async fn v5_user(broker: &TestBroker, address: &str) -> v5::Client {
    let token = broker.token(address);
    let address = address.to_string();
    v5::connect_with(broker.addr, &common::unique_id(&address), move |o| {
        o.set_credentials(address, token);
    })
    .await
    .expect("user connects")
}

async fn v4_user(broker: &TestBroker, address: &str) -> v4::Client {
    let token = broker.token(address);
    let address = address.to_string();
    v4::connect_with(broker.addr, &common::unique_id(&address), move |o| {
        o.set_credentials(address, token);
    })
    .await
    .expect("user connects")
}

/// A group with `permissions` whose members are `members`; the first member has every
/// member permission, the others have `others` applied.
fn group(
    broker: &TestBroker,
    permissions: Permissions,
    flags: u32,
    members: &[&str],
    others: MemberPermissionsPatch,
) -> u32 {
    for m in members {
        broker.token(m);
    }
    let dir = broker.directory();
    let gid = dir
        .add_group(
            GroupPatch {
                flags: Some(flags),
                permissions: Some(permissions),
                ..GroupPatch::default()
            },
            Some(MembersEdit {
                addresses: vec![members[0].to_string()],
                ..MembersEdit::default()
            }),
            None,
            now_secs(),
        )
        .unwrap()
        .value
        .gid;
    if members.len() > 1 {
        dir.edit_members(
            gid,
            MembersEdit {
                addresses: members[1..].iter().map(|m| m.to_string()).collect(),
                permissions: Some(others),
                ..MembersEdit::default()
            },
            now_secs(),
        )
        .unwrap();
    }
    gid
}

fn denied_send() -> MemberPermissionsPatch {
    MemberPermissionsPatch {
        send: Some(false),
        recv: Some(false),
        ..MemberPermissionsPatch::default()
    }
}

#[tokio::test]
async fn send_permission_matrix_v5_and_3_1_1() {
    let broker = TestBroker::start().await;
    // (send value, who, expected): who = member with permission ("m"), member without
    // ("w"), non-member ("n"), anonymous ("-").
    let table = [
        (0, "m", true),
        (0, "w", true),
        (0, "n", false),
        (0, "-", false),
        (1, "m", true),
        (1, "w", false),
        (1, "n", false),
        (1, "-", false),
        (2, "m", true),
        (2, "w", true),
        (2, "n", true),
        (2, "-", true),
    ];
    let mut watcher_of = std::collections::HashMap::new();
    for send in 0..3u8 {
        let gid = group(
            &broker,
            Permissions {
                send: Some(send),
                ..Permissions::default()
            },
            0,
            &["m", "w"],
            denied_send(),
        );
        // "m" has recv in every group (recv 0 = members): it watches.
        let mut watcher = v5_user(&broker, "m").await;
        watcher
            .subscribe(&format!("groups/{gid}/#"), v5::QoS::AtLeastOnce)
            .await;
        watcher_of.insert(send, (gid, watcher));
    }
    broker.token("n");
    for (send, who, allowed) in table {
        let (gid, watcher) = watcher_of.get_mut(&send).unwrap();
        let topic = format!("groups/{gid}/2");
        let payload = format!("{send}-{who}");
        let mut v5c = if who == "-" {
            v5::connect(broker.addr, &common::unique_id("anon")).await
        } else {
            v5_user(&broker, who).await
        };
        let code = v5c
            .publish_with(
                &topic,
                v5::QoS::AtLeastOnce,
                false,
                payload.as_bytes(),
                None,
            )
            .await;
        assert_eq!(
            code,
            Some(if allowed { 0 } else { 0x87 }),
            "v5 send {send} by {who}"
        );
        // 3.1.1: acknowledged either way, delivered only if allowed [MQTT-3.3.5-2].
        let mut v4c = if who == "-" {
            v4::connect(broker.addr, &common::unique_id("anon4")).await
        } else {
            v4_user(&broker, who).await
        };
        v4c.publish(&topic, v4::QoS::AtLeastOnce, false, b"v4")
            .await;
        if allowed {
            assert_eq!(
                &watcher.recv_publish().await.payload[..],
                payload.as_bytes()
            );
            assert_eq!(&watcher.recv_publish().await.payload[..], b"v4");
        } else {
            watcher.expect_no_publish(QUIET).await;
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn recv_permission_and_wildcard_subscriptions_are_checked_per_delivery() {
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions {
            recv: Some(1),
            send: Some(2),
            ..Permissions::default()
        },
        0,
        &["m", "w"],
        denied_send(),
    );
    broker.token("n");
    let named = format!("groups/{gid}");
    // A filter naming the group is refused for who can receive nothing from it.
    let mut w = v5_user(&broker, "w").await;
    assert_eq!(
        w.subscribe(&named, v5::QoS::AtLeastOnce).await,
        vec![v5::SubscribeReasonCode::NotAuthorized]
    );
    let mut n4 = v4_user(&broker, "n").await;
    assert_eq!(
        n4.subscribe(&named, v4::QoS::AtLeastOnce).await,
        vec![v4::SubscribeReasonCode::Failure]
    );
    // Wildcards over groups are accepted, and filtered per delivery.
    // (rumqttc ends a v5 client after a refused SUBACK: a new connection.)
    let mut w = v5_user(&broker, "w").await;
    let mut m = v5_user(&broker, "m").await;
    m.subscribe("groups/#", v5::QoS::AtLeastOnce).await;
    w.subscribe("groups/+", v5::QoS::AtLeastOnce).await;
    n4.subscribe("groups/#", v4::QoS::AtLeastOnce).await;
    let mut anon = v4::connect(broker.addr, "anon-recv").await;
    anon.subscribe("#", v4::QoS::AtLeastOnce).await;
    let mut sender = v5_user(&broker, "n").await;
    sender
        .publish(&named, v5::QoS::AtLeastOnce, false, b"hello")
        .await;
    assert_eq!(&m.recv_publish().await.payload[..], b"hello");
    w.expect_no_publish(QUIET).await;
    n4.expect_no_publish(QUIET).await;
    anon.expect_no_publish(QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn removal_demotion_deactivation_and_deletion_stop_live_subscriptions() {
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions::default(),
        0,
        &["owner", "eve"],
        MemberPermissionsPatch::default(),
    );
    let dir = broker.directory();
    let topic = format!("groups/{gid}");
    let mut eve = v4_user(&broker, "eve").await;
    eve.subscribe("groups/#", v4::QoS::AtLeastOnce).await;
    let mut owner = v5_user(&broker, "owner").await;
    let step = |label: &'static str| label;
    owner
        .publish(&topic, v5::QoS::AtLeastOnce, false, b"1")
        .await;
    assert_eq!(
        &eve.recv_publish().await.payload[..],
        b"1",
        "{}",
        step("member")
    );

    // Removed: nothing more, no resubscribe.
    let edit = |remove| MembersEdit {
        addresses: vec!["eve".into()],
        remove,
        ..MembersEdit::default()
    };
    dir.edit_members(gid, edit(true), now_secs()).unwrap();
    owner
        .publish(&topic, v5::QoS::AtLeastOnce, false, b"2")
        .await;
    eve.expect_no_publish(QUIET).await;

    // Back, then demoted: recv 1 and her own recv off.
    dir.edit_members(gid, edit(false), now_secs()).unwrap();
    owner
        .publish(&topic, v5::QoS::AtLeastOnce, false, b"3")
        .await;
    assert_eq!(
        &eve.recv_publish().await.payload[..],
        b"3",
        "{}",
        step("re-added")
    );
    dir.set_group(
        gid,
        GroupPatch {
            permissions: Some(Permissions {
                recv: Some(1),
                ..Permissions::default()
            }),
            ..GroupPatch::default()
        },
        now_secs(),
    )
    .unwrap();
    dir.edit_members(
        gid,
        MembersEdit {
            addresses: vec!["eve".into()],
            permissions: Some(MemberPermissionsPatch {
                recv: Some(false),
                ..MemberPermissionsPatch::default()
            }),
            ..MembersEdit::default()
        },
        now_secs(),
    )
    .unwrap();
    owner
        .publish(&topic, v5::QoS::AtLeastOnce, false, b"4")
        .await;
    eve.expect_no_publish(QUIET).await;

    // Promoted again, then the group is deactivated: nobody may send or receive.
    dir.set_group(
        gid,
        GroupPatch {
            permissions: Some(Permissions {
                recv: Some(0),
                ..Permissions::default()
            }),
            ..GroupPatch::default()
        },
        now_secs(),
    )
    .unwrap();
    owner
        .publish(&topic, v5::QoS::AtLeastOnce, false, b"5")
        .await;
    assert_eq!(
        &eve.recv_publish().await.payload[..],
        b"5",
        "{}",
        step("promoted")
    );
    dir.set_group(
        gid,
        GroupPatch {
            active: Some(false),
            ..GroupPatch::default()
        },
        now_secs(),
    )
    .unwrap();
    let code = owner
        .publish_with(&topic, v5::QoS::AtLeastOnce, false, b"6", None)
        .await;
    assert_eq!(code, Some(0x87), "an inactive group refuses sending");
    eve.expect_no_publish(QUIET).await;
    // rumqttc ends a client whose PUBACK carries a failure: a new connection.
    let mut owner = v5_user(&broker, "owner").await;

    // Active again, then deleted.
    dir.set_group(
        gid,
        GroupPatch {
            active: Some(true),
            ..GroupPatch::default()
        },
        now_secs(),
    )
    .unwrap();
    owner
        .publish(&topic, v5::QoS::AtLeastOnce, false, b"7")
        .await;
    assert_eq!(
        &eve.recv_publish().await.payload[..],
        b"7",
        "{}",
        step("reactivated")
    );
    dir.remove_group(gid).unwrap();
    let code = owner
        .publish_with(&topic, v5::QoS::AtLeastOnce, false, b"8", None)
        .await;
    assert_eq!(code, Some(0x87), "a deleted group refuses sending");
    eve.expect_no_publish(QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn round_robin_gives_each_message_to_exactly_one_member_in_turn() {
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions {
            recv: Some(2),
            send: Some(2),
            ..Permissions::default()
        },
        0,
        &["r1", "r2", "r3"],
        MemberPermissionsPatch::default(),
    );
    let mut receivers = Vec::new();
    for r in ["r1", "r2", "r3"] {
        let mut c = v5_user(&broker, r).await;
        c.subscribe(&format!("groups/{gid}"), v5::QoS::AtLeastOnce)
            .await;
        receivers.push(c);
    }
    let mut sender = v4::connect(broker.addr, "rr-sender").await;
    for i in 0..9 {
        sender
            .publish(
                &format!("groups/{gid}"),
                v4::QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    let mut seen = Vec::new();
    for r in &mut receivers {
        let mut mine = Vec::new();
        for _ in 0..3 {
            mine.push(String::from_utf8(r.recv_publish().await.payload.to_vec()).unwrap());
        }
        r.expect_no_publish(QUIET).await;
        seen.extend(mine);
    }
    seen.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(
        seen,
        (0..9).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each exactly once"
    );
    broker.stop().await;
}

#[tokio::test]
async fn loopback_and_no_local_for_3_1_1_clients_too() {
    let broker = TestBroker::start().await;
    let plain = group(
        &broker,
        Permissions::default(),
        0,
        &["lb"],
        MemberPermissionsPatch::default(),
    );
    let looped = group(
        &broker,
        Permissions::default(),
        0x80,
        &["lb"],
        MemberPermissionsPatch::default(),
    );
    let mut me = v4_user(&broker, "lb").await;
    me.subscribe("groups/#", v4::QoS::AtLeastOnce).await;
    me.publish(
        &format!("groups/{plain}"),
        v4::QoS::AtLeastOnce,
        false,
        b"not back",
    )
    .await;
    me.expect_no_publish(QUIET).await;
    me.publish(
        &format!("groups/{looped}"),
        v4::QoS::AtLeastOnce,
        false,
        b"back",
    )
    .await;
    assert_eq!(&me.recv_publish().await.payload[..], b"back");
    broker.stop().await;
}

#[tokio::test]
async fn no_store_groups_and_live_topics_keep_nothing() {
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions::default(),
        0x40,
        &["ns", "off"],
        MemberPermissionsPatch::default(),
    );
    let normal = group(
        &broker,
        Permissions::default(),
        0,
        &["ns", "off"],
        MemberPermissionsPatch::default(),
    );
    // An offline persistent session of a member.
    let token = broker.token("off");
    let persistent = |o: &mut v4::MqttOptions| {
        o.set_clean_session(false);
        o.set_credentials("off", token.clone());
    };
    let mut off = v4::connect_with(broker.addr, "off-session", persistent)
        .await
        .unwrap();
    off.subscribe("groups/#", v4::QoS::AtLeastOnce).await;
    off.disconnect().await;
    let mut ns = v5_user(&broker, "ns").await;
    for g in [gid, normal] {
        ns.publish(
            &format!("groups/{g}"),
            v5::QoS::AtLeastOnce,
            true,
            format!("r{g}").as_bytes(),
        )
        .await;
        ns.publish(
            &format!("groups/{g}/live/x"),
            v5::QoS::AtLeastOnce,
            true,
            b"live",
        )
        .await;
    }
    // Only the normal group's message was queued and retained; nothing live.
    let mut off = v4::connect_with(broker.addr, "off-session", persistent)
        .await
        .unwrap();
    assert_eq!(
        &off.recv_publish().await.payload[..],
        format!("r{normal}").as_bytes()
    );
    off.expect_no_publish(QUIET).await;
    let mut late = v5_user(&broker, "off").await;
    late.subscribe("groups/#", v5::QoS::AtLeastOnce).await;
    let retained = late.recv_publish().await;
    assert_eq!(&retained.payload[..], format!("r{normal}").as_bytes());
    late.expect_no_publish(QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn login_needs_a_valid_token() {
    let broker = TestBroker::start_with(|c| c.auth.allow_anonymous = false).await;
    let token = broker.token("alice");
    let wrong = v5::connect_with(broker.addr, "bad", |o| {
        o.set_credentials("alice", "nope");
    })
    .await;
    assert!(
        matches!(
            wrong,
            Err(v5::ConnectionError::ConnectionRefused(
                v5::ConnectReturnCode::BadUserNamePassword
            ))
        ),
        "{:?}",
        wrong.err()
    );
    let unknown = v4::connect_with(broker.addr, "bad4", |o| {
        o.set_credentials("mallory", token.clone());
    })
    .await;
    assert!(
        matches!(
            unknown,
            Err(v4::ConnectionError::ConnectionRefused(
                v4::ConnectReturnCode::BadUserNamePassword
            ))
        ),
        "{:?}",
        unknown.err()
    );
    let anonymous = v4::connect_with(broker.addr, "anon", |_| {}).await;
    assert!(anonymous.is_err());
    v4_user(&broker, "alice").await.disconnect().await;
    // A revoked token stops working.
    broker
        .directory()
        .set_user(
            "alice",
            rookery::groups::directory::UserPatch {
                remove_token: true,
                ..Default::default()
            },
            now_secs(),
        )
        .unwrap();
    let revoked = v4::connect_with(broker.addr, "revoked", |o| {
        o.set_credentials("alice", token.clone());
    })
    .await;
    assert!(revoked.is_err());
    broker.stop().await;
}

#[tokio::test]
async fn presence_snapshot_then_online_and_offline_announcements() {
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions::default(),
        0,
        &["p1", "p2"],
        MemberPermissionsPatch::default(),
    );
    let mut p1 = v5_user(&broker, "p1").await;
    p1.subscribe(&format!("$groups/{gid}/presence"), v5::QoS::AtLeastOnce)
        .await;
    let snapshot: serde_json::Value =
        serde_json::from_slice(&p1.recv_publish().await.payload).unwrap();
    assert_eq!(
        snapshot,
        serde_json::json!({"gid": gid, "members": [
            {"address": "p1", "online": true}, {"address": "p2", "online": false}]})
    );
    let p2 = v4_user(&broker, "p2").await;
    let online: serde_json::Value =
        serde_json::from_slice(&p1.recv_publish().await.payload).unwrap();
    assert_eq!(
        (online["address"].as_str(), online["online"].as_bool()),
        (Some("p2"), Some(true))
    );
    // A second connection of the same user announces nothing; the last one leaving does.
    let p2b = v4_user(&broker, "p2").await;
    p1.expect_no_publish(QUIET).await;
    p2.disconnect().await;
    p1.expect_no_publish(QUIET).await;
    p2b.disconnect().await;
    let offline: serde_json::Value =
        serde_json::from_slice(&p1.recv_publish().await.payload).unwrap();
    assert_eq!(
        (offline["address"].as_str(), offline["online"].as_bool()),
        (Some("p2"), Some(false))
    );
    // Removed from the group, p1 stops hearing its presence at once.
    broker
        .directory()
        .edit_members(
            gid,
            MembersEdit {
                addresses: vec!["p1".into()],
                remove: true,
                ..MembersEdit::default()
            },
            now_secs(),
        )
        .unwrap();
    let p2c = v4_user(&broker, "p2").await;
    p1.expect_no_publish(QUIET).await;
    p2c.disconnect().await;
    // A non-member may not list (list 0 = members).
    broker.token("outsider");
    let mut outsider = v4_user(&broker, "outsider").await;
    assert_eq!(
        outsider
            .subscribe(&format!("$groups/{gid}/presence"), v4::QoS::AtLeastOnce)
            .await,
        vec![v4::SubscribeReasonCode::Failure]
    );
    broker.stop().await;
}

/// A take-over ends the old connection for presence too: the user's last connection
/// leaving afterwards is announced offline (the count of connections stays right).
#[tokio::test]
async fn presence_survives_a_session_take_over() {
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions::default(),
        0,
        &["w", "t"],
        MemberPermissionsPatch::default(),
    );
    let mut watcher = v5_user(&broker, "w").await;
    watcher
        .subscribe(&format!("$groups/{gid}/presence"), v5::QoS::AtLeastOnce)
        .await;
    watcher.recv_publish().await; // the snapshot
    let presence = |payload: &[u8]| {
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        (
            v["address"].as_str().map(String::from),
            v["online"].as_bool(),
        )
    };
    let token = broker.token("t");
    let login = |o: &mut rumqttc::MqttOptions| {
        o.set_credentials("t", token.clone());
    };
    let mut first = v4::connect_with(broker.addr, "t-phone", login)
        .await
        .unwrap();
    assert_eq!(
        presence(&watcher.recv_publish().await.payload),
        (Some("t".into()), Some(true))
    );
    let second = v4::connect_with(broker.addr, "t-phone", login)
        .await
        .unwrap();
    first.wait_closed().await;
    // The old connection went offline and the new one came online.
    assert_eq!(
        presence(&watcher.recv_publish().await.payload),
        (Some("t".into()), Some(false))
    );
    assert_eq!(
        presence(&watcher.recv_publish().await.payload),
        (Some("t".into()), Some(true))
    );
    second.disconnect().await;
    assert_eq!(
        presence(&watcher.recv_publish().await.payload),
        (Some("t".into()), Some(false)),
        "the user's last connection left"
    );
    broker.stop().await;
}

#[tokio::test]
async fn the_real_time_api_over_groups_ops_with_replies_and_admin_flags() {
    let broker = TestBroker::start().await;
    broker.token("bob");
    // v5: the reply goes to the Response Topic with the Correlation Data.
    let mut alice = v5_user(&broker, "alice").await;
    alice
        .subscribe("$users/alice/#", v5::QoS::AtLeastOnce)
        .await;
    alice.subscribe("replies/alice", v5::QoS::AtLeastOnce).await;
    let properties = v5::PublishProperties {
        response_topic: Some("replies/alice".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
        ..Default::default()
    };
    let request = serde_json::json!({"op": "groupadd", "id": "r1",
        "group": {"name": "Team", "members": {"m": "bob"}}});
    let code = alice
        .publish_with(
            "$groups/ops",
            v5::QoS::AtLeastOnce,
            false,
            request.to_string().as_bytes(),
            Some(properties),
        )
        .await;
    assert_eq!(code, Some(0));
    let reply = alice.recv_publish().await;
    assert_eq!(common::v5::topic(&reply), "replies/alice");
    assert_eq!(
        reply
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.clone())
            .as_deref(),
        Some(&b"c-1"[..])
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(
        (body["result"].as_bool(), body["id"].as_str()),
        (Some(true), Some("r1")),
        "{body}"
    );
    let gid = body["group"]["gid"].as_u64().unwrap() as u32;
    let group = broker.directory().group(gid).unwrap();
    assert!(
        group.members["alice"].admin.owner,
        "the creator owns the group"
    );
    assert!(group.members.contains_key("bob"));

    // 3.1.1: replies on $users/{address}/replies; bob is a plain member, not an admin.
    let mut bob = v4_user(&broker, "bob").await;
    bob.subscribe("$users/bob/replies", v4::QoS::AtLeastOnce)
        .await;
    let request =
        serde_json::json!({"op": "groupset", "id": 7, "group": {"gid": gid, "name": "Mine"}});
    bob.publish(
        "$groups/ops",
        v4::QoS::AtLeastOnce,
        false,
        request.to_string().as_bytes(),
    )
    .await;
    let body: serde_json::Value =
        serde_json::from_slice(&bob.recv_publish().await.payload).unwrap();
    assert_eq!(
        (body["error"].as_str(), body["id"].as_i64()),
        (Some("PERMISSION"), Some(7)),
        "{body}"
    );
    assert_eq!(
        broker.directory().group(gid).unwrap().name,
        "Team",
        "nothing changed"
    );
    bob.publish("$groups/ops", v4::QoS::AtLeastOnce, false, b"{not json")
        .await;
    let body: serde_json::Value =
        serde_json::from_slice(&bob.recv_publish().await.payload).unwrap();
    assert_eq!(body["error"], "BADREQUEST");
    // Anonymous clients may not use it.
    let mut anon = v5::connect(broker.addr, "anon-ops").await;
    let code = anon
        .publish_with(
            "$groups/ops",
            v5::QoS::AtLeastOnce,
            false,
            request.to_string().as_bytes(),
            None,
        )
        .await;
    assert_eq!(code, Some(0x87));
    broker.stop().await;
}

#[tokio::test]
async fn round_robin_fails_over_unacknowledged_messages_and_queues_while_nobody_is_online() {
    use common::{connect_packet, RawClient};
    use rookery::codec::{self, ProtocolVersion};
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions {
            recv: Some(2),
            send: Some(2),
            ..Permissions::default()
        },
        0,
        &["r1", "r2"],
        MemberPermissionsPatch::default(),
    );
    let topic = format!("groups/{gid}");
    let mut sender = v4::connect(broker.addr, "rr-fail-sender").await;
    // Nobody online: the message waits in the group's queue.
    sender
        .publish(&topic, v4::QoS::AtLeastOnce, false, b"waited")
        .await;
    // r1 never acknowledges (a raw client); it is the only one online.
    let mut connect = connect_packet(ProtocolVersion::V311, "r1-raw");
    connect.username = Some("r1".into());
    connect.password = Some(bytes::Bytes::from(broker.token("r1")));
    let (mut r1, _) = RawClient::connect(broker.addr, connect).await;
    r1.subscribe(1, &topic, codec::QoS::AtLeastOnce).await;
    assert_eq!(
        &r1.expect_publish().await.payload[..],
        b"waited",
        "the queue drains to the first member"
    );
    sender
        .publish(&topic, v4::QoS::AtLeastOnce, false, b"second")
        .await;
    assert_eq!(&r1.expect_publish().await.payload[..], b"second");
    // r2 comes online; r1 drops without acknowledging either: both go to r2.
    let mut r2 = v5_user(&broker, "r2").await;
    r2.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    drop(r1);
    let mut got = vec![
        r2.recv_publish().await.payload.to_vec(),
        r2.recv_publish().await.payload.to_vec(),
    ];
    got.sort();
    assert_eq!(got, vec![b"second".to_vec(), b"waited".to_vec()]);
    r2.expect_no_publish(QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_member_removed_while_offline_gets_nothing_of_what_was_queued() {
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions::default(),
        0,
        &["owner", "away"],
        MemberPermissionsPatch::default(),
    );
    let token = broker.token("away");
    let persistent = |o: &mut v4::MqttOptions| {
        o.set_clean_session(false);
        o.set_credentials("away", token.clone());
    };
    let mut away = v4::connect_with(broker.addr, "away-session", persistent)
        .await
        .unwrap();
    away.subscribe("groups/#", v4::QoS::AtLeastOnce).await;
    away.disconnect().await;
    let mut owner = v5_user(&broker, "owner").await;
    owner
        .publish(
            &format!("groups/{gid}"),
            v5::QoS::AtLeastOnce,
            false,
            b"queued",
        )
        .await;
    broker
        .directory()
        .edit_members(
            gid,
            MembersEdit {
                addresses: vec!["away".into()],
                remove: true,
                ..MembersEdit::default()
            },
            now_secs(),
        )
        .unwrap();
    let mut away = v4::connect_with(broker.addr, "away-session", persistent)
        .await
        .unwrap();
    away.expect_no_publish(QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_exact_group_subscription_sees_every_change_at_once() {
    // `groups/{gid}` subscriptions cache their decision per directory generation.
    let broker = TestBroker::start().await;
    let gid = group(
        &broker,
        Permissions::default(),
        0,
        &["boss", "ivy"],
        MemberPermissionsPatch::default(),
    );
    let dir = broker.directory();
    let topic = format!("groups/{gid}");
    let mut ivy = v4_user(&broker, "ivy").await;
    ivy.subscribe(&topic, v4::QoS::AtLeastOnce).await;
    let mut boss = v4_user(&broker, "boss").await;
    let ivy_edit = |remove| MembersEdit {
        addresses: vec!["ivy".into()],
        remove,
        ..MembersEdit::default()
    };
    for round in 0..3u8 {
        boss.publish(&topic, v4::QoS::AtLeastOnce, false, &[round])
            .await;
        assert_eq!(
            &ivy.recv_publish().await.payload[..],
            &[round],
            "member, round {round}"
        );
        dir.edit_members(gid, ivy_edit(true), now_secs()).unwrap();
        boss.publish(&topic, v4::QoS::AtLeastOnce, false, b"removed")
            .await;
        ivy.expect_no_publish(QUIET).await;
        dir.edit_members(gid, ivy_edit(false), now_secs()).unwrap();
    }
    // An unrelated change (a new user) keeps the decisions right too.
    broker.token("someone-else");
    dir.set_group(
        gid,
        GroupPatch {
            validity: Some(rookery::groups::directory::ValidityPatch {
                duration: Some(0),
                ..Default::default()
            }),
            ..GroupPatch::default()
        },
        now_secs(),
    )
    .unwrap();
    // Expired now: refused for the sender, nothing for ivy.
    let mut boss5 = v5_user(&broker, "boss").await;
    let code = boss5
        .publish_with(&topic, v5::QoS::AtLeastOnce, false, b"expired", None)
        .await;
    assert_eq!(code, Some(0x87));
    ivy.expect_no_publish(QUIET).await;
    broker.stop().await;
}

/// QoS 1 group messages of one read are recorded in the history first and routed at the
/// end of the read (their commit overlapping the deliveries): a subscription, a plain
/// topic's message and a QoS 2 message in the same read still see them in order, and the
/// acknowledgements keep the order of the packets [MQTT-4.6.0-2]. On a multi-thread
/// runtime, where the commit runs on the connection's thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_of_one_read_keep_their_order_around_other_packets() {
    use common::{connect_packet, encode, publish_packet, subscribe_packet, RawClient};
    use rookery::codec::{self, Packet, ProtocolVersion};
    const APP: &str = "app-token-for-ordering";
    let broker = TestBroker::start_with(|c| c.auth.admin_token = Some(APP.into())).await;
    let gid = group(
        &broker,
        Permissions::default(),
        0,
        &["writer", "reader"],
        MemberPermissionsPatch::default(),
    );
    let topic = format!("groups/{gid}");
    let mut reader = v5_user(&broker, "reader").await;
    reader.subscribe(&topic, v5::QoS::AtLeastOnce).await;
    reader.subscribe("plain/t", v5::QoS::AtLeastOnce).await;

    let mut connect = connect_packet(ProtocolVersion::V5, "writer-raw");
    connect.username = Some("writer".into());
    connect.password = Some(bytes::Bytes::from(broker.token("writer")));
    let (mut writer, connack) = RawClient::connect(broker.addr, connect).await;
    assert_eq!(connack.reason_code, 0);
    let qos1 = codec::QoS::AtLeastOnce;
    let packets = [
        publish_packet(&topic, qos1, 1, b"g1"),
        publish_packet(&topic, qos1, 2, b"g2"),
        subscribe_packet(3, "plain/t", qos1),
        publish_packet("plain/t", qos1, 4, b"p1"),
        publish_packet(&topic, qos1, 5, b"g3"),
        publish_packet(&topic, codec::QoS::ExactlyOnce, 6, b"g4"),
        publish_packet(&topic, qos1, 7, b"g5"),
    ];
    // One write, so that the broker reads them together.
    let bytes: Vec<u8> = packets
        .iter()
        .flat_map(|p| encode(p, ProtocolVersion::V5))
        .collect();
    writer.send_raw(&bytes).await;

    let mut answers = Vec::new();
    while answers.len() < 7 {
        match writer.expect().await {
            Packet::PubAck(ack) => answers.push(("puback", ack.packet_id, ack.reason_code)),
            Packet::PubRec(rec) => answers.push(("pubrec", rec.packet_id, rec.reason_code)),
            Packet::SubAck(ack) => answers.push(("suback", ack.packet_id, 0)),
            // Its own plain-topic message, now that it subscribed.
            Packet::Publish(publish) => assert_eq!(&publish.payload[..], b"p1"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        answers,
        [
            ("puback", 1, 0),
            ("puback", 2, 0),
            ("suback", 3, 0),
            ("puback", 4, 0),
            ("puback", 5, 0),
            ("pubrec", 6, 0),
            ("puback", 7, 0),
        ]
    );
    let mut received = Vec::new();
    for _ in 0..6 {
        received.push(reader.recv_publish().await.payload.to_vec());
    }
    assert_eq!(
        received,
        [&b"g1"[..], b"g2", b"p1", b"g3", b"g4", b"g5"].map(<[u8]>::to_vec)
    );
    reader.expect_no_publish(QUIET).await;

    // Every group message is in the history once, in order.
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/api", broker.http_addr()))
        .json(&serde_json::json!({"op": "groupmessages", "token": APP, "group": {"gid": gid}}))
        .send()
        .await
        .expect("the API answers")
        .json()
        .await
        .expect("JSON");
    let payloads: Vec<&str> = answer["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|m| m["payload"].as_str().unwrap_or_default())
        .collect();
    // History pages newest first; ids follow the order the messages were recorded.
    assert_eq!(payloads, ["g5", "g4", "g3", "g2", "g1"], "{answer}");
    broker.stop().await;
}
