//! Cases of creating and listing chats: groups, direct chats, chat
//! lists and co-members.

use std::sync::Arc;

use super::*;

// --- chats -----------------------------------------------------------

/// `create_chat` of a group stores it as given, with founding
/// participants in order (watermarks and `visible_from_seq` 0,
/// `joined_at` its creation), `last_seq` 0 and `last_activity` its
/// creation; `get_chat` returns it, and `None` for an unknown id; two
/// groups may have the same members.
pub async fn create_group_chat(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let new = NewChat {
        id: ChatId::new(),
        kind: ChatKind::Group,
        name: Some("Team".to_owned()),
        description: Some("What we do".to_owned()),
        avatar_url: Some("https://example.invalid/team.png".to_owned()),
        encryption: Encryption::E2ee,
        participants: vec![
            (alice.clone(), Role::Admin),
            (bob.clone(), Role::Moderator),
            (carol.clone(), Role::Member),
        ],
        created_at: at(0),
    };
    let founder = |user_id: &UserId, role| Participant {
        user_id: user_id.clone(),
        role,
        joined_at: at(0),
        delivered_seq: 0,
        read_seq: 0,
        visible_from_seq: 0,
        silenced_until: None,
        settings: Default::default(),
    };
    let expected = Chat {
        id: new.id,
        kind: ChatKind::Group,
        name: new.name.clone(),
        description: new.description.clone(),
        avatar_url: new.avatar_url.clone(),
        encryption: Encryption::E2ee,
        last_seq: 0,
        last_activity: at(0),
        created_at: at(0),
        retention_secs: None,
        participants: vec![
            founder(&alice, Role::Admin),
            founder(&bob, Role::Moderator),
            founder(&carol, Role::Member),
        ],
    };

    let (chat, created) = ok(s.create_chat(new.clone()).await, "create_chat(group)");
    assert!(created, "create_chat of a new group must return true");
    assert_eq!(chat, expected, "create_chat must return the chat as stored");
    assert_eq!(
        ok(s.get_chat(new.id).await, "get_chat"),
        Some(expected),
        "get_chat must return the group with its participants in joining order"
    );
    assert_eq!(
        ok(s.get_chat(ChatId::new()).await, "get_chat(unknown)"),
        None,
        "get_chat of an unknown id must be None"
    );
    assert_eq!(
        ok(s.find_direct_chat(&alice, &bob).await, "find_direct_chat"),
        None,
        "a group is not the direct chat of two of its members"
    );

    let again = group(s, &[&alice, &bob, &carol], at(1)).await;
    assert_ne!(
        again.id, new.id,
        "two groups with the same members are two chats"
    );
    assert_eq!(
        list_chat_ids(s, &alice, all_chats()).await.len(),
        2,
        "both groups must be listed"
    );
}

/// A direct chat is unique per unordered pair: creating it again (in
/// either order, with another id) returns the stored chat and `false`
/// and stores nothing; `find_direct_chat` finds it in either order.
pub async fn create_direct_chat_is_unique_per_pair(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let first = new_direct(&alice, &bob, at(0));
    let (chat, created) = ok(s.create_chat(first.clone()).await, "create_chat(direct)");
    assert!(created, "the first direct chat of a pair must be created");
    assert_eq!(chat.id, first.id);
    assert_eq!(chat.kind, ChatKind::Direct);
    assert_eq!(chat.member_ids(), vec![alice.clone(), bob.clone()]);
    assert!(
        chat.participants
            .iter()
            .all(|p| p.role == Role::Member && p.visible_from_seq == 0),
        "direct chat participants are founding members: {chat:?}"
    );

    for (a, b) in [(&alice, &bob), (&bob, &alice)] {
        let second = new_direct(a, b, at(5));
        let (existing, created) = ok(
            s.create_chat(second.clone()).await,
            "create_chat(direct again)",
        );
        assert!(
            !created,
            "creating the direct chat of {a} and {b} again must return false"
        );
        assert_eq!(
            existing, chat,
            "creating it again must return the stored chat"
        );
        assert_eq!(
            ok(s.get_chat(second.id).await, "get_chat"),
            None,
            "creating an existing direct chat must not store the new id"
        );
    }
    for (a, b) in [(&alice, &bob), (&bob, &alice)] {
        assert_eq!(
            ok(s.find_direct_chat(a, b).await, "find_direct_chat"),
            Some(chat.clone()),
            "find_direct_chat({a}, {b}) must find the pair's chat in either order"
        );
    }
    assert_eq!(
        ok(s.find_direct_chat(&alice, &carol).await, "find_direct_chat"),
        None,
        "a pair without a direct chat has none"
    );
    let other = direct(s, &carol, &alice, at(6)).await;
    assert_ne!(other.id, chat.id, "another pair gets its own direct chat");
    assert_eq!(
        list_chat_ids(s, &alice, all_chats()).await.len(),
        2,
        "alice must be in exactly two direct chats"
    );
}

/// A direct chat with the same user twice is an error and stores nothing.
pub async fn direct_chat_with_same_user_twice_is_rejected(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let new = new_direct(&alice, &alice, at(0));
    let result = s.create_chat(new.clone()).await;
    assert!(
        result.is_err(),
        "a direct chat of a user with themselves must fail, got {result:?}"
    );
    assert_eq!(ok(s.get_chat(new.id).await, "get_chat"), None);
    assert_eq!(
        ok(s.find_direct_chat(&alice, &alice).await, "find_direct_chat"),
        None
    );
    assert!(list_chat_ids(s, &alice, all_chats()).await.is_empty());
}

/// `list_chats` lists only the user's chats, most recent `last_activity`
/// first, ties by id descending; a post moves its chat to the front.
pub async fn list_chats_orders_by_last_activity_then_id(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let with_carol = group(s, &[&alice, &carol], at(30)).await;
    let mut chats = vec![
        group(s, &[&alice, &bob], at(10)).await,
        group(s, &[&bob, &alice], at(20)).await,
        group(s, &[&alice], at(20)).await,
        direct(s, &alice, &bob, at(20)).await,
        with_carol.clone(),
    ];
    let others = group(s, &[&bob, &carol], at(40)).await;
    sort_chats(&mut chats);
    let listed = ok(s.list_chats(&alice, all_chats()).await, "list_chats");
    assert_eq!(
        listed, chats,
        "list_chats must return the user's chats by last_activity then id, descending"
    );
    assert_eq!(
        list_chat_ids(s, &carol, all_chats()).await,
        vec![others.id, with_carol.id],
        "list_chats must list only the chats the user takes part in"
    );
    assert!(
        list_chat_ids(s, &user("dave"), all_chats())
            .await
            .is_empty(),
        "a user without chats has none"
    );

    // The oldest chat gets a message: it becomes the most recent.
    let oldest = chats[chats.len() - 1].id;
    post(s, text(oldest, &alice, "c-1", "hi", at(50))).await;
    let listed = ok(s.list_chats(&alice, all_chats()).await, "list_chats");
    assert_eq!(
        listed[0].id, oldest,
        "a post must move its chat to the front"
    );
    assert_eq!(listed[0].last_activity, at(50));
    assert_eq!(listed[0].last_seq, 1);
    assert_eq!(listed.len(), chats.len());
}

/// `list_chats` pages: `limit` caps a page, and `after` continues
/// strictly after a `(last_activity, id)`, also inside ties.
pub async fn list_chats_pages_with_after_and_limit(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let mut chats = Vec::new();
    for secs in [1, 2, 2, 2, 3, 4, 4] {
        chats.push(group(s, &[&alice, &bob], at(secs)).await);
    }
    sort_chats(&mut chats);
    let expected: Vec<ChatId> = chats.iter().map(|c| c.id).collect();
    assert_eq!(list_chat_ids(s, &alice, all_chats()).await, expected);

    let first = list_chat_ids(
        s,
        &alice,
        ChatListQuery {
            after: None,
            limit: 3,
        },
    )
    .await;
    assert_eq!(first, expected[..3], "limit must cap the page");

    let mut paged = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = ok(
            s.list_chats(&alice, ChatListQuery { after, limit: 3 })
                .await,
            "list_chats page",
        );
        assert!(page.len() <= 3, "a page must hold at most limit chats");
        let Some(last) = page.last() else { break };
        after = Some((last.last_activity, last.id));
        paged.extend(page.iter().map(|c| c.id));
        pages += 1;
        assert!(pages <= expected.len(), "paging with after must end");
    }
    assert_eq!(
        paged, expected,
        "paging with after must visit every chat once, in order"
    );
    assert_eq!(pages, 3, "7 chats in pages of 3 are 3 pages");

    // Continue from inside a tie: chats[2] is one of three at(2).
    let tie = &chats[3];
    assert_eq!(tie.last_activity, at(2));
    assert_eq!(
        list_chat_ids(
            s,
            &alice,
            ChatListQuery {
                after: Some((tie.last_activity, tie.id)),
                limit: 100
            }
        )
        .await,
        expected[4..],
        "after must be exclusive and ordered by (last_activity, id)"
    );
    assert!(
        list_chat_ids(
            s,
            &alice,
            ChatListQuery {
                after: None,
                limit: 0
            }
        )
        .await
        .is_empty(),
        "limit 0 returns nothing"
    );
}

/// `co_members` lists everyone sharing a chat with the user, each once,
/// never the user; a removed participant no longer counts.
pub async fn co_members_are_distinct_and_exclude_self(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol, dave, eve, frank] =
        ["alice", "bob", "carol", "dave", "eve", "frank"].map(user);
    group(s, &[&alice, &bob, &carol], at(0)).await;
    direct(s, &alice, &bob, at(1)).await;
    let g2 = group(s, &[&dave, &alice], at(2)).await;
    direct(s, &eve, &frank, at(3)).await;

    let mut members = ok(s.co_members(&alice).await, "co_members");
    members.sort();
    assert_eq!(
        members,
        vec![bob.clone(), carol.clone(), dave.clone()],
        "co_members must list every co-member once and not the user"
    );
    assert_eq!(ok(s.co_members(&eve).await, "co_members"), vec![frank]);
    assert!(
        ok(s.co_members(&user("zed")).await, "co_members").is_empty(),
        "a user without chats has no co-members"
    );

    membership(
        apply_one(s, remove(g2.id, &dave, &dave, at(4))).await,
        "dave leaves",
    );
    let mut members = ok(s.co_members(&alice).await, "co_members");
    members.sort();
    assert_eq!(
        members,
        vec![bob, carol],
        "a user who left no longer shares the chat"
    );
    assert!(ok(s.co_members(&dave).await, "co_members").is_empty());
}
