//! Topic names and topic filters (MQTT 3.1.1 §4.7, MQTT 5.0 §4.7 and §4.8.2).

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic must be at least one character long [MQTT-4.7.3-1]")]
    Empty,
    #[error("topic names must not contain wildcards [MQTT-3.3.2-2]")]
    WildcardInName,
    #[error("'#' must be the last level and stand alone [MQTT-4.7.1-2]")]
    MultiLevelMisplaced,
    #[error("'+' must occupy a whole level [MQTT-4.7.1-3]")]
    SingleLevelMisplaced,
    #[error("topic contains U+0000 [MQTT-4.7.3-2]")]
    NullCharacter,
    #[error("shared subscription is malformed [MQTT-4.8.2-1]")]
    SharedMalformed,
}

/// Checks a PUBLISH topic name: non-empty, no `+` or `#`, no NUL.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    for b in topic.bytes() {
        match b {
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            0 => return Err(TopicError::NullCharacter),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a SUBSCRIBE / UNSUBSCRIBE filter, including the `$share/{name}/{filter}` form.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let inner = match parse_shared(filter) {
        Some(Ok((_, inner))) => inner,
        Some(Err(e)) => return Err(e),
        None => filter,
    };
    validate_plain_filter(inner)
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('\0') {
            return Err(TopicError::NullCharacter);
        }
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MultiLevelMisplaced);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::SingleLevelMisplaced);
        }
    }
    Ok(())
}

/// Splits `$share/{share_name}/{filter}`. Returns `None` when the filter is not shared, and
/// an error when it starts with `$share/` but breaks [MQTT-4.8.2-1] / [MQTT-4.8.2-2]: the
/// share name must be non-empty without `+`, `#` or `/`, and a filter must follow.
pub fn parse_shared(filter: &str) -> Option<Result<(&str, &str), TopicError>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((name, inner)) = rest.split_once('/') else {
        return Some(Err(TopicError::SharedMalformed));
    };
    if name.is_empty() || name.contains(['+', '#']) || inner.is_empty() {
        return Some(Err(TopicError::SharedMalformed));
    }
    Some(Ok((name, inner)))
}

/// Whether `filter` (a validated, non-shared filter) matches the topic name `topic`.
/// Topics starting with `$` are not matched by filters starting with a wildcard
/// [MQTT-4.7.2-1].
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        match filter_level {
            // '#' also matches the parent level itself [MQTT-4.7.1-2].
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => match topic_levels.next() {
                Some(level) if level == literal => {}
                _ => return false,
            },
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_wildcards_and_empty() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert!(validate_topic_name("a//b").is_ok());
        assert!(validate_topic_name("/").is_ok());
    }

    #[test]
    fn filters_follow_wildcard_placement_rules() {
        for ok in [
            "#",
            "+",
            "a/#",
            "+/+",
            "/+",
            "a/+/b",
            "$SYS/#",
            "$share/g/a/#",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a#",
            "a/#/b",
            "a+",
            "+a/b",
            "$share/g",
            "$share//a",
            "$share/g+/a",
        ] {
            assert!(validate_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_follows_section_4_7() {
        assert!(filter_matches("sport/tennis/#", "sport/tennis"));
        assert!(filter_matches(
            "sport/tennis/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(!filter_matches("#", "$SYS/uptime"));
        assert!(!filter_matches("+/uptime", "$SYS/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/uptime"));
        assert!(filter_matches("héllo/+", "héllo/wörld"));
    }
}
