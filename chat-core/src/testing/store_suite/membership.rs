//! Cases of membership changes: adding and removing participants,
//! roles, and group patches.

use std::sync::Arc;

use super::*;

// --- membership ----------------------------------------------------------

/// Adding a participant stores a system message (`ParticipantAdded`,
/// sent by `by`) with the next seq, and sets the newcomer's watermarks
/// and `visible_from_seq` to that seq.
pub async fn add_participant_records_system_message(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    post(s, text(chat.id, &alice, "c-1", "before", at(1))).await;
    post(s, text(chat.id, &bob, "b-1", "before", at(2))).await;

    let change = add(chat.id, &carol, Role::Moderator, &alice, at(3));
    let (after, message) = membership(apply_one(s, change.clone()).await, "adding carol");
    let message = some(
        message,
        "adding a participant must return its system message",
    );
    assert_eq!(
        message,
        Message {
            mls: None,
            id: message.id,
            chat_id: chat.id,
            seq: 3,
            updated_seq: 3,
            sender_id: alice.clone(),
            kind: MessageType::System,
            content: None,
            media: None,
            reply_to: None,
            client_msg_id: None,
            created_at: at(3),
            edited_at: None,
            deleted: false,
            reactions: Reactions::new(),
            system: change.system_event(),
            unreadable: None,
            checkin: None,
            resource: None,
        },
        "the system message must record ParticipantAdded with the next seq"
    );
    assert_eq!(
        message.system,
        Some(SystemEvent::ParticipantAdded {
            user_id: carol.clone(),
            role: Role::Moderator
        })
    );
    assert_eq!(
        participant(&after, &carol),
        &Participant {
            user_id: carol.clone(),
            role: Role::Moderator,
            joined_at: at(3),
            delivered_seq: 3,
            read_seq: 3,
            visible_from_seq: 3,
            silenced_until: None,
            settings: Default::default(),
        },
        "a newcomer's watermarks and visible_from_seq are the system message's seq"
    );
    assert_eq!(
        after.member_ids(),
        vec![alice.clone(), bob.clone(), carol.clone()],
        "participants stay in joining order"
    );
    assert_eq!((after.last_seq, after.last_activity), (3, at(3)));
    assert_eq!(
        get_chat(s, chat.id).await,
        after,
        "get_chat must show the newcomer"
    );
    assert_eq!(get_message(s, message.id).await, message);
    assert_eq!(history_seqs(s, chat.id, all_history()).await, vec![3, 2, 1]);
    assert_eq!(
        list_chat_ids(s, &carol, all_chats()).await,
        vec![chat.id],
        "a newcomer's chats include the chat"
    );
    // Watermarks never move below where they started.
    let (d, r, dm, rm) = marked(apply_one(s, mark(chat.id, &carol, 1, 1)).await, "mark");
    assert_eq!((d, r, dm, rm), (3, 3, false, false));
}

/// Adding someone already in the chat is a `Conflict` and takes no seq.
pub async fn add_participant_twice_conflicts(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    conflict(
        apply_one(s, add(chat.id, &bob, Role::Member, &alice, at(1))).await,
        "adding a founding member again",
    );
    membership(
        apply_one(s, add(chat.id, &carol, Role::Member, &alice, at(2))).await,
        "adding carol",
    );
    conflict(
        apply_one(s, add(chat.id, &carol, Role::Admin, &bob, at(3))).await,
        "adding carol again",
    );
    let c = get_chat(s, chat.id).await;
    assert_eq!(
        (c.last_seq, c.last_activity),
        (1, at(2)),
        "refused adds take no seq"
    );
    assert_eq!(c.participants.len(), 3);
    assert_eq!(participant(&c, &carol).role, Role::Member);
}

/// Adding to a chat that has `max_participants` already is a
/// `Conflict`.
pub async fn add_participant_respects_capacity(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol, dave, eve] = ["alice", "bob", "carol", "dave", "eve"].map(user);
    let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
    conflict(
        apply_one(s, add_max(chat.id, &dave, Role::Member, &alice, 3, at(1))).await,
        "adding a 4th participant with max_participants 3",
    );
    assert_eq!(last_seq(s, chat.id).await, 0);
    let (after, _) = membership(
        apply_one(s, add_max(chat.id, &dave, Role::Member, &alice, 4, at(2))).await,
        "adding a 4th participant with max_participants 4",
    );
    assert_eq!(after.participants.len(), 4);
    conflict(
        apply_one(s, add_max(chat.id, &eve, Role::Member, &alice, 4, at(3))).await,
        "adding a 5th participant with max_participants 4",
    );
    let c = get_chat(s, chat.id).await;
    assert_eq!((c.last_seq, c.participants.len()), (1, 4));
}

/// Removing a participant stores a `ParticipantRemoved` system message
/// sent by `by` and drops them from the chat; removing someone not in
/// the chat is `NotFound`.
pub async fn remove_participant_records_system_message(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
    post(s, text(chat.id, &bob, "b-1", "hi", at(1))).await;
    let change = remove(chat.id, &bob, &alice, at(2));
    let (after, message) = membership(apply_one(s, change.clone()).await, "removing bob");
    let message = some(
        message,
        "removing a participant must return its system message",
    );
    assert_eq!(
        (
            message.seq,
            message.updated_seq,
            &message.sender_id,
            message.kind,
            message.created_at,
            &message.system
        ),
        (
            2,
            2,
            &alice,
            MessageType::System,
            at(2),
            &change.system_event()
        ),
        "the system message must record ParticipantRemoved by the remover"
    );
    assert_eq!(
        after.member_ids(),
        vec![alice.clone(), carol.clone()],
        "the others stay in joining order"
    );
    assert_eq!((after.last_seq, after.last_activity), (2, at(2)));
    assert_eq!(get_chat(s, chat.id).await, after);
    assert!(
        list_chat_ids(s, &bob, all_chats()).await.is_empty(),
        "a removed participant no longer lists the chat"
    );

    not_found(
        apply_one(s, remove(chat.id, &bob, &alice, at(3))).await,
        "removing someone who already left",
    );
    not_found(
        apply_one(s, remove(chat.id, &user("zed"), &alice, at(3))).await,
        "removing someone who never was in",
    );
    assert_eq!(last_seq(s, chat.id).await, 2);

    let (after, message) = membership(
        apply_one(s, remove(chat.id, &carol, &carol, at(4))).await,
        "carol leaves",
    );
    assert_eq!(some(message, "system message").sender_id, carol);
    assert_eq!(after.member_ids(), vec![alice]);
}

/// A role change stores a `RoleChanged` system message; setting the
/// role someone has changes nothing (`message: None`, no seq); a
/// non-participant is `NotFound`.
pub async fn set_role_records_system_message(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let change = set_role(chat.id, &bob, Role::Moderator, &alice, at(1));
    let (after, message) = membership(apply_one(s, change.clone()).await, "promoting bob");
    let message = some(message, "a role change must return its system message");
    assert_eq!(
        (
            message.seq,
            &message.sender_id,
            message.kind,
            &message.system
        ),
        (1, &alice, MessageType::System, &change.system_event()),
        "the system message must record RoleChanged"
    );
    assert_eq!(participant(&after, &bob).role, Role::Moderator);
    assert_eq!(after.member_ids(), vec![alice.clone(), bob.clone()]);
    assert_eq!(get_chat(s, chat.id).await, after);

    let (same, message) = membership(
        apply_one(s, set_role(chat.id, &bob, Role::Moderator, &alice, at(2))).await,
        "setting the same role",
    );
    assert_eq!(
        message, None,
        "setting the role someone has must return no message"
    );
    assert_eq!(
        same, after,
        "setting the role someone has must change nothing"
    );
    let c = get_chat(s, chat.id).await;
    assert_eq!((c.last_seq, c.last_activity), (1, at(1)), "and take no seq");

    not_found(
        apply_one(
            s,
            set_role(chat.id, &user("zed"), Role::Admin, &alice, at(3)),
        )
        .await,
        "setting the role of a non-participant",
    );
    assert_eq!(last_seq(s, chat.id).await, 1);
}

/// A group update changes the fields that are `Some` (`Some("")` clears
/// a field to `None`), leaves the others, and stores a `GroupUpdated`
/// system message.
pub async fn update_group_patches_fields(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let new = NewChat {
        name: Some("Team".to_owned()),
        description: Some("About".to_owned()),
        avatar_url: Some("https://example.invalid/a.png".to_owned()),
        ..new_group(&[&alice], at(0))
    };
    let (chat, _) = ok(s.create_chat(new).await, "create_chat");
    let patches = [
        (
            GroupPatch {
                name: Some("Renamed".to_owned()),
                ..GroupPatch::default()
            },
            (
                Some("Renamed"),
                Some("About"),
                Some("https://example.invalid/a.png"),
            ),
        ),
        (
            GroupPatch {
                description: Some(String::new()),
                avatar_url: Some("https://example.invalid/b.png".to_owned()),
                ..GroupPatch::default()
            },
            (Some("Renamed"), None, Some("https://example.invalid/b.png")),
        ),
        (
            GroupPatch {
                name: Some(String::new()),
                description: Some("Back".to_owned()),
                avatar_url: Some(String::new()),
            },
            (None, Some("Back"), None),
        ),
    ];
    for ((patch, (name, description, avatar)), seq) in patches.into_iter().zip(1_u64..) {
        let secs = i64::try_from(seq).unwrap_or_default();
        let change = Change::UpdateGroup {
            chat_id: chat.id,
            patch: patch.clone(),
            by: alice.clone(),
            at: at(secs),
        };
        let what = format!("applying {patch:?}");
        let (after, message) = membership(apply_one(s, change.clone()).await, &what);
        assert_eq!(
            (
                after.name.as_deref(),
                after.description.as_deref(),
                after.avatar_url.as_deref()
            ),
            (name, description, avatar),
            "{what}: None leaves a field, Some(\"\") clears it"
        );
        let message = some(message, "a group update must return its system message");
        assert_eq!(
            (
                message.seq,
                &message.sender_id,
                message.kind,
                &message.system
            ),
            (seq, &alice, MessageType::System, &change.system_event()),
            "{what}: the system message must record GroupUpdated"
        );
        assert_eq!((after.last_seq, after.last_activity), (seq, at(secs)));
        assert_eq!(get_chat(s, chat.id).await, after);
    }
}
