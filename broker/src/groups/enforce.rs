//! Where the ACL decision meets MQTT (SPEC §6): the checks PUBLISH, SUBSCRIBE and every
//! delivery make for topics in the group namespace.

use super::acl::{decide, Allow, Deny, Who};
use super::directory::Directory;
use super::model::{Action, Gid, Group};
use super::{now_secs, parse_topic, GroupTopic};
use crate::codec::topic::filter_matches;
use std::sync::Arc;

/// A message on a group topic, as routing needs it: the group's snapshot at routing
/// time, and what receiving it takes.
#[derive(Debug, Clone)]
pub struct GroupRoute {
    pub gid: Gid,
    /// `None`: the group does not exist (any more): nobody receives.
    pub group: Option<Arc<Group>>,
    /// `Recv` for group messages, `Sub` for live topics, `List` for presence.
    pub action: Action,
    pub message_type: u32,
    /// Live topics and presence: never retained, stored or queued offline.
    pub live: bool,
    now: u64,
}

impl GroupRoute {
    /// The route of a message published on `topic`, if it is a group or live topic.
    pub fn for_topic(topic: &str, directory: &Directory) -> Option<GroupRoute> {
        // Presence is checked like a live topic, against `list`: a member removed or
        // demoted stops hearing it at once too.
        let (gid, message_type, live, action) = match parse_topic(topic)? {
            Ok(GroupTopic::Message { gid, message_type }) => {
                (gid, message_type, false, Action::Recv)
            }
            Ok(GroupTopic::Live { gid }) => (gid, 0, true, Action::Sub),
            Ok(GroupTopic::Presence { gid }) => (gid, 0, true, Action::List),
            _ => return None,
        };
        Some(GroupRoute {
            gid,
            group: directory.group(gid),
            action,
            message_type,
            live,
            now: now_secs(),
        })
    }

    /// Whether a subscriber logged in as `username` may receive this message; O(1): one
    /// member lookup in the snapshot.
    pub fn receiver(&self, username: Option<&str>) -> Option<Allow> {
        let group = self.group.as_ref()?;
        let who = username.map_or(Who::Anonymous, Who::User);
        decide(who, group, self.action, self.message_type, self.now).ok()
    }

    /// The time (Unix s) the route decides at.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Whether anything of the message may touch the disk: never for live topics or
    /// no-store groups.
    pub fn may_store(&self) -> bool {
        !self.live && self.group.as_ref().is_some_and(|g| !g.no_store())
    }

    /// Whether the message goes to one member in turn (`recv` 2).
    pub fn is_round_robin(&self) -> bool {
        !self.live
            && self.group.as_ref().is_some_and(|g| {
                super::model::level(g.flags_for(self.message_type), Action::Recv) == 2
            })
    }

    /// Whether the publishing client gets its own message back (flag 0x80).
    pub fn loopback(&self) -> bool {
        self.group.as_ref().is_some_and(|g| g.loopback())
    }
}

/// Why a publish or subscribe in the group namespace is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A malformed name under `groups/`, `$groups/` or `$users/`.
    BadTopic(&'static str),
    NoGroup,
    Denied(Deny),
    /// A `$` topic a client may not use that way.
    Reserved,
}

/// The check of a client PUBLISH. `Ok(None)`: an ordinary topic (the `acl_file`
/// decides); `Ok(Some(GroupTopic::Ops))` is the real-time API.
pub fn check_publish<'t>(
    directory: &Directory,
    username: Option<&str>,
    topic: &'t str,
) -> Result<Option<GroupTopic<'t>>, Refusal> {
    let parsed = match parse_topic(topic) {
        None if topic.starts_with('$') => return Err(Refusal::Reserved),
        None => return Ok(None),
        Some(parsed) => parsed.map_err(|e| Refusal::BadTopic(e.0))?,
    };
    let (gid, action, message_type) = match parsed {
        GroupTopic::Message { gid, message_type } => (gid, Action::Send, message_type),
        GroupTopic::Live { gid } => (gid, Action::Pub, 0),
        // Only authenticated users make real-time API requests.
        GroupTopic::Ops if username.is_some() => return Ok(Some(GroupTopic::Ops)),
        _ => return Err(Refusal::Reserved),
    };
    let group = directory.group(gid).ok_or(Refusal::NoGroup)?;
    let who = username.map_or(Who::Anonymous, Who::User);
    decide(who, &group, action, message_type, now_secs()).map_err(Refusal::Denied)?;
    Ok(Some(parsed))
}

/// The check of a SUBSCRIBE filter (without any `$share/{name}/` prefix). Filters with
/// wildcards over groups are accepted (each delivery is checked); a filter that names
/// one group is refused when its subscriber could receive nothing from it.
pub fn check_subscribe(
    directory: &Directory,
    username: Option<&str>,
    filter: &str,
) -> Result<(), Refusal> {
    let mut levels = filter.split('/');
    let first = levels.next().unwrap_or_default();
    let second = levels.next();
    let rest: Vec<&str> = levels.collect();
    let who = username.map_or(Who::Anonymous, Who::User);
    let now = now_secs();
    match (first, second) {
        ("groups", None) => Ok(()),
        ("groups", Some("+" | "#")) => Ok(()),
        ("groups", Some(gid)) => {
            // A name (no wildcard) must be a valid group topic.
            if !filter.contains(['+', '#']) {
                parse_topic(filter)
                    .transpose()
                    .map_err(|e| Refusal::BadTopic(e.0))?;
            }
            let gid = gid
                .parse::<Gid>()
                .map_err(|_| Refusal::BadTopic("a group topic needs a gid (a positive integer)"))?;
            let group = directory.group(gid).ok_or(Refusal::NoGroup)?;
            let live_only = rest.first() == Some(&"live");
            let typed: Option<u32> = rest.first().and_then(|t| t.parse().ok());
            let can =
                |action: Action, message_type: u32| decide(who, &group, action, message_type, now);
            let mut last = Err(Deny::NotMember);
            let mut candidates: Vec<(Action, u32)> = Vec::new();
            if live_only {
                candidates.push((Action::Sub, 0));
            } else if let Some(t) = typed {
                candidates.push((Action::Recv, t));
            } else {
                // `groups/{gid}` or `groups/{gid}/+...`/`#`: any type, or live.
                candidates.push((Action::Recv, 0));
                candidates.extend(group.type_flags.keys().map(|t| (Action::Recv, *t)));
                if rest.first().is_some_and(|l| *l == "+" || *l == "#") {
                    candidates.push((Action::Sub, 0));
                }
            }
            for (action, t) in candidates {
                last = can(action, t);
                if last.is_ok() {
                    return Ok(());
                }
            }
            last.map(|_| ()).map_err(Refusal::Denied)
        }
        // Presence is all that is delivered under `$groups/`: a filter that can match
        // presence topics only, over one group (checked like a name: `list` now) or over
        // groups (each announcement is checked against `list`, like group messages).
        ("$groups", Some(level)) => {
            let over_presence = matches!(
                (level, rest.as_slice()),
                ("#", []) | (_, ["presence" | "+" | "#"] | ["presence" | "+", "#"])
            );
            if !over_presence {
                return Err(Refusal::Reserved);
            }
            if matches!(level, "+" | "#") {
                return Ok(());
            }
            let gid: Gid = level.parse().map_err(|_| Refusal::Reserved)?;
            let group = directory.group(gid).ok_or(Refusal::NoGroup)?;
            decide(who, &group, Action::List, 0, now)
                .map(|_| ())
                .map_err(Refusal::Denied)
        }
        ("$groups", None) => Err(Refusal::Reserved),
        ("$users", Some(address)) => match username {
            Some(own)
                if own == address
                    && matches!(
                        rest.as_slice(),
                        ["events" | "replies" | "messages" | "+" | "#"]
                    ) =>
            {
                Ok(())
            }
            _ => Err(Refusal::Reserved),
        },
        ("$users", None) => Err(Refusal::Reserved),
        _ => Ok(()),
    }
}

/// The groups whose presence snapshot a new subscription to `filter` (without `$share/`) gets:
/// the group `$groups/{gid}/presence` names, or, for a wildcard over presence topics, the
/// subscriber's own groups whose presence it matches; only those it may list now.
pub fn presence_snapshots(
    directory: &Directory,
    username: Option<&str>,
    filter: &str,
) -> Vec<Arc<Group>> {
    if !filter.starts_with("$groups/") {
        return Vec::new();
    }
    let gids = match parse_topic(filter) {
        Some(Ok(GroupTopic::Presence { gid })) => vec![gid],
        // Wildcards: not every group anyone may list (that could be all of them), but
        // the subscriber's own.
        _ => username.map(|u| directory.groups_of(u)).unwrap_or_default(),
    };
    let who = username.map_or(Who::Anonymous, Who::User);
    let now = now_secs();
    gids.into_iter()
        .filter(|gid| filter_matches(filter, &format!("$groups/{gid}/presence")))
        .filter_map(|gid| directory.group(gid))
        .filter(|group| decide(who, group, Action::List, 0, now).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::directory::{GroupPatch, MembersEdit};
    use crate::groups::model::Permissions;

    #[test]
    fn publish_and_subscribe_checks() {
        let dir = Directory::new(None, &[]).unwrap();
        let now = now_secs();
        dir.add_user("alice", None, None, now).unwrap();
        dir.add_user("bob", None, None, now).unwrap();
        let gid = dir
            .add_group(
                GroupPatch {
                    permissions: Some(Permissions {
                        send: Some(1),
                        ..Permissions::default()
                    }),
                    ..GroupPatch::default()
                },
                Some(MembersEdit {
                    addresses: vec!["alice".into()],
                    ..MembersEdit::default()
                }),
                None,
                now,
            )
            .unwrap()
            .value
            .gid;
        let topic = format!("groups/{gid}");
        assert!(check_publish(&dir, Some("alice"), &topic).is_ok());
        assert_eq!(
            check_publish(&dir, Some("bob"), &topic),
            Err(Refusal::Denied(Deny::NotMember))
        );
        assert_eq!(check_publish(&dir, None, "$SYS/x"), Err(Refusal::Reserved));
        assert_eq!(
            check_publish(&dir, Some("alice"), "$groups/ops"),
            Ok(Some(GroupTopic::Ops))
        );
        assert_eq!(
            check_publish(&dir, None, "$groups/ops"),
            Err(Refusal::Reserved)
        );
        assert_eq!(
            check_publish(&dir, Some("a"), "groups/99"),
            Err(Refusal::NoGroup)
        );
        assert_eq!(check_publish(&dir, Some("a"), "plain/topic"), Ok(None));

        assert!(check_subscribe(&dir, Some("alice"), &format!("groups/{gid}/#")).is_ok());
        assert!(check_subscribe(&dir, Some("bob"), &format!("groups/{gid}/#")).is_err());
        assert!(
            check_subscribe(&dir, Some("bob"), "groups/+/#").is_ok(),
            "checked per delivery"
        );
        assert!(check_subscribe(&dir, Some("bob"), "$users/bob/events").is_ok());
        assert!(check_subscribe(&dir, Some("bob"), "$users/alice/events").is_err());
        assert!(check_subscribe(&dir, Some("bob"), "$users/+/events").is_err());
        assert!(check_subscribe(&dir, Some("alice"), &format!("$groups/{gid}/presence")).is_ok());
        assert!(check_subscribe(&dir, Some("bob"), &format!("$groups/{gid}/presence")).is_err());
        // Wildcards over presence: accepted (each announcement is checked); one group
        // named with a wildcard after it is checked like its name.
        for filter in [
            "$groups/#",
            "$groups/+/presence",
            "$groups/+/#",
            "$groups/+/+",
        ] {
            assert!(
                check_subscribe(&dir, Some("bob"), filter).is_ok(),
                "{filter}"
            );
        }
        for filter in [
            "$groups/{gid}/#",
            "$groups/{gid}/+",
            "$groups/{gid}/presence/#",
        ] {
            let filter = filter.replace("{gid}", &gid.to_string());
            assert!(
                check_subscribe(&dir, Some("alice"), &filter).is_ok(),
                "{filter}"
            );
            assert!(
                check_subscribe(&dir, Some("bob"), &filter).is_err(),
                "{filter}"
            );
        }
        // Nothing else is delivered under `$groups/`: the real-time API is publish-only.
        for filter in [
            "$groups/ops",
            "$groups/+",
            "$groups/+/live",
            "$groups/x/presence",
        ] {
            assert_eq!(
                check_subscribe(&dir, Some("alice"), filter),
                Err(Refusal::Reserved),
                "{filter}"
            );
        }
        let snapshots = |who, filter: &str| -> Vec<Gid> {
            presence_snapshots(&dir, who, filter)
                .iter()
                .map(|g| g.gid)
                .collect()
        };
        assert_eq!(snapshots(Some("alice"), "$groups/+/presence"), vec![gid]);
        assert_eq!(
            snapshots(Some("alice"), &format!("$groups/{gid}/presence")),
            vec![gid]
        );
        assert!(
            snapshots(Some("bob"), "$groups/#").is_empty(),
            "not a member"
        );
        assert!(snapshots(None, "$groups/#").is_empty());
        assert!(snapshots(Some("alice"), "groups/#").is_empty());
        assert!(check_subscribe(&dir, None, "$SYS/#").is_ok());

        let route = GroupRoute::for_topic(&topic, &dir).unwrap();
        assert_eq!(route.receiver(Some("alice")), Some(Allow::Yes));
        assert_eq!(route.receiver(Some("bob")), None);
        assert_eq!(route.receiver(None), None);
        assert!(route.may_store());
        let live = GroupRoute::for_topic(&format!("groups/{gid}/live/x"), &dir).unwrap();
        assert!(!live.may_store());
    }
}
