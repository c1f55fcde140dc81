//! The group model of SPEC §4: permissions as flag bits, members with their own
//! permissions and admin flags, per-message-type rules, validity.
//!
//! A rule's permissions are kept as flag bits (the `flags` of the API), so that flags and
//! permission values cannot disagree: `permissions` in a request are written into the
//! bits, and the values in a response are read from them.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type Gid = u32;

/// The five actions a group rule governs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Publish group messages (`groups/{gid}[/{type}...]`).
    Send,
    /// Receive group messages.
    Recv,
    /// Publish to live topics (`groups/{gid}/live/...`).
    Pub,
    /// Subscribe to live topics.
    Sub,
    /// See presence and the member list.
    List,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Send,
        Action::Recv,
        Action::Pub,
        Action::Sub,
        Action::List,
    ];

    /// The flag bits of (selected, anyone) for this action (SPEC §4 "Flags"). For
    /// `recv` the second bit means round-robin rather than anyone.
    pub const fn bits(self) -> (u32, u32) {
        match self {
            Action::Send => (0x1, 0x2),
            Action::Recv => (0x10, 0x20),
            Action::Pub => (0x100, 0x200),
            Action::Sub => (0x1000, 0x2000),
            Action::List => (0x10000, 0x20000),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Recv => "recv",
            Action::Pub => "pub",
            Action::Sub => "sub",
            Action::List => "list",
        }
    }
}

/// Every permission bit.
pub const PERMISSION_BITS: u32 =
    0x1 | 0x2 | 0x10 | 0x20 | 0x100 | 0x200 | 0x1000 | 0x2000 | 0x10000 | 0x20000;
/// Group-wide behaviour bits.
pub const NO_STORE: u32 = 0x40;
pub const LOOPBACK: u32 = 0x80;
/// Every flag the API accepts.
pub const KNOWN_FLAGS: u32 = PERMISSION_BITS | NO_STORE | LOOPBACK;

/// The level of `action` in a rule's flag bits: 0 members, 1 selected members, 2 anyone
/// (for `recv`: round-robin). With both bits set the higher level wins; for `recv` both
/// bits mean round-robin among the selected receivers, see [`round_robin_selected`].
pub fn level(flags: u32, action: Action) -> u8 {
    let (selected, anyone) = action.bits();
    if flags & anyone != 0 {
        2
    } else if flags & selected != 0 {
        1
    } else {
        0
    }
}

/// `0x10|0x20`: round-robin among the members whose own `recv` is true.
pub fn round_robin_selected(flags: u32) -> bool {
    flags & 0x30 == 0x30
}

/// Writes `level` for `action` into `flags` (the other actions' bits are kept).
pub fn set_level(flags: u32, action: Action, level: u8) -> u32 {
    let (selected, anyone) = action.bits();
    let cleared = flags & !(selected | anyone);
    match level {
        0 => cleared,
        1 => cleared | selected,
        _ => cleared | anyone,
    }
}

/// Permission values as the API shows and accepts them; absent fields keep their value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recv: Option<u8>,
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    pub publish: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<u8>,
}

impl Permissions {
    pub fn get(&self, action: Action) -> Option<u8> {
        match action {
            Action::Send => self.send,
            Action::Recv => self.recv,
            Action::Pub => self.publish,
            Action::Sub => self.sub,
            Action::List => self.list,
        }
    }

    fn slot(&mut self, action: Action) -> &mut Option<u8> {
        match action {
            Action::Send => &mut self.send,
            Action::Recv => &mut self.recv,
            Action::Pub => &mut self.publish,
            Action::Sub => &mut self.sub,
            Action::List => &mut self.list,
        }
    }

    /// The values the bits of `flags` stand for.
    pub fn from_flags(flags: u32) -> Permissions {
        let mut permissions = Permissions::default();
        for action in Action::ALL {
            *permissions.slot(action) = Some(level(flags, action));
        }
        permissions
    }

    /// `flags` with the given values written in. Values above 2 are refused by the
    /// caller ([`Permissions::validate`]). Setting `recv` to 2 here means plain
    /// round-robin among all members; round-robin among selected receivers is flags
    /// `0x30`.
    pub fn apply_to(&self, mut flags: u32) -> u32 {
        for action in Action::ALL {
            if let Some(value) = self.get(action) {
                flags = set_level(flags, action, value);
            }
        }
        flags
    }

    pub fn validate(&self) -> Result<(), String> {
        for action in Action::ALL {
            if let Some(value) = self.get(action) {
                if value > 2 {
                    return Err(format!(
                        "permissions.{} must be 0, 1 or 2, not {value}",
                        action.name()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A member's own permissions: they matter only where the group value is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPermissions {
    pub send: bool,
    pub recv: bool,
    #[serde(rename = "pub")]
    pub publish: bool,
    pub sub: bool,
    pub list: bool,
}

impl Default for MemberPermissions {
    fn default() -> Self {
        MemberPermissions {
            send: true,
            recv: true,
            publish: true,
            sub: true,
            list: true,
        }
    }
}

impl MemberPermissions {
    pub fn get(&self, action: Action) -> bool {
        match action {
            Action::Send => self.send,
            Action::Recv => self.recv,
            Action::Pub => self.publish,
            Action::Sub => self.sub,
            Action::List => self.list,
        }
    }
}

/// A request's member permissions: absent fields keep the member's value (true for a new
/// member).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberPermissionsPatch {
    pub send: Option<bool>,
    pub recv: Option<bool>,
    #[serde(rename = "pub")]
    pub publish: Option<bool>,
    pub sub: Option<bool>,
    pub list: Option<bool>,
}

impl MemberPermissionsPatch {
    pub fn apply_to(&self, mut to: MemberPermissions) -> MemberPermissions {
        let fields = [
            (self.send, &mut to.send),
            (self.recv, &mut to.recv),
            (self.publish, &mut to.publish),
            (self.sub, &mut to.sub),
            (self.list, &mut to.list),
        ];
        for (value, slot) in fields {
            if let Some(value) = value {
                *slot = value;
            }
        }
        to
    }
}

/// What a member may administer (SPEC §8 "Real-time API").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminFlags {
    pub owner: bool,
    pub admin: bool,
    pub modify: bool,
    pub remove: bool,
    pub adduser: bool,
    pub remuser: bool,
    pub addadmin: bool,
    pub remadmin: bool,
    pub remowner: bool,
}

impl AdminFlags {
    pub const OWNER: AdminFlags = AdminFlags {
        owner: true,
        admin: true,
        modify: true,
        remove: true,
        adduser: true,
        remuser: true,
        addadmin: true,
        remadmin: true,
        remowner: true,
    };

    pub fn any(&self) -> bool {
        *self != AdminFlags::default()
    }
}

/// A request's admin flags: absent fields keep the member's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminPatch {
    pub owner: Option<bool>,
    pub admin: Option<bool>,
    pub modify: Option<bool>,
    pub remove: Option<bool>,
    pub adduser: Option<bool>,
    pub remuser: Option<bool>,
    pub addadmin: Option<bool>,
    pub remadmin: Option<bool>,
    pub remowner: Option<bool>,
}

impl AdminPatch {
    pub fn apply_to(&self, mut to: AdminFlags) -> AdminFlags {
        let fields = [
            (self.owner, &mut to.owner),
            (self.admin, &mut to.admin),
            (self.modify, &mut to.modify),
            (self.remove, &mut to.remove),
            (self.adduser, &mut to.adduser),
            (self.remuser, &mut to.remuser),
            (self.addadmin, &mut to.addadmin),
            (self.remadmin, &mut to.remadmin),
            (self.remowner, &mut to.remowner),
        ];
        for (value, slot) in fields {
            if let Some(value) = value {
                *slot = value;
            }
        }
        to
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Default-rule member permissions.
    pub permissions: MemberPermissions,
    /// Member permissions for one message type, overriding the default for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub type_permissions: BTreeMap<u32, MemberPermissions>,
    pub admin: AdminFlags,
    /// Unix seconds when the member joined: history is visible from then on.
    pub since: u64,
}

impl Member {
    pub fn new(since: u64) -> Member {
        Member {
            permissions: MemberPermissions::default(),
            type_permissions: BTreeMap::new(),
            admin: AdminFlags::default(),
            since,
        }
    }

    /// The member permissions that apply to messages of `message_type`.
    pub fn permissions_for(&self, message_type: u32) -> &MemberPermissions {
        self.type_permissions
            .get(&message_type)
            .unwrap_or(&self.permissions)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub gid: Gid,
    pub name: String,
    /// Default-rule permission bits plus the group-wide bits (no-store, loopback).
    pub flags: u32,
    /// Permission bits for one message type, replacing the default rule's for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub type_flags: BTreeMap<u32, u32>,
    pub active: bool,
    /// Unix seconds: validity start, and the expiry (start + duration, pushed later by
    /// `expiryext` on each group message).
    pub start: u64,
    pub duration: u64,
    pub expiryext: u64,
    pub expires_at: u64,
    pub created: u64,
    /// Fx hashing: one lookup per delivery of every group message.
    pub members: FxHashMap<String, Member>,
}

/// Default validity: one year.
pub const DEFAULT_DURATION: u64 = 365 * 24 * 3600;

impl Group {
    pub fn new(gid: Gid, name: String, now: u64) -> Group {
        Group {
            gid,
            name,
            flags: 0,
            type_flags: BTreeMap::new(),
            active: true,
            start: now,
            duration: DEFAULT_DURATION,
            expiryext: 0,
            expires_at: now.saturating_add(DEFAULT_DURATION),
            created: now,
            members: FxHashMap::default(),
        }
    }

    /// The permission bits that apply to messages of `message_type`.
    pub fn flags_for(&self, message_type: u32) -> u32 {
        self.type_flags
            .get(&message_type)
            .copied()
            .unwrap_or(self.flags)
    }

    pub fn no_store(&self) -> bool {
        self.flags & NO_STORE != 0
    }

    pub fn loopback(&self) -> bool {
        self.flags & LOOPBACK != 0
    }

    /// Why the group denies everything at `now`, if it does.
    pub fn unavailable(&self, now: u64) -> Option<super::acl::Deny> {
        use super::acl::Deny;
        if !self.active {
            Some(Deny::Inactive)
        } else if now < self.start {
            Some(Deny::NotStarted)
        } else if now >= self.expires_at {
            Some(Deny::Expired)
        } else {
            None
        }
    }

    /// A group message at `now` extends the expiry to at least `now + expiryext`.
    pub fn extend_on_message(&mut self, now: u64) -> bool {
        if self.expiryext == 0 {
            return false;
        }
        let extended = now.saturating_add(self.expiryext);
        if extended > self.expires_at {
            self.expires_at = extended;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_permission_values_agree_both_ways() {
        // Every combination of levels survives a round trip through the bits.
        for send in 0..3 {
            for recv in 0..3 {
                for list in 0..3 {
                    let permissions = Permissions {
                        send: Some(send),
                        recv: Some(recv),
                        publish: Some(1),
                        sub: Some(2),
                        list: Some(list),
                    };
                    let flags = permissions.apply_to(NO_STORE);
                    assert_eq!(Permissions::from_flags(flags), permissions);
                    assert_eq!(flags & NO_STORE, NO_STORE, "other bits are kept");
                }
            }
        }
        assert_eq!(level(0x30, Action::Recv), 2);
        assert!(round_robin_selected(0x30));
        assert_eq!(Permissions::from_flags(0x2 | 0x1).send, Some(2));
        let patch = Permissions {
            recv: Some(0),
            ..Permissions::default()
        };
        assert_eq!(patch.apply_to(0x30 | 0x2), 0x2);
        assert!(Permissions {
            sub: Some(3),
            ..Permissions::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn expiryext_only_extends() {
        let mut group = Group::new(1, "g".into(), 100);
        group.expires_at = 200;
        group.expiryext = 50;
        assert!(!group.extend_on_message(120), "170 < 200");
        assert!(group.extend_on_message(180));
        assert_eq!(group.expires_at, 230);
    }
}
