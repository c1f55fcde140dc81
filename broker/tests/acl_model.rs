//! The group ACL decision against a naive reference written straight from the SPEC §4
//! table (not from the implementation): random groups, members, rules, identities,
//! actions, message types and times.

use proptest::prelude::*;
use rookery::groups::acl::{decide, Allow, Who};
use rookery::groups::model::{Action, Group, Member, MemberPermissions};

/// SPEC §4, cell by cell. `flags` is the rule that applies (type rule or default).
fn reference(
    who: Option<&str>,
    group: &Group,
    action: Action,
    message_type: u32,
    now: u64,
) -> Option<bool /* round robin */> {
    // "An inactive, not-yet-started or expired group denies every action."
    if !group.active || now < group.start || now >= group.expires_at {
        return None;
    }
    let flags = match group.type_flags.get(&message_type) {
        Some(f) => *f,
        None => group.flags,
    };
    let member = who.and_then(|a| group.members.get(a));
    let own_permission = |m: &Member| {
        let p = match m.type_permissions.get(&message_type) {
            Some(p) => p,
            None => &m.permissions,
        };
        match action {
            Action::Send => p.send,
            Action::Recv => p.recv,
            Action::Pub => p.publish,
            Action::Sub => p.sub,
            Action::List => p.list,
        }
    };
    let (selected_bit, anyone_bit) = match action {
        Action::Send => (0x1, 0x2),
        Action::Recv => (0x10, 0x20),
        Action::Pub => (0x100, 0x200),
        Action::Sub => (0x1000, 0x2000),
        Action::List => (0x10000, 0x20000),
    };
    let value = if flags & anyone_bit != 0 {
        2
    } else if flags & selected_bit != 0 {
        1
    } else {
        0
    };
    match (action, value) {
        // 0: members.
        (_, 0) => member.map(|_| false),
        // 1: selected members.
        (_, 1) => member.filter(|m| own_permission(m)).map(|_| false),
        // recv 2: round-robin among members; 0x10|0x20: among the selected receivers.
        (Action::Recv, _) => {
            let among_selected = flags & 0x10 != 0;
            member
                .filter(|m| !among_selected || own_permission(m))
                .map(|_| true)
        }
        // 2: anyone, members or not, anonymous included.
        _ => Some(false),
    }
}

const ADDRESSES: [&str; 4] = ["a", "b", "c", "d"];

fn member_permissions() -> impl Strategy<Value = MemberPermissions> {
    any::<[bool; 5]>().prop_map(|p| MemberPermissions {
        send: p[0],
        recv: p[1],
        publish: p[2],
        sub: p[3],
        list: p[4],
    })
}

fn flags() -> impl Strategy<Value = u32> {
    // Any combination of the permission bits (both bits of an action included).
    prop::collection::vec(
        prop::sample::select(vec![
            0x1, 0x2, 0x10, 0x20, 0x100, 0x200, 0x1000, 0x2000, 0x10000, 0x20000, 0x40, 0x80,
        ]),
        0..8,
    )
    .prop_map(|bits| bits.into_iter().fold(0, |f, b| f | b))
}

prop_compose! {
    fn member()(permissions in member_permissions(),
                typed in prop::collection::btree_map(0u32..3, member_permissions(), 0..2)) -> Member {
        let mut m = Member::new(0);
        m.permissions = permissions;
        m.type_permissions = typed;
        m
    }
}

prop_compose! {
    fn group()(flags in flags(),
               typed in prop::collection::btree_map(0u32..3, flags(), 0..3),
               members in prop::collection::btree_map(prop::sample::select(ADDRESSES.to_vec()), member(), 0..4),
               active in prop::bool::weighted(0.85),
               start in 0u64..20, duration in 0u64..40) -> Group {
        let mut g = Group::new(1, "g".into(), start);
        g.flags = flags;
        g.type_flags = typed;
        g.members = members.into_iter().map(|(a, m)| (a.to_string(), m)).collect();
        g.active = active;
        g.duration = duration;
        g.expires_at = start + duration;
        g
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]
    #[test]
    fn decide_matches_the_spec_table(
        group in group(),
        who in prop::option::of(prop::sample::select(vec!["a", "b", "c", "d", "e"])),
        action in prop::sample::select(Action::ALL.to_vec()),
        message_type in 0u32..4,
        now in 0u64..70,
    ) {
        let identity = who.map_or(Who::Anonymous, Who::User);
        let got = decide(identity, &group, action, message_type, now);
        let expected = reference(who, &group, action, message_type, now);
        let got_simple = got.ok().map(|allow| allow == Allow::RoundRobin);
        prop_assert_eq!(got_simple, expected, "{:?} {:?} type {} at {} in {:?}", who, action, message_type, now, group);
    }
}
