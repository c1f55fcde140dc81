//! The backend `message` op (SPEC §8): a group message published on behalf of a user,
//! through the same ACL decision as a client PUBLISH.

use super::acl::{decide, Deny, Who};
use super::directory::DirError;
use super::model::{Action, Gid};
use super::now_secs;
use crate::codec::{MqttStr, Properties, Publish, QoS};
use crate::durable::Durable;
use crate::message::Message;
use crate::router::Router;
use bytes::Bytes;
use std::sync::Arc;

/// What a backend message request asks for.
#[derive(Debug, Clone)]
pub struct BackendMessage {
    /// The sending user's address: the ACL applies to them.
    pub from: String,
    pub gid: Gid,
    pub message_type: u32,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

/// The management API's error for an ACL refusal.
pub fn deny_error(deny: Deny, gid: Gid, who: &str) -> DirError {
    match deny {
        Deny::NotMember => DirError::NotMember(who.to_string()),
        Deny::Inactive | Deny::NotStarted | Deny::Expired => {
            DirError::Permission(format!("group {gid}: {}", deny.reason()))
        }
        Deny::NotSelected => DirError::Permission(format!("{who:?}: {}", deny.reason())),
    }
}

/// A message to one user (`message` with `to`): published on `$users/{to}/messages`, which
/// only that user may subscribe to; queued for their persistent sessions while offline.
/// Both users must exist. Waits for the commit when it had to be stored.
pub async fn publish_to_user(
    router: &Router,
    durable: Option<&Arc<Durable>>,
    from: &str,
    to: &str,
    payload: Bytes,
    qos: QoS,
) -> Result<(String, usize), DirError> {
    let directory = &router.directory;
    for address in [from, to] {
        if directory.user(address).is_none() {
            return Err(DirError::NoUser(address.to_string()));
        }
    }
    let topic = format!("$users/{to}/messages");
    let publish = Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttStr::from(topic.as_str()),
        packet_id: 0,
        properties: Properties::default(),
        payload,
    };
    let mut message = Message::new(publish, Arc::from(""));
    message.sender = Some(Arc::from(from));
    let routed = router.publish(message, None);
    wait_routed(durable, &routed).await?;
    Ok((topic, routed.queued))
}

async fn wait_routed(
    durable: Option<&Arc<Durable>>,
    routed: &crate::router::Routed,
) -> Result<(), DirError> {
    if routed.refused_storage_full {
        return Err(DirError::Internal(
            "storage is full: the message was refused".into(),
        ));
    }
    if let (Some(durable), Some(ticket)) = (durable, routed.ticket) {
        if let Err(full) = durable.wait(ticket).await {
            return Err(DirError::Internal(if full {
                "storage is full: the message may not be stored".into()
            } else {
                "the message could not be stored".into()
            }));
        }
    }
    Ok(())
}

/// Publishes the message if `from` may send it; returns the topic it went to and how many
/// sessions it was queued for. Waits for the commit when it had to be stored.
pub async fn publish(
    router: &Router,
    durable: Option<&Arc<Durable>>,
    request: BackendMessage,
) -> Result<(String, usize), DirError> {
    let directory = &router.directory;
    if directory.user(&request.from).is_none() {
        return Err(DirError::NoUser(request.from));
    }
    let group = directory
        .group(request.gid)
        .ok_or(DirError::NoGroup(request.gid))?;
    let now = now_secs();
    decide(
        Who::User(&request.from),
        &group,
        Action::Send,
        request.message_type,
        now,
    )
    .map_err(|deny| deny_error(deny, request.gid, &request.from))?;
    let topic = if request.message_type == 0 {
        format!("groups/{}", request.gid)
    } else {
        format!("groups/{}/{}", request.gid, request.message_type)
    };
    let expiry_ticket = directory.on_group_message(request.gid, now);
    let publish = Publish {
        dup: false,
        qos: request.qos,
        retain: request.retain,
        topic: MqttStr::from(topic.as_str()),
        packet_id: 0,
        properties: Properties::default(),
        payload: request.payload,
    };
    // The publisher id is empty: no client is the sender, so no-local removes no one.
    let mut message = Message::new(publish, Arc::from(""));
    message.sender = Some(Arc::from(request.from.as_str()));
    let routed = router.publish(message, None);
    if routed.refused_storage_full {
        return Err(DirError::Internal(
            "storage is full: the message was refused".into(),
        ));
    }
    if let Some(durable) = durable {
        for ticket in [routed.ticket, expiry_ticket].into_iter().flatten() {
            if let Err(full) = durable.wait(ticket).await {
                return Err(DirError::Internal(if full {
                    "storage is full: the message may not be stored".into()
                } else {
                    "the message could not be stored".into()
                }));
            }
        }
    }
    Ok((topic, routed.queued))
}
