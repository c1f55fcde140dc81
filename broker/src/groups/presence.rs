//! Presence (SPEC §5, §8): members coming online and going offline are announced on
//! `$groups/{gid}/presence` of each of their groups; a subscriber to it first gets a
//! snapshot of the members and whether they are online.

use super::directory::Directory;
use super::model::{Gid, Group};
use super::now_secs;
use rustc_hash::FxHashMap;
use serde_json::json;
use std::sync::Mutex;

/// Connections per logged-in user.
#[derive(Default)]
pub struct Presence {
    online: Mutex<FxHashMap<String, usize>>,
}

/// A presence notification to publish: (topic, JSON payload).
pub type Announcement = (String, Vec<u8>);

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<String, usize>> {
        self.online.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection of `address` started: announcements if it is the user's first.
    pub fn connected(&self, address: &str, directory: &Directory) -> Vec<Announcement> {
        let first = {
            let mut online = self.lock();
            let count = online.entry(address.to_string()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            announce(address, true, directory)
        } else {
            Vec::new()
        }
    }

    /// A connection of `address` ended: announcements if it was the user's last.
    pub fn disconnected(&self, address: &str, directory: &Directory) -> Vec<Announcement> {
        let last = {
            let mut online = self.lock();
            match online.get_mut(address) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    online.remove(address);
                    true
                }
                None => false,
            }
        };
        if last {
            announce(address, false, directory)
        } else {
            Vec::new()
        }
    }

    /// The snapshot a new subscriber to a group's presence gets.
    pub fn snapshot(&self, group: &Group) -> Vec<u8> {
        let online = self.lock();
        let mut members: Vec<(&String, bool)> = group
            .members
            .keys()
            .map(|a| (a, online.get(a).is_some_and(|n| *n > 0)))
            .collect();
        members.sort();
        let members: Vec<_> = members
            .into_iter()
            .map(|(address, online)| json!({"address": address, "online": online}))
            .collect();
        serde_json::to_vec(&json!({"gid": group.gid, "members": members})).unwrap_or_default()
    }
}

fn announce(address: &str, online: bool, directory: &Directory) -> Vec<Announcement> {
    let ts = now_secs();
    directory
        .groups_of(address)
        .into_iter()
        .map(|gid: Gid| {
            let body = json!({"gid": gid, "address": address, "online": online, "ts": ts});
            (
                format!("$groups/{gid}/presence"),
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        })
        .collect()
}
