//! The directory: every user and group, in memory, persisted through the commit worker
//! as opaque JSON records (`storage::Space`).
//!
//! Groups are immutable snapshots (`Arc<Group>`): a change builds a new snapshot and
//! swaps it in, so a reader (a delivery, a PUBLISH) takes one read lock and an `Arc`
//! clone, then decides without any lock, and the next reader after a change sees the new
//! snapshot. That is what makes a removal, demotion, deactivation or deletion stop
//! delivery on live subscriptions at once: there is no subscription-time decision to
//! revoke.

use super::model::{
    AdminFlags, AdminPatch, Gid, Group, Member, MemberPermissionsPatch, Permissions, KNOWN_FLAGS,
    PERMISSION_BITS,
};
use super::users::{issue_token, validate_address, LoginError, User, DEFAULT_TOKEN_EXPIRY_MINUTES};
use crate::durable::{Durable, Ticket};
use rookery_storage::{Op, Space};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// A refusal of a directory change, with the management API's error code (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirError {
    BadRequest(String),
    NoUser(String),
    NoGroup(Gid),
    NotMember(String),
    Exists(String),
    Permission(String),
    Internal(String),
}

impl DirError {
    pub fn code(&self) -> &'static str {
        match self {
            DirError::BadRequest(_) => "BADREQUEST",
            DirError::NoUser(_) => "NOUSER",
            DirError::NoGroup(_) => "NOGROUP",
            DirError::NotMember(_) => "NOTMEMBER",
            DirError::Exists(_) => "EXISTS",
            DirError::Permission(_) => "PERMISSION",
            DirError::Internal(_) => "INTERNAL",
        }
    }

    pub fn message(&self) -> String {
        match self {
            DirError::BadRequest(m) | DirError::Permission(m) | DirError::Internal(m) => m.clone(),
            DirError::NoUser(a) => format!("no user {a:?}"),
            DirError::NoGroup(gid) => format!("no group {gid}"),
            DirError::NotMember(a) => format!("{a:?} is not a member of the group"),
            DirError::Exists(what) => format!("{what} already exists"),
        }
    }
}

/// A notification for `$users/{address}/events` (SPEC §8).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub address: String,
    pub body: serde_json::Value,
}

/// What a change produced: its result, the commit that makes it durable, and the
/// notifications to send once it is.
#[derive(Debug)]
pub struct Change<T> {
    pub value: T,
    pub ticket: Option<Ticket>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    pub name: Option<String>,
    pub active: Option<bool>,
    /// Issue a new token with this lifetime in minutes (the old one stops working).
    pub new_token_minutes: Option<u64>,
    /// Revoke the token.
    pub remove_token: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidityPatch {
    /// Seconds from now (0 = now), as in mesibo.
    pub start: Option<u64>,
    pub duration: Option<u64>,
    pub expiryext: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct GroupPatch {
    pub name: Option<String>,
    pub flags: Option<u32>,
    pub permissions: Option<Permissions>,
    /// Scopes `permissions` to one message type.
    pub message_type: Option<u32>,
    pub active: Option<bool>,
    pub validity: Option<ValidityPatch>,
}

#[derive(Debug, Clone, Default)]
pub struct MembersEdit {
    pub addresses: Vec<String>,
    pub remove: bool,
    pub permissions: Option<MemberPermissionsPatch>,
    pub admin: Option<AdminPatch>,
    /// Scopes `permissions` to one message type.
    pub message_type: Option<u32>,
}

struct State {
    users: HashMap<String, User>,
    groups: HashMap<Gid, Arc<Group>>,
    next_gid: Gid,
    next_uid: u64,
    /// SHA-256 (hex) of the generated app token of the management API.
    admin_token_sha256: Option<String>,
}

pub struct Directory {
    state: RwLock<State>,
    /// Bumped by every change of a group (or of who is in it): a message stamped with the
    /// current generation at routing needs no second check when it is sent.
    generation: std::sync::atomic::AtomicU64,
    durable: Option<Arc<Durable>>,
    /// Held while a change is made and submitted, so that records reach the store in the
    /// order the changes were made.
    writer: Mutex<()>,
}

const NEXT_GID: &[u8] = b"next_gid";
const NEXT_UID: &[u8] = b"next_uid";

fn corrupt(what: &str, e: impl std::fmt::Display) -> String {
    format!("stored {what} cannot be read: {e}")
}

impl Directory {
    /// The directory recovered from the store's records (empty without a store).
    pub fn new(
        durable: Option<Arc<Durable>>,
        records: &[(Space, Vec<u8>, Vec<u8>)],
    ) -> Result<Directory, String> {
        let mut state = State {
            users: HashMap::new(),
            groups: HashMap::new(),
            next_gid: 1,
            next_uid: 1,
            admin_token_sha256: None,
        };
        for (space, key, value) in records {
            match space {
                Space::Users => {
                    let user: User =
                        serde_json::from_slice(value).map_err(|e| corrupt("user", e))?;
                    state.users.insert(user.address.clone(), user);
                }
                Space::Groups => {
                    let group: Group =
                        serde_json::from_slice(value).map_err(|e| corrupt("group", e))?;
                    state.groups.insert(group.gid, Arc::new(group));
                }
                Space::Directory if key.as_slice() == Self::ADMIN_TOKEN_KEY => {
                    let hash: String =
                        serde_json::from_slice(value).map_err(|e| corrupt("app token", e))?;
                    state.admin_token_sha256 = Some(hash);
                }
                Space::Directory => {
                    let n: u64 =
                        serde_json::from_slice(value).map_err(|e| corrupt("counter", e))?;
                    match key.as_slice() {
                        NEXT_GID => state.next_gid = Gid::try_from(n).unwrap_or(Gid::MAX),
                        NEXT_UID => state.next_uid = n,
                        _ => {}
                    }
                }
                // Read on demand (`history.rs`, `events/outbox.rs`), never part of the
                // recovered records.
                Space::History | Space::Outbox | Space::DeadLetters | Space::GroupQueues => {}
            }
        }
        // Never below what is stored, whatever the counters say.
        let max_gid = state.groups.keys().max().copied().unwrap_or(0);
        state.next_gid = state.next_gid.max(max_gid.saturating_add(1));
        let max_uid = state.users.values().map(|u| u.uid).max().unwrap_or(0);
        state.next_uid = state.next_uid.max(max_uid + 1);
        Ok(Directory {
            state: RwLock::new(state),
            generation: std::sync::atomic::AtomicU64::new(1),
            durable,
            writer: Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Write access; counts as a change (see `generation`).
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        let guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        guard
    }

    /// The current generation: read it before the snapshot it guards.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn submit(&self, ops: Vec<Op>) -> Option<Ticket> {
        self.durable.as_ref().map(|d| d.submit(ops))
    }

    fn put_user(user: &User) -> Op {
        Op::PutRecord {
            space: Space::Users,
            key: user.address.as_bytes().to_vec(),
            value: serde_json::to_vec(user).unwrap_or_default(),
        }
    }

    fn put_group(group: &Group) -> Op {
        Op::PutRecord {
            space: Space::Groups,
            key: group.gid.to_be_bytes().to_vec(),
            value: serde_json::to_vec(group).unwrap_or_default(),
        }
    }

    fn put_counter(key: &[u8], value: u64) -> Op {
        Op::PutRecord {
            space: Space::Directory,
            key: key.to_vec(),
            value: value.to_string().into_bytes(),
        }
    }

    // ---- users ----

    pub fn user(&self, address: &str) -> Option<User> {
        self.read().users.get(address).cloned()
    }

    /// Users in address order: `count` of them from `start`, and how many there are.
    pub fn users(&self, start: usize, count: usize) -> (Vec<User>, usize) {
        let state = self.read();
        let mut users: Vec<&User> = state.users.values().collect();
        users.sort_by(|a, b| a.address.cmp(&b.address));
        let total = users.len();
        let page = users.into_iter().skip(start).take(count).cloned().collect();
        (page, total)
    }

    /// An MQTT login: username = address, password = token.
    pub fn login(&self, address: &str, password: &[u8], now: u64) -> Result<(), LoginError> {
        match self.read().users.get(address) {
            None => Err(LoginError::NoUser),
            Some(user) => user.check_token(password, now),
        }
    }

    /// Creates a user with a fresh token: (the user, the token, shown only now).
    pub fn add_user(
        &self,
        address: &str,
        name: Option<String>,
        token_minutes: Option<u64>,
        now: u64,
    ) -> Result<Change<(User, String)>, DirError> {
        validate_address(address).map_err(DirError::BadRequest)?;
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.write();
        if state.users.contains_key(address) {
            return Err(DirError::Exists(format!("user {address:?}")));
        }
        let (token, hash) = issue_token();
        let minutes = token_minutes.unwrap_or(DEFAULT_TOKEN_EXPIRY_MINUTES);
        let uid = state.next_uid;
        state.next_uid += 1;
        let user = User {
            uid,
            address: address.to_string(),
            name: name.unwrap_or_default(),
            active: true,
            token_hash: Some(hash),
            token_expires: now.saturating_add(minutes.saturating_mul(60)),
            created: now,
        };
        state.users.insert(user.address.clone(), user.clone());
        drop(state);
        let ticket = self.submit(vec![
            Self::put_counter(NEXT_UID, uid + 1),
            Self::put_user(&user),
        ]);
        Ok(Change {
            value: (user, token),
            ticket,
            events: Vec::new(),
        })
    }

    /// Edits a user; returns the new token if one was issued.
    pub fn set_user(
        &self,
        address: &str,
        patch: UserPatch,
        now: u64,
    ) -> Result<Change<(User, Option<String>)>, DirError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.write();
        let user = state
            .users
            .get_mut(address)
            .ok_or_else(|| DirError::NoUser(address.into()))?;
        if let Some(name) = patch.name {
            user.name = name;
        }
        if let Some(active) = patch.active {
            user.active = active;
        }
        let mut token = None;
        if patch.remove_token {
            user.token_hash = None;
        } else if let Some(minutes) = patch.new_token_minutes {
            let (new, hash) = issue_token();
            user.token_hash = Some(hash);
            user.token_expires = now.saturating_add(minutes.saturating_mul(60));
            token = Some(new);
        }
        let user = user.clone();
        drop(state);
        let ticket = self.submit(vec![Self::put_user(&user)]);
        Ok(Change {
            value: (user, token),
            ticket,
            events: Vec::new(),
        })
    }

    /// Deletes a user and their memberships.
    pub fn remove_user(&self, address: &str) -> Result<Change<()>, DirError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.write();
        if state.users.remove(address).is_none() {
            return Err(DirError::NoUser(address.into()));
        }
        let mut ops = vec![Op::RemoveRecord {
            space: Space::Users,
            key: address.as_bytes().to_vec(),
        }];
        let mut events = Vec::new();
        for group in state.groups.values_mut() {
            if group.members.contains_key(address) {
                let g = Arc::make_mut(group);
                g.members.remove(address);
                ops.push(Self::put_group(g));
                events.extend(member_events(g, "group.member_removed", [address]));
            }
        }
        drop(state);
        Ok(Change {
            value: (),
            ticket: self.submit(ops),
            events,
        })
    }

    // ---- groups ----

    pub fn group(&self, gid: Gid) -> Option<Arc<Group>> {
        self.read().groups.get(&gid).cloned()
    }

    /// The gids of the groups `address` is a member of. O(groups): presence calls it
    /// once per user coming online or going offline.
    pub fn groups_of(&self, address: &str) -> Vec<Gid> {
        let state = self.read();
        let mut gids: Vec<Gid> = state
            .groups
            .values()
            .filter(|g| g.members.contains_key(address))
            .map(|g| g.gid)
            .collect();
        gids.sort_unstable();
        gids
    }

    /// Groups in gid order: `count` of them from `start`, and how many there are.
    pub fn groups(&self, start: usize, count: usize) -> (Vec<Arc<Group>>, usize) {
        let state = self.read();
        let mut gids: Vec<Gid> = state.groups.keys().copied().collect();
        gids.sort_unstable();
        let total = gids.len();
        let page = gids
            .into_iter()
            .skip(start)
            .take(count)
            .filter_map(|gid| state.groups.get(&gid).cloned())
            .collect();
        (page, total)
    }

    /// Creates a group; `creator` (a real-time API request) becomes its owner.
    pub fn add_group(
        &self,
        patch: GroupPatch,
        members: Option<MembersEdit>,
        creator: Option<&str>,
        now: u64,
    ) -> Result<Change<Arc<Group>>, DirError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.read();
        let gid = state.next_gid;
        if gid == Gid::MAX {
            return Err(DirError::Internal("no gid left".into()));
        }
        let mut group = Group::new(gid, String::new(), now);
        apply_group_patch(&mut group, &patch, now)?;
        if let Some(creator) = creator {
            if !state.users.contains_key(creator) {
                return Err(DirError::NoUser(creator.into()));
            }
            let mut owner = Member::new(now);
            owner.admin = AdminFlags::OWNER;
            group.members.insert(creator.to_string(), owner);
        }
        let mut events = Vec::new();
        if let Some(edit) = &members {
            let added = apply_members(&mut group, edit, &state.users, now)?;
            events.extend(member_events(&group, "group.member_added", added.iter()));
        }
        drop(state);
        let group = Arc::new(group);
        let mut state = self.write();
        state.next_gid = gid + 1;
        state.groups.insert(gid, group.clone());
        drop(state);
        let ticket = self.submit(vec![
            Self::put_counter(NEXT_GID, u64::from(gid) + 1),
            Self::put_group(&group),
        ]);
        Ok(Change {
            value: group,
            ticket,
            events,
        })
    }

    pub fn set_group(
        &self,
        gid: Gid,
        patch: GroupPatch,
        now: u64,
    ) -> Result<Change<Arc<Group>>, DirError> {
        self.change_group(gid, |group, _| {
            apply_group_patch(group, &patch, now)?;
            let kind = if patch.permissions.is_some() || patch.flags.is_some() {
                "group.permissions_changed"
            } else {
                "group.updated"
            };
            let everyone: Vec<String> = group.members.keys().cloned().collect();
            Ok(member_events(group, kind, everyone.iter()))
        })
    }

    pub fn edit_members(
        &self,
        gid: Gid,
        edit: MembersEdit,
        now: u64,
    ) -> Result<Change<Arc<Group>>, DirError> {
        self.change_group(gid, |group, users| {
            let before: Vec<String> = edit
                .addresses
                .iter()
                .filter(|a| group.members.contains_key(a.as_str()))
                .cloned()
                .collect();
            let touched = apply_members(group, &edit, users, now)?;
            let kind = if edit.remove {
                "group.member_removed"
            } else {
                "group.member_added"
            };
            // An edit of an existing member is a permissions change for them.
            let (changed, added): (Vec<_>, Vec<_>) = touched
                .iter()
                .partition(|a| before.contains(a) && !edit.remove);
            let mut events = member_events(group, kind, added);
            events.extend(member_events(group, "group.permissions_changed", changed));
            Ok(events)
        })
    }

    pub fn remove_group(&self, gid: Gid) -> Result<Change<Arc<Group>>, DirError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let group = self
            .write()
            .groups
            .remove(&gid)
            .ok_or(DirError::NoGroup(gid))?;
        let events = member_events(&group, "group.deleted", group.members.keys());
        let ticket = self.submit(vec![Op::RemoveRecord {
            space: Space::Groups,
            key: gid.to_be_bytes().to_vec(),
        }]);
        Ok(Change {
            value: group,
            ticket,
            events,
        })
    }

    /// A group message at `now`: pushes the expiry by `expiryext` (persisted only when it
    /// moves).
    pub fn on_group_message(&self, gid: Gid, now: u64) -> Option<Ticket> {
        let needs = self
            .group(gid)
            .is_some_and(|g| g.expiryext > 0 && now.saturating_add(g.expiryext) > g.expires_at);
        if !needs {
            return None;
        }
        self.change_group(gid, |group, _| {
            group.extend_on_message(now);
            Ok(Vec::new())
        })
        .ok()
        .and_then(|c| c.ticket)
    }

    /// Copy-on-write change of one group.
    fn change_group(
        &self,
        gid: Gid,
        change: impl FnOnce(&mut Group, &HashMap<String, User>) -> Result<Vec<Event>, DirError>,
    ) -> Result<Change<Arc<Group>>, DirError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.read();
        let current = state.groups.get(&gid).ok_or(DirError::NoGroup(gid))?;
        let mut group = Group::clone(current);
        let events = change(&mut group, &state.users)?;
        drop(state);
        let group = Arc::new(group);
        self.write().groups.insert(gid, group.clone());
        let ticket = self.submit(vec![Self::put_group(&group)]);
        Ok(Change {
            value: group,
            ticket,
            events,
        })
    }

    // ---- the management API's generated app token ----

    /// The record key of the app token's hash (`Space::Directory`).
    pub const ADMIN_TOKEN_KEY: &'static [u8] = b"admin_token_sha256";

    /// SHA-256 (hex) of the generated app token, if one was generated.
    pub fn admin_token_sha256(&self) -> Option<String> {
        self.read().admin_token_sha256.clone()
    }

    /// Keeps (and stores) the SHA-256 (hex) of a generated app token.
    pub fn set_admin_token_sha256(&self, hash: String) -> Option<Ticket> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let value = serde_json::to_vec(&hash).unwrap_or_default();
        self.write().admin_token_sha256 = Some(hash);
        self.submit(vec![Op::PutRecord {
            space: Space::Directory,
            key: Self::ADMIN_TOKEN_KEY.to_vec(),
            value,
        }])
    }
}

fn member_events<'a>(
    group: &Group,
    kind: &str,
    addresses: impl IntoIterator<Item = impl AsRef<str> + 'a>,
) -> Vec<Event> {
    addresses
        .into_iter()
        .map(|address| Event {
            address: address.as_ref().to_string(),
            body: json!({"event": kind, "gid": group.gid, "name": group.name}),
        })
        .collect()
}

fn apply_group_patch(group: &mut Group, patch: &GroupPatch, now: u64) -> Result<(), DirError> {
    if let Some(flags) = patch.flags {
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DirError::BadRequest(format!(
                "unknown flag bits {:#x}",
                flags & !KNOWN_FLAGS
            )));
        }
        group.flags = flags;
    }
    if let Some(permissions) = &patch.permissions {
        permissions.validate().map_err(DirError::BadRequest)?;
        match patch.message_type {
            Some(t) => {
                let current = group.flags_for(t) & PERMISSION_BITS;
                group.type_flags.insert(t, permissions.apply_to(current));
            }
            None => group.flags = permissions.apply_to(group.flags),
        }
    }
    if let Some(name) = &patch.name {
        group.name = name.clone();
    }
    if let Some(active) = patch.active {
        group.active = active;
    }
    if let Some(validity) = patch.validity {
        if let Some(start) = validity.start {
            group.start = now.saturating_add(start);
        }
        if let Some(duration) = validity.duration {
            group.duration = duration;
        }
        if let Some(expiryext) = validity.expiryext {
            group.expiryext = expiryext;
        }
        if validity.start.is_some() || validity.duration.is_some() {
            group.expires_at = group.start.saturating_add(group.duration);
        }
    }
    Ok(())
}

/// Adds, edits or removes members; returns the addresses touched. Adding needs existing
/// users; removing a non-member is NOTMEMBER. Validated whole before anything changes.
fn apply_members(
    group: &mut Group,
    edit: &MembersEdit,
    users: &HashMap<String, User>,
    now: u64,
) -> Result<Vec<String>, DirError> {
    if edit.addresses.is_empty() {
        return Err(DirError::BadRequest("members.m names no member".into()));
    }
    for address in &edit.addresses {
        if edit.remove {
            if !group.members.contains_key(address) {
                return Err(DirError::NotMember(address.clone()));
            }
        } else if !users.contains_key(address) {
            return Err(DirError::NoUser(address.clone()));
        }
    }
    for address in &edit.addresses {
        if edit.remove {
            group.members.remove(address);
            continue;
        }
        let member = group
            .members
            .entry(address.clone())
            .or_insert_with(|| Member::new(now));
        if let Some(patch) = &edit.permissions {
            match edit.message_type {
                Some(t) => {
                    let base = *member.permissions_for(t);
                    member.type_permissions.insert(t, patch.apply_to(base));
                }
                None => member.permissions = patch.apply_to(member.permissions),
            }
        }
        if let Some(admin) = &edit.admin {
            member.admin = admin.apply_to(member.admin);
        }
    }
    Ok(edit.addresses.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Directory {
        Directory::new(None, &[]).unwrap()
    }

    #[test]
    fn users_groups_and_members() {
        let dir = directory();
        let (alice, token) = dir.add_user("alice", None, None, 100).unwrap().value;
        assert_eq!(alice.uid, 1);
        assert_eq!(dir.login("alice", token.as_bytes(), 101), Ok(()));
        assert_eq!(
            dir.add_user("alice", None, None, 100).unwrap_err().code(),
            "EXISTS"
        );
        assert_eq!(
            dir.add_user("a/b", None, None, 100).unwrap_err().code(),
            "BADREQUEST"
        );
        let group = dir
            .add_group(
                GroupPatch {
                    name: Some("g".into()),
                    ..GroupPatch::default()
                },
                None,
                Some("alice"),
                100,
            )
            .unwrap()
            .value;
        assert!(group.members["alice"].admin.owner);
        let edit = MembersEdit {
            addresses: vec!["bob".into()],
            ..MembersEdit::default()
        };
        assert_eq!(
            dir.edit_members(group.gid, edit.clone(), 100)
                .unwrap_err()
                .code(),
            "NOUSER"
        );
        dir.add_user("bob", None, None, 100).unwrap();
        let change = dir.edit_members(group.gid, edit, 100).unwrap();
        assert!(change.value.members.contains_key("bob"));
        assert_eq!(change.events[0].body["event"], "group.member_added");
        let removed = dir.remove_user("bob").unwrap();
        assert_eq!(removed.events.len(), 1);
        assert!(!dir.group(group.gid).unwrap().members.contains_key("bob"));
        assert_eq!(dir.remove_group(group.gid).unwrap().events.len(), 1);
        assert!(dir.group(group.gid).is_none());
        // gids are never reused.
        let next = dir
            .add_group(GroupPatch::default(), None, None, 100)
            .unwrap();
        assert_eq!(next.value.gid, group.gid + 1);
    }

    #[test]
    fn recovered_from_records() {
        let dir = directory();
        dir.add_user("alice", Some("A".into()), None, 100).unwrap();
        let g = dir
            .add_group(GroupPatch::default(), None, Some("alice"), 100)
            .unwrap()
            .value;
        let records = vec![
            (
                Space::Users,
                b"alice".to_vec(),
                serde_json::to_vec(&dir.user("alice").unwrap()).unwrap(),
            ),
            (
                Space::Groups,
                g.gid.to_be_bytes().to_vec(),
                serde_json::to_vec(&*g).unwrap(),
            ),
        ];
        let again = Directory::new(None, &records).unwrap();
        assert_eq!(again.user("alice").unwrap().name, "A");
        assert_eq!(*again.group(g.gid).unwrap(), *g);
        assert_eq!(
            again
                .add_group(GroupPatch::default(), None, None, 1)
                .unwrap()
                .value
                .gid,
            g.gid + 1
        );
        let bad = vec![(Space::Groups, vec![0], b"{".to_vec())];
        assert!(Directory::new(None, &bad).is_err());
    }
}
