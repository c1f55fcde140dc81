//! The subscription trie: topic filters split into levels, with `+` and `#` as their own
//! branches, so that matching a topic visits only the branches it can match (§4.7).

use crate::codec::SubscriptionOptions;
use crate::session::SessionCore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One subscription of one session.
#[derive(Clone)]
pub struct Subscriber {
    pub session: Arc<SessionCore>,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
    /// Part of a `$share` group: delivered on its own, never merged with the session's
    /// other subscriptions.
    pub shared: bool,
    /// The username the session subscribed with, for per-delivery ACL checks.
    pub username: Option<Arc<str>>,
    /// For a filter that names one group topic (no wildcard): the last group decision,
    /// valid for one directory generation and one second (see `router::group_receiver`).
    pub group_cache: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// A `$share/{name}/{filter}` group: each message goes to one member [MQTT-4.8.2].
struct SharedGroup {
    name: Box<str>,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

#[derive(Default)]
struct Slot {
    subscribers: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.shared.is_empty()
    }

    fn list(&mut self, share: Option<&str>) -> &mut Vec<Subscriber> {
        match share {
            None => &mut self.subscribers,
            Some(name) => {
                let index = match self.shared.iter().position(|g| &*g.name == name) {
                    Some(index) => index,
                    None => {
                        self.shared.push(SharedGroup {
                            name: name.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        self.shared.len() - 1
                    }
                };
                &mut self.shared[index].members
            }
        }
    }

    fn insert(&mut self, share: Option<&str>, subscriber: Subscriber) -> bool {
        let list = self.list(share);
        let id = subscriber.session.id;
        match list.iter_mut().find(|s| s.session.id == id) {
            Some(existing) => {
                // [MQTT-3.8.4-3] a repeated subscription replaces the existing one.
                *existing = subscriber;
                true
            }
            None => {
                list.push(subscriber);
                false
            }
        }
    }

    fn remove(&mut self, share: Option<&str>, session_id: u64) -> bool {
        let list = self.list(share);
        let before = list.len();
        list.retain(|s| s.session.id != session_id);
        let removed = list.len() != before;
        self.shared.retain(|g| !g.members.is_empty());
        removed
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Subscriber>) {
        out.extend(self.subscribers.iter());
        for group in &self.shared {
            if let Some(chosen) = choose_shared_member(group) {
                out.push(chosen);
            }
        }
    }
}

/// Rotates over the group, preferring members whose client is online.
fn choose_shared_member(group: &SharedGroup) -> Option<&Subscriber> {
    let count = group.members.len();
    if count == 0 {
        return None;
    }
    let start = group.next.fetch_add(1, Ordering::Relaxed);
    (0..count)
        .map(|i| &group.members[(start + i) % count])
        .find(|s| s.session.outbox.online())
        .or_else(|| group.members.get(start % count))
}

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    single_level: Option<Box<Node>>,
    /// Subscribers of `{this level}/#`.
    multi_level: Slot,
    /// Subscribers whose filter ends exactly here.
    exact: Slot,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.single_level.is_none()
            && self.multi_level.is_empty()
            && self.exact.is_empty()
    }
}

#[derive(Default)]
pub struct Trie {
    root: Node,
    count: usize,
}

impl Trie {
    pub fn new() -> Trie {
        Trie::default()
    }

    /// Number of subscriptions held.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces a subscription; returns true if it replaced an existing one.
    pub fn insert(&mut self, filter: &str, share: Option<&str>, subscriber: Subscriber) -> bool {
        let slot = slot_for(&mut self.root, filter);
        let replaced = slot.insert(share, subscriber);
        if !replaced {
            self.count += 1;
        }
        replaced
    }

    /// Removes a session's subscription; returns true if it existed.
    pub fn remove(&mut self, filter: &str, share: Option<&str>, session_id: u64) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_from(&mut self.root, &levels, share, session_id);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Appends every subscription matching `topic` to `out` (one chosen member per shared
    /// group). Filters starting with a wildcard do not match `$` topics [MQTT-4.7.2-1].
    pub fn matches<'a>(&'a self, topic: &str, out: &mut Vec<&'a Subscriber>) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        collect_matches(&self.root, &levels, dollar, out);
    }
}

fn slot_for<'a>(root: &'a mut Node, filter: &str) -> &'a mut Slot {
    let mut node = root;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level == "#" {
            return &mut node.multi_level;
        }
        node = if level == "+" {
            node.single_level.get_or_insert_with(Box::default)
        } else {
            node.children.entry(level.into()).or_default()
        };
        if levels.peek().is_none() {
            return &mut node.exact;
        }
    }
    &mut node.exact
}

fn remove_from(node: &mut Node, levels: &[&str], share: Option<&str>, session_id: u64) -> bool {
    let Some((&level, rest)) = levels.split_first() else {
        return node.exact.remove(share, session_id);
    };
    if level == "#" {
        return node.multi_level.remove(share, session_id);
    }
    if level == "+" {
        let Some(child) = node.single_level.as_deref_mut() else {
            return false;
        };
        let removed = remove_from(child, rest, share, session_id);
        if child.is_empty() {
            node.single_level = None;
        }
        return removed;
    }
    let Some(child) = node.children.get_mut(level) else {
        return false;
    };
    let removed = remove_from(child, rest, share, session_id);
    if child.is_empty() {
        node.children.remove(level);
    }
    removed
}

fn collect_matches<'a>(
    node: &'a Node,
    levels: &[&str],
    skip_wildcards: bool,
    out: &mut Vec<&'a Subscriber>,
) {
    // '#' matches the parent level and everything below it [MQTT-4.7.1-2].
    if !skip_wildcards {
        node.multi_level.collect(out);
    }
    let Some((&level, rest)) = levels.split_first() else {
        node.exact.collect(out);
        return;
    };
    if let Some(child) = node.children.get(level) {
        collect_terminal_or_descend(child, rest, out);
    }
    if !skip_wildcards {
        if let Some(child) = node.single_level.as_deref() {
            collect_terminal_or_descend(child, rest, out);
        }
    }
}

fn collect_terminal_or_descend<'a>(child: &'a Node, rest: &[&str], out: &mut Vec<&'a Subscriber>) {
    if rest.is_empty() {
        child.exact.collect(out);
        // "a/#" also matches "a" [MQTT-4.7.1-2].
        child.multi_level.collect(out);
    } else {
        collect_matches(child, rest, false, out);
    }
}
