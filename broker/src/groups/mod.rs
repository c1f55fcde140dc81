//! Groups as first-class topics (SPEC §3–§8): the model (`model.rs`), the one ACL
//! decision (`acl.rs`), users and their tokens (`users.rs`), the directory that holds and
//! persists them (`directory.rs`), and the topic namespace below.

pub mod acl;
pub mod backend;
pub mod directory;
pub mod enforce;
pub mod history;
pub mod model;
pub mod presence;
pub mod users;

pub use model::Gid;

/// A real-time API request from `address` (SPEC §8): the backend ops under admin-flag
/// rules, answered like the HTTP API, with the request's `id` echoed.
pub async fn realtime_request(
    broker: &std::sync::Arc<crate::server::Broker>,
    address: &str,
    request: serde_json::Value,
) -> serde_json::Value {
    let caller = crate::api::ops::Caller::User(address.to_string());
    crate::api::ops::execute(broker, caller, request).await.1
}

/// What a topic name means in the group namespace (SPEC §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupTopic<'a> {
    /// `groups/{gid}` (type 0) or `groups/{gid}/{type}[/...]`.
    Message { gid: Gid, message_type: u32 },
    /// `groups/{gid}/live[/...]`: never retained, stored or queued.
    Live { gid: Gid },
    /// `$groups/{gid}/presence`.
    Presence { gid: Gid },
    /// `$groups/ops`: real-time management requests.
    Ops,
    /// `$users/{address}/events`.
    UserEvents { address: &'a str },
    /// `$users/{address}/replies`.
    UserReplies { address: &'a str },
    /// `$users/{address}/messages`: messages to one user (the backend `message` op with
    /// `to`).
    UserMessages { address: &'a str },
}

/// Why a topic in the group namespace names nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadGroupTopic(pub &'static str);

/// Parses a topic name. `None`: an ordinary topic. Everything under `groups/`, `$groups/`
/// and `$users/` is reserved: a malformed name there is an error, not an ordinary topic.
pub fn parse_topic(topic: &str) -> Option<Result<GroupTopic<'_>, BadGroupTopic>> {
    let mut levels = topic.split('/');
    let first = levels.next()?;
    let parsed = match first {
        "groups" => {
            let gid = parse_gid(levels.next());
            match (gid, levels.next()) {
                (Err(e), _) => Err(e),
                (Ok(gid), None) => Ok(GroupTopic::Message {
                    gid,
                    message_type: 0,
                }),
                (Ok(gid), Some("live")) => Ok(GroupTopic::Live { gid }),
                (Ok(gid), Some(kind)) => match parse_number(kind) {
                    Some(message_type) => Ok(GroupTopic::Message { gid, message_type }),
                    None => Err(BadGroupTopic(
                        "groups/{gid}/ must be followed by a message type (an integer) or live",
                    )),
                },
            }
        }
        "$groups" => match (levels.next(), levels.next(), levels.next()) {
            (Some("ops"), None, None) => Ok(GroupTopic::Ops),
            (Some(gid), Some("presence"), None) => {
                parse_gid(Some(gid)).map(|gid| GroupTopic::Presence { gid })
            }
            _ => Err(BadGroupTopic("$groups/ has only ops and {gid}/presence")),
        },
        "$users" => match (levels.next(), levels.next(), levels.next()) {
            (Some(address), Some("events"), None) if !address.is_empty() => {
                Ok(GroupTopic::UserEvents { address })
            }
            (Some(address), Some("replies"), None) if !address.is_empty() => {
                Ok(GroupTopic::UserReplies { address })
            }
            (Some(address), Some("messages"), None) if !address.is_empty() => {
                Ok(GroupTopic::UserMessages { address })
            }
            _ => Err(BadGroupTopic(
                "$users/ has only {address}/events, {address}/replies and {address}/messages",
            )),
        },
        _ => return None,
    };
    Some(parsed)
}

fn parse_gid(level: Option<&str>) -> Result<Gid, BadGroupTopic> {
    level
        .and_then(parse_number)
        .filter(|gid| *gid != 0)
        .ok_or(BadGroupTopic(
            "a group topic needs a gid (a positive integer)",
        ))
}

/// A canonical decimal (no sign, no leading zeros) that fits a u32.
fn parse_number(level: &str) -> Option<u32> {
    let canonical = !level.is_empty()
        && level.bytes().all(|b| b.is_ascii_digit())
        && (level == "0" || !level.starts_with('0'));
    canonical.then(|| level.parse().ok()).flatten()
}

/// Unix time in seconds: group validity and member `since` are in seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace() {
        let message = |gid, message_type| Some(Ok(GroupTopic::Message { gid, message_type }));
        assert_eq!(parse_topic("groups/7"), message(7, 0));
        assert_eq!(parse_topic("groups/7/3"), message(7, 3));
        assert_eq!(parse_topic("groups/7/3/more/levels"), message(7, 3));
        assert_eq!(
            parse_topic("groups/7/live/x"),
            Some(Ok(GroupTopic::Live { gid: 7 }))
        );
        assert_eq!(
            parse_topic("$groups/7/presence"),
            Some(Ok(GroupTopic::Presence { gid: 7 }))
        );
        assert_eq!(parse_topic("$groups/ops"), Some(Ok(GroupTopic::Ops)));
        assert_eq!(
            parse_topic("$users/alice/events"),
            Some(Ok(GroupTopic::UserEvents { address: "alice" }))
        );
        for bad in [
            "groups",
            "groups/",
            "groups/x",
            "groups/0",
            "groups/07",
            "groups/7/x",
            "groups/7/",
            "groups/99999999999",
            "$groups/7",
            "$users/alice",
            "$users//events",
        ] {
            assert!(matches!(parse_topic(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(parse_topic("group/7"), None);
        assert_eq!(parse_topic("a/groups/7"), None);
    }
}
