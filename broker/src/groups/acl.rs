//! The one decision function for groups (SPEC §4–§6): (identity, group snapshot, action,
//! message type, time) → allow or deny with a reason. Pure and deny-by-default; used by
//! PUBLISH, SUBSCRIBE, every delivery, the real-time API and the backend `message` op.

use super::model::{level, round_robin_selected, Action, Group};

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    /// A client without a username: never a member of a group.
    Anonymous,
    /// An authenticated user, by address.
    User(&'a str),
}

impl<'a> Who<'a> {
    pub fn address(&self) -> Option<&'a str> {
        match self {
            Who::Anonymous => None,
            Who::User(address) => Some(address),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    Yes,
    /// `recv` 2: the member is one of the receivers a message rotates over.
    RoundRobin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deny {
    Inactive,
    NotStarted,
    Expired,
    /// The action needs membership (level 0 or 1, or round-robin receiving).
    NotMember,
    /// Level 1: the member's own permission for the action is false.
    NotSelected,
}

impl Deny {
    /// The management API's error code for this refusal (SPEC §8).
    pub fn code(self) -> &'static str {
        match self {
            Deny::Inactive | Deny::NotStarted => "GROUPINACTIVE",
            Deny::Expired => "GROUPEXPIRED",
            Deny::NotMember => "NOTMEMBER",
            Deny::NotSelected => "PERMISSION",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Deny::Inactive => "the group is inactive",
            Deny::NotStarted => "the group's validity has not started",
            Deny::Expired => "the group has expired",
            Deny::NotMember => "not a member of the group",
            Deny::NotSelected => "the member's permission for this action is off",
        }
    }
}

pub type Decision = Result<Allow, Deny>;

/// May `who` do `action` on messages of `message_type` in `group` at `now` (Unix s)?
pub fn decide(
    who: Who<'_>,
    group: &Group,
    action: Action,
    message_type: u32,
    now: u64,
) -> Decision {
    if let Some(deny) = group.unavailable(now) {
        return Err(deny);
    }
    let flags = group.flags_for(message_type);
    let member = who.address().and_then(|a| group.members.get(a));
    let selected = || match member {
        None => Err(Deny::NotMember),
        Some(m) if m.permissions_for(message_type).get(action) => Ok(Allow::Yes),
        Some(_) => Err(Deny::NotSelected),
    };
    match (level(flags, action), action) {
        (0, _) => member.map(|_| Allow::Yes).ok_or(Deny::NotMember),
        (1, _) => selected(),
        (_, Action::Recv) if round_robin_selected(flags) => selected().map(|_| Allow::RoundRobin),
        (_, Action::Recv) => member.map(|_| Allow::RoundRobin).ok_or(Deny::NotMember),
        // Anyone: members, authenticated non-members and anonymous clients.
        _ => Ok(Allow::Yes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::model::{Member, Permissions};

    fn group(flags: u32) -> Group {
        let mut group = Group::new(7, "g".into(), 1000);
        group.flags = flags;
        group.members.insert("alice".into(), Member::new(1000));
        let mut bob = Member::new(1000);
        bob.permissions.send = false;
        bob.permissions.recv = false;
        group.members.insert("bob".into(), bob);
        group
    }

    #[test]
    fn levels_members_selected_anyone() {
        let now = 2000;
        let normal = group(0);
        assert_eq!(
            decide(Who::User("alice"), &normal, Action::Send, 0, now),
            Ok(Allow::Yes)
        );
        assert_eq!(
            decide(Who::User("bob"), &normal, Action::Send, 0, now),
            Ok(Allow::Yes)
        );
        assert_eq!(
            decide(Who::User("carol"), &normal, Action::Send, 0, now),
            Err(Deny::NotMember)
        );
        assert_eq!(
            decide(Who::Anonymous, &normal, Action::Recv, 0, now),
            Err(Deny::NotMember)
        );

        let restricted = group(0x1);
        assert_eq!(
            decide(Who::User("alice"), &restricted, Action::Send, 0, now),
            Ok(Allow::Yes)
        );
        assert_eq!(
            decide(Who::User("bob"), &restricted, Action::Send, 0, now),
            Err(Deny::NotSelected)
        );

        let public = group(0x2);
        assert_eq!(
            decide(Who::User("carol"), &public, Action::Send, 0, now),
            Ok(Allow::Yes)
        );
        assert_eq!(
            decide(Who::Anonymous, &public, Action::Send, 0, now),
            Ok(Allow::Yes)
        );

        let hunt = group(0x20);
        assert_eq!(
            decide(Who::User("bob"), &hunt, Action::Recv, 0, now),
            Ok(Allow::RoundRobin)
        );
        assert_eq!(
            decide(Who::User("carol"), &hunt, Action::Recv, 0, now),
            Err(Deny::NotMember)
        );
        let hunt_selected = group(0x30);
        assert_eq!(
            decide(Who::User("bob"), &hunt_selected, Action::Recv, 0, now),
            Err(Deny::NotSelected)
        );
    }

    #[test]
    fn per_type_rules_and_validity() {
        let mut g = group(0);
        g.type_flags.insert(
            5,
            Permissions {
                send: Some(2),
                ..Permissions::default()
            }
            .apply_to(0),
        );
        assert_eq!(
            decide(Who::User("carol"), &g, Action::Send, 5, 2000),
            Ok(Allow::Yes)
        );
        assert_eq!(
            decide(Who::User("carol"), &g, Action::Send, 0, 2000),
            Err(Deny::NotMember)
        );
        g.members.get_mut("alice").unwrap().type_permissions.insert(
            9,
            crate::groups::model::MemberPermissions {
                send: false,
                ..Default::default()
            },
        );
        g.type_flags.insert(9, 0x1);
        assert_eq!(
            decide(Who::User("alice"), &g, Action::Send, 9, 2000),
            Err(Deny::NotSelected)
        );
        assert_eq!(
            decide(Who::User("bob"), &g, Action::Send, 9, 2000),
            Err(Deny::NotSelected)
        );

        assert_eq!(
            decide(Who::User("alice"), &g, Action::Send, 0, 999),
            Err(Deny::NotStarted)
        );
        assert_eq!(
            decide(Who::User("alice"), &g, Action::Send, 0, g.expires_at),
            Err(Deny::Expired)
        );
        g.active = false;
        assert_eq!(
            decide(Who::User("alice"), &g, Action::List, 0, 2000),
            Err(Deny::Inactive)
        );
    }
}
