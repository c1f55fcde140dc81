//! MQTT topic filters (`+` one level, `#` the rest), written out here so the bridge does not
//! depend on the broker's router for a few lines of matching.

/// Why a topic filter is not valid MQTT.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter must not be empty".into());
    }
    if filter.len() > 65535 {
        return Err("a topic filter must be at most 65535 bytes".into());
    }
    if filter.contains('\0') {
        return Err(format!("topic filter {filter:?} contains a NUL character"));
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        let is_last = index + 1 == levels.len();
        if level.contains('#') && (*level != "#" || !is_last) {
            return Err(format!(
                "topic filter {filter:?}: '#' must be the whole last level"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "topic filter {filter:?}: '+' must be a whole level"
            ));
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter` with MQTT semantics. `#` also matches the parent level
/// (`a/#` matches `a`), and topics starting with `$` are not matched by a filter that starts
/// with a wildcard (MQTT 3.1.1 §4.7.2). An invalid filter matches nothing useful; callers
/// validate filters when the configuration is loaded.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_single_level_wildcards() {
        assert!(matches("a/b/c", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+/c", "a/x/c"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("+/+", "/x"));
        assert!(matches("+", "a"));
        assert!(!matches("+", "a/b"));
    }

    #[test]
    fn multi_level_wildcard_includes_the_parent() {
        assert!(matches("#", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/#", "b/a"));
        assert!(matches("groups/+/#", "groups/7"));
        assert!(matches("groups/+/#", "groups/7/messages"));
        assert!(!matches("groups/+/#", "groups"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/+/uptime", "$SYS/broker/uptime"));
        assert!(matches("a/#", "a/$b"));
    }

    #[test]
    fn validation() {
        for good in ["a", "#", "+", "a/#", "a/+/b", "+/+", "/", "$SYS/#", "a//b"] {
            assert!(validate_filter(good).is_ok(), "{good} should be valid");
        }
        for bad in ["", "a#", "a/#/b", "a/b#", "a+", "a/+b/c", "#/a", "a\0b"] {
            assert!(validate_filter(bad).is_err(), "{bad:?} should be invalid");
        }
        assert!(validate_filter(&"a".repeat(65536)).is_err());
    }
}
