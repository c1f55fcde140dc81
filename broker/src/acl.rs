//! Access control for ordinary topics: Mosquitto's `acl_file` syntax and semantics.
//!
//! ```text
//! # topic lines before any `user` line apply to anonymous clients
//! topic read $SYS/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! # pattern lines apply to every client; %u is the username, %c the client id
//! pattern write devices/%c/state
//! ```
//!
//! With an ACL file, access is denied unless a line grants it, and a matching `deny` line
//! wins over any grant. Without one, ordinary topics are open. The check is pure: no I/O.

use crate::codec::topic::filter_matches;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    topic: String,
}

#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: std::collections::HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// The identity an ACL decision is about.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("cannot read ACL file: {0}")]
    Read(#[from] std::io::Error),
    #[error("ACL file line {line}: {message}")]
    Syntax { line: usize, message: String },
}

impl Acl {
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        Acl::parse(&std::fs::read_to_string(path)?)
    }

    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut current_user: Option<String> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |message: &str| AclError::Syntax {
                line: index + 1,
                message: message.to_string(),
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(syntax("`user` needs a username"));
                    }
                    current_user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest)
                        .ok_or_else(|| syntax("expected [read|write|readwrite|deny] TOPIC"))?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(user) = &current_user {
                        acl.users.entry(user.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => return Err(syntax(&format!("unknown keyword `{other}`"))),
            }
        }
        Ok(acl)
    }

    fn rules<'a>(
        &'a self,
        who: Identity<'_>,
    ) -> impl Iterator<Item = (Grant, std::borrow::Cow<'a, str>)> {
        let own: &[Rule] = match who.username {
            None => &self.anonymous,
            Some(name) => self.users.get(name).map(Vec::as_slice).unwrap_or(&[]),
        };
        let username = who.username.unwrap_or("").to_string();
        let client_id = who.client_id.to_string();
        own.iter()
            .map(|r| (r.grant, std::borrow::Cow::Borrowed(r.topic.as_str())))
            .chain(self.patterns.iter().map(move |r| {
                let topic = r.topic.replace("%u", &username).replace("%c", &client_id);
                (r.grant, std::borrow::Cow::Owned(topic))
            }))
    }

    /// May `who` publish to (Write) or receive from (Read) the topic name `topic`?
    pub fn check_topic(&self, who: Identity<'_>, topic: &str, access: Access) -> bool {
        let mut allowed = false;
        for (grant, pattern) in self.rules(who) {
            if !filter_matches(&pattern, topic) {
                continue;
            }
            if grant == Grant::Deny {
                return false;
            }
            allowed |= grant.allows(access);
        }
        allowed
    }

    /// May `who` subscribe to `filter`? The filter must lie within a granted pattern
    /// (wildcards only where the pattern has them) and inside no denied pattern.
    pub fn check_subscribe(&self, who: Identity<'_>, filter: &str) -> bool {
        let mut allowed = false;
        for (grant, pattern) in self.rules(who) {
            if grant == Grant::Deny {
                // A filter entirely inside a denied pattern is refused; a wider filter is
                // accepted, and the denied topics are filtered out at delivery.
                if filter_within(&pattern, filter) {
                    return false;
                }
                continue;
            }
            allowed |= grant.allows(Access::Read) && filter_within(&pattern, filter);
        }
        allowed
    }
}

fn parse_rule(rest: &str) -> Option<Rule> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (grant, topic) = match first {
        "read" => (Grant::Read, tail.trim()),
        "write" => (Grant::Write, tail.trim()),
        "readwrite" => (Grant::ReadWrite, tail.trim()),
        "deny" => (Grant::Deny, tail.trim()),
        // Mosquitto: with no access keyword the access is readwrite.
        _ => (Grant::ReadWrite, rest),
    };
    (!topic.is_empty()).then(|| Rule {
        grant,
        topic: topic.to_string(),
    })
}

/// Whether every topic `filter` can match is also matched by `pattern` (Mosquitto's
/// `mosquitto_sub_matches_acl`).
fn filter_within(pattern: &str, filter: &str) -> bool {
    let mut pattern_levels = pattern.split('/');
    let mut filter_levels = filter.split('/');
    loop {
        match (pattern_levels.next(), filter_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(f)) if f != "#" => {}
            (Some(p), Some(f)) if p == f && f != "+" && f != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "topic readwrite #\ntopic deny test/nosubscribe\nuser alice\ntopic read sensors/+\ntopic write alice/#\npattern readwrite clients/%c/#\n";

    fn anon() -> Identity<'static> {
        Identity {
            username: None,
            client_id: "c1",
        }
    }

    fn alice() -> Identity<'static> {
        Identity {
            username: Some("alice"),
            client_id: "phone",
        }
    }

    #[test]
    fn deny_beats_grant_for_the_denied_topic_only() {
        let acl = Acl::parse(FILE).unwrap();
        assert!(acl.check_subscribe(anon(), "#"));
        assert!(acl.check_subscribe(anon(), "TopicA/+"));
        assert!(!acl.check_subscribe(anon(), "test/nosubscribe"));
        assert!(!acl.check_topic(anon(), "test/nosubscribe", Access::Read));
        assert!(acl.check_topic(anon(), "TopicA", Access::Write));
    }

    #[test]
    fn user_rules_and_patterns() {
        let acl = Acl::parse(FILE).unwrap();
        assert!(acl.check_subscribe(alice(), "sensors/+"));
        assert!(acl.check_subscribe(alice(), "sensors/t1"));
        assert!(!acl.check_subscribe(alice(), "sensors/#"));
        assert!(!acl.check_topic(alice(), "sensors/t1", Access::Write));
        assert!(acl.check_topic(alice(), "alice/x", Access::Write));
        assert!(!acl.check_topic(alice(), "alice/x", Access::Read));
        assert!(acl.check_topic(alice(), "clients/phone/a", Access::Read));
        assert!(!acl.check_topic(alice(), "clients/other/a", Access::Read));
        // Anonymous rules do not apply to users.
        assert!(!acl.check_topic(alice(), "TopicA", Access::Write));
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let error = Acl::parse("topic readwrite a\nbogus x\n").unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
    }
}
