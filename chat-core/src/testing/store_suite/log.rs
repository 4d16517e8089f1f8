//! Cases of the message log: posting, edits, deletions, reactions,
//! batches, and the reads of history and changes.

use std::sync::Arc;

use super::*;

// --- posting ---------------------------------------------------------

/// Posts take seq 1, 2, 3... per chat (`updated_seq == seq`), store every
/// field as given, and set the chat's `last_seq` and `last_activity`.
pub async fn post_assigns_gap_free_seqs(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let other = group(s, &[&alice, &bob], at(0)).await;
    for i in 1..=5_u64 {
        let sender = if i % 2 == 0 { &bob } else { &alice };
        let secs = i64::try_from(i).unwrap_or_default();
        let new = text(
            chat.id,
            sender,
            &format!("c-{i}"),
            &format!("hello {i}"),
            at(secs),
        );
        let message = post(s, new.clone()).await;
        assert_eq!(message.seq, i, "the {i}th post must get seq {i}");
        assert_eq!(
            message,
            stored(&new, i),
            "the stored message must be the posted one with seq == updated_seq"
        );
        assert_eq!(get_message(s, new.id).await, message);
        let c = get_chat(s, chat.id).await;
        assert_eq!(c.last_seq, i, "last_seq must be the latest post's seq");
        assert_eq!(
            c.last_activity,
            at(secs),
            "last_activity must be the post's time"
        );
    }
    let first = post(s, text(other.id, &alice, "o-1", "elsewhere", at(9))).await;
    assert_eq!(first.seq, 1, "each chat has its own counter");
    assert_eq!(last_seq(s, chat.id).await, 5);
    assert_eq!(
        history_seqs(s, chat.id, all_history()).await,
        vec![5, 4, 3, 2, 1]
    );
}

/// Media references (all fields) and system events round-trip through a
/// post; a message without content keeps `None`.
pub async fn post_round_trips_media_and_system(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let image_id = MediaId::new();
    let image = NewMessage {
        kind: MessageType::Image,
        content: Some("caption".to_owned()),
        media: Some(MediaRef {
            id: image_id,
            mime: "image/png".to_owned(),
            size: 48_213,
            url: format!("/api/v1/chat/media/{image_id}"),
            thumbnail_url: Some(format!("/api/v1/chat/media/{image_id}?thumbnail=true")),
            duration_ms: None,
            width: Some(1_280),
            height: Some(960),
            name: None,
        }),
        ..text(chat.id, &alice, "img-1", "", at(1))
    };
    let voice_id = MediaId::new();
    let voice = NewMessage {
        kind: MessageType::Voice,
        content: None,
        media: Some(MediaRef {
            id: voice_id,
            mime: "audio/ogg".to_owned(),
            size: 7_001,
            url: format!("/api/v1/chat/media/{voice_id}"),
            thumbnail_url: None,
            duration_ms: Some(3_500),
            width: None,
            height: None,
            name: None,
        }),
        ..text(chat.id, &bob, "voice-1", "", at(2))
    };
    let file_id = MediaId::new();
    let file = NewMessage {
        kind: MessageType::File,
        content: None,
        media: Some(MediaRef {
            id: file_id,
            mime: "application/pdf".to_owned(),
            size: 90_210,
            url: format!("/api/v1/chat/media/{file_id}"),
            thumbnail_url: None,
            duration_ms: None,
            width: None,
            height: None,
            name: Some("Quarterly report (final).pdf".to_owned()),
        }),
        ..text(chat.id, &alice, "file-1", "", at(3))
    };
    let events = [
        SystemEvent::GroupUpdated {
            name: Some("New name".to_owned()),
            description: None,
            avatar_url: Some("https://example.invalid/x.png".to_owned()),
        },
        SystemEvent::ParticipantAdded {
            user_id: user("carol"),
            role: Role::Moderator,
        },
        SystemEvent::ParticipantRemoved {
            user_id: user("carol"),
        },
        SystemEvent::RoleChanged {
            user_id: bob.clone(),
            role: Role::Admin,
        },
    ];
    let mut news = vec![image, voice, file];
    news.extend(
        events
            .into_iter()
            .zip(4..)
            .map(|(e, secs)| system(chat.id, &alice, e, at(secs))),
    );
    for (new, seq) in news.into_iter().zip(1..) {
        let message = post(s, new.clone()).await;
        assert_eq!(
            message,
            stored(&new, seq),
            "a post must store kind, content, media and system as given"
        );
        assert_eq!(
            get_message(s, new.id).await,
            message,
            "get_message must return media and system fields as posted"
        );
    }
}

/// Posting an existing `(sender, client_msg_id)` again returns the stored
/// message with `duplicate: true`, stores nothing and takes no seq, also
/// inside one batch.
pub async fn post_is_idempotent_per_sender_and_client_id(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let first = post(s, text(chat.id, &alice, "c-1", "first", at(1))).await;

    let retry = text(chat.id, &alice, "c-1", "retried body", at(2));
    let (message, duplicate) = posted(
        apply_one(s, Change::Post(retry.clone())).await,
        "posting a retry",
    );
    assert!(duplicate, "a retry must be reported as duplicate: true");
    assert_eq!(
        message, first,
        "a retry must return the stored message unchanged"
    );
    let c = get_chat(s, chat.id).await;
    assert_eq!(c.last_seq, 1, "a retry must not take a seq");
    assert_eq!(
        c.last_activity,
        at(1),
        "a retry must not move last_activity"
    );
    assert_eq!(
        ok(s.get_message(retry.id).await, "get_message"),
        None,
        "a retry must not store its own id"
    );
    assert_eq!(
        ok(
            s.find_by_client_id(&alice, "c-1").await,
            "find_by_client_id"
        ),
        Some(first.clone())
    );

    let next = post(s, text(chat.id, &alice, "c-2", "second", at(3))).await;
    assert_eq!(next.seq, 2, "the post after a retry must get the next seq");

    // A post and its retry in one batch.
    let new = text(chat.id, &bob, "b-1", "batched", at(4));
    let again = NewMessage {
        id: MessageId::new(),
        ..new.clone()
    };
    let results = s
        .apply(vec![Change::Post(new.clone()), Change::Post(again)])
        .await;
    assert_eq!(results.len(), 2);
    let mut results = results.into_iter().map(|r| r.map(|c| c.applied));
    let (a, dup_a) = posted(some(results.next(), "result 0"), "batched post");
    let (b, dup_b) = posted(some(results.next(), "result 1"), "batched retry");
    assert!(
        !dup_a && dup_b,
        "in a batch, the second post of a pair is the duplicate"
    );
    assert_eq!(a, stored(&new, 3));
    assert_eq!(b, a);
    assert_eq!(last_seq(s, chat.id).await, 3);
    assert_eq!(history_seqs(s, chat.id, all_history()).await, vec![3, 2, 1]);
}

/// The same `client_msg_id` from another sender is another message.
pub async fn post_client_id_is_scoped_per_sender(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let a = post(s, text(chat.id, &alice, "c-1", "from alice", at(1))).await;
    let b = post(s, text(chat.id, &bob, "c-1", "from bob", at(2))).await;
    assert_ne!(a.id, b.id);
    assert_eq!(b.seq, 2, "another sender's client_msg_id is a new message");
    assert_eq!(
        ok(
            s.find_by_client_id(&alice, "c-1").await,
            "find_by_client_id"
        ),
        Some(a)
    );
    assert_eq!(
        ok(s.find_by_client_id(&bob, "c-1").await, "find_by_client_id"),
        Some(b)
    );
}

/// Reusing a `(sender, client_msg_id)` in another chat is a `Conflict`
/// and writes nothing there.
pub async fn post_reusing_client_id_in_other_chat_conflicts(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let one = group(s, &[&alice, &bob], at(0)).await;
    let two = group(s, &[&alice, &bob], at(0)).await;
    let first = post(s, text(one.id, &alice, "c-1", "in one", at(1))).await;
    let reuse = text(two.id, &alice, "c-1", "in two", at(2));
    conflict(
        apply_one(s, Change::Post(reuse.clone())).await,
        "reusing a client_msg_id in another chat",
    );
    let c = get_chat(s, two.id).await;
    assert_eq!(c.last_seq, 0, "a conflicting post must take no seq");
    assert_eq!(c.last_activity, at(0));
    assert_eq!(ok(s.get_message(reuse.id).await, "get_message"), None);
    assert_eq!(
        ok(
            s.find_by_client_id(&alice, "c-1").await,
            "find_by_client_id"
        ),
        Some(first)
    );
}

/// A non-system post from someone not (or no longer) in the chat is
/// `NotFound` and takes no seq; a system message from a non-participant
/// is stored.
pub async fn post_requires_participant_sender(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let intruder = text(chat.id, &mallory, "m-1", "let me in", at(1));
    not_found(
        apply_one(s, Change::Post(intruder.clone())).await,
        "a post by a non-participant",
    );
    assert_eq!(
        last_seq(s, chat.id).await,
        0,
        "a failed post must take no seq"
    );
    assert_eq!(ok(s.get_message(intruder.id).await, "get_message"), None);
    assert_eq!(
        ok(
            s.find_by_client_id(&mallory, "m-1").await,
            "find_by_client_id"
        ),
        None,
        "a failed post must leave no idempotency record"
    );

    let note = system(
        chat.id,
        &mallory,
        SystemEvent::ParticipantRemoved {
            user_id: mallory.clone(),
        },
        at(2),
    );
    let message = post(s, note.clone()).await;
    assert_eq!(
        message,
        stored(&note, 1),
        "a system message needs no participant sender"
    );

    membership(
        apply_one(s, remove(chat.id, &bob, &alice, at(3))).await,
        "removing bob",
    );
    not_found(
        apply_one(
            s,
            Change::Post(text(chat.id, &bob, "b-1", "still here?", at(4))),
        )
        .await,
        "a post by a removed participant",
    );
    assert_eq!(last_seq(s, chat.id).await, 2);
}

/// A post into a chat that does not exist is `NotFound` and leaves no
/// trace (the `client_msg_id` stays free).
pub async fn post_to_missing_chat_is_not_found(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let lost = text(ChatId::new(), &alice, "c-1", "hello?", at(1));
    not_found(
        apply_one(s, Change::Post(lost.clone())).await,
        "a post into a missing chat",
    );
    assert_eq!(ok(s.get_message(lost.id).await, "get_message"), None);
    assert_eq!(
        ok(
            s.find_by_client_id(&alice, "c-1").await,
            "find_by_client_id"
        ),
        None
    );
    let chat = group(s, &[&alice], at(0)).await;
    let message = post(s, text(chat.id, &alice, "c-1", "hello", at(2))).await;
    assert_eq!(
        message.seq, 1,
        "the client_msg_id of a failed post stays free"
    );
}

/// `reply_to` must name a message of the same chat: another chat's
/// message or an unknown id is `NotFound` and takes no seq.
pub async fn post_reply_to_must_be_in_same_chat(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let one = group(s, &[&alice, &bob], at(0)).await;
    let two = group(s, &[&alice, &bob], at(0)).await;
    let original = post(s, text(one.id, &alice, "c-1", "question", at(1))).await;
    let answer = NewMessage {
        reply_to: Some(original.id),
        ..text(one.id, &bob, "b-1", "answer", at(2))
    };
    let reply = post(s, answer.clone()).await;
    assert_eq!(reply, stored(&answer, 2), "reply_to must round-trip");

    for (target, what) in [
        (original.id, "a reply to another chat's message"),
        (MessageId::new(), "a reply to an unknown message"),
    ] {
        let bad = NewMessage {
            reply_to: Some(target),
            ..text(two.id, &bob, &format!("b-{target}"), "answer", at(3))
        };
        not_found(apply_one(s, Change::Post(bad.clone())).await, what);
        assert_eq!(ok(s.get_message(bad.id).await, "get_message"), None);
    }
    assert_eq!(
        last_seq(s, two.id).await,
        0,
        "failed replies must take no seq"
    );
    assert_eq!(last_seq(s, one.id).await, 2);
}

// --- edits, deletions, reactions ---------------------------------------

/// An edit replaces the content, sets `edited_at`, keeps `seq` and moves
/// `updated_seq` (and the chat's `last_seq`, `last_activity`).
pub async fn edit_replaces_content_and_moves_updated_seq(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let m1 = post(s, text(chat.id, &alice, "c-1", "helo", at(1))).await;
    let m2 = post(s, text(chat.id, &bob, "b-1", "hi", at(2))).await;

    let (message, changed) = updated(
        apply_one(s, edit(chat.id, m1.id, "hello", at(3))).await,
        "editing a message",
    );
    assert!(changed, "an edit must report changed: true");
    let expected = Message {
        content: Some("hello".to_owned()),
        edited_at: Some(at(3)),
        updated_seq: 3,
        ..m1.clone()
    };
    assert_eq!(
        message, expected,
        "an edit changes content, edited_at and updated_seq only"
    );
    assert_eq!(get_message(s, m1.id).await, expected);
    assert_eq!(
        get_message(s, m2.id).await,
        m2,
        "other messages stay as they are"
    );
    let c = get_chat(s, chat.id).await;
    assert_eq!(c.last_seq, 3, "an edit takes the next seq");
    assert_eq!(c.last_activity, at(3), "an edit moves last_activity");

    let (again, _) = updated(
        apply_one(s, edit(chat.id, m1.id, "hello!", at(4))).await,
        "editing again",
    );
    assert_eq!((again.seq, again.updated_seq), (1, 4));
    assert_eq!(again.edited_at, Some(at(4)));
    assert_eq!(again.content.as_deref(), Some("hello!"));
    assert_eq!(
        history_seqs(s, chat.id, all_history()).await,
        vec![2, 1],
        "edits add no messages"
    );
}

/// Editing a deleted message is a `Conflict` and takes no seq.
pub async fn edit_of_deleted_message_conflicts(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    let m = post(s, text(chat.id, &alice, "c-1", "oops", at(1))).await;
    updated(apply_one(s, delete(chat.id, m.id, at(2))).await, "deleting");
    conflict(
        apply_one(s, edit(chat.id, m.id, "revived", at(3))).await,
        "editing a deleted message",
    );
    let c = get_chat(s, chat.id).await;
    assert_eq!(c.last_seq, 2, "a failed edit must take no seq");
    assert_eq!(c.last_activity, at(2));
    let tomb = get_message(s, m.id).await;
    assert!(
        tomb.deleted && tomb.content.is_none(),
        "the tombstone stays: {tomb:?}"
    );
}

/// Edit, Delete and React of a message through another chat, or of an
/// unknown message, are `NotFound` and change nothing.
pub async fn message_changes_in_wrong_chat_are_not_found(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let one = group(s, &[&alice, &bob], at(0)).await;
    let two = group(s, &[&alice, &bob], at(0)).await;
    let m = post(s, text(one.id, &alice, "c-1", "mine", at(1))).await;
    post(s, text(two.id, &alice, "c-2", "other", at(1))).await;
    for (chat, id, whose) in [
        (two.id, m.id, "another chat's message"),
        (one.id, MessageId::new(), "an unknown message"),
    ] {
        not_found(
            apply_one(s, edit(chat, id, "x", at(2))).await,
            &format!("editing {whose}"),
        );
        not_found(
            apply_one(s, delete(chat, id, at(2))).await,
            &format!("deleting {whose}"),
        );
        not_found(
            apply_one(s, react(chat, id, &bob, "👍", true, at(2))).await,
            &format!("reacting to {whose}"),
        );
    }
    assert_eq!(
        get_message(s, m.id).await,
        m,
        "the message must be unchanged"
    );
    assert_eq!(last_seq(s, one.id).await, 1);
    assert_eq!(last_seq(s, two.id).await, 1);
}

/// Every kind of change to a chat that does not exist is `NotFound`.
pub async fn changes_to_missing_chat_are_not_found(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let real = group(s, &[&alice, &bob], at(0)).await;
    let m = post(s, text(real.id, &alice, "c-1", "here", at(1))).await;
    let missing = ChatId::new();
    let changes = vec![
        (
            "Post",
            Change::Post(text(missing, &alice, "c-2", "x", at(2))),
        ),
        ("Edit", edit(missing, m.id, "x", at(2))),
        ("Delete", delete(missing, m.id, at(2))),
        ("React", react(missing, m.id, &alice, "👍", true, at(2))),
        (
            "AddParticipant",
            add(missing, &bob, Role::Member, &alice, at(2)),
        ),
        ("RemoveParticipant", remove(missing, &bob, &alice, at(2))),
        (
            "SetRole",
            set_role(missing, &bob, Role::Admin, &alice, at(2)),
        ),
        (
            "UpdateGroup",
            Change::UpdateGroup {
                chat_id: missing,
                patch: GroupPatch {
                    name: Some("x".to_owned()),
                    ..GroupPatch::default()
                },
                by: alice.clone(),
                at: at(2),
            },
        ),
        ("Mark", mark(missing, &alice, 1, 1)),
    ];
    for (name, change) in changes {
        not_found(
            apply_one(s, change).await,
            &format!("{name} in a missing chat"),
        );
    }
    assert_eq!(get_message(s, m.id).await, m);
    assert_eq!(last_seq(s, real.id).await, 1);
}

/// A deletion makes a tombstone: content and media `None`, reactions
/// gone, `deleted`, `seq` kept, `updated_seq` moved.
pub async fn delete_leaves_tombstone(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let media_id = MediaId::new();
    let new = NewMessage {
        kind: MessageType::Image,
        content: Some("look".to_owned()),
        media: Some(MediaRef {
            id: media_id,
            mime: "image/jpeg".to_owned(),
            size: 1_000,
            url: format!("/api/v1/chat/media/{media_id}"),
            thumbnail_url: None,
            duration_ms: None,
            width: Some(640),
            height: Some(480),
            name: None,
        }),
        ..text(chat.id, &alice, "c-1", "", at(1))
    };
    let m = post(s, new).await;
    updated(
        apply_one(s, react(chat.id, m.id, &bob, "👍", true, at(2))).await,
        "reacting",
    );
    let (tomb, changed) = updated(apply_one(s, delete(chat.id, m.id, at(3))).await, "deleting");
    assert!(changed, "a deletion must report changed: true");
    assert!(tomb.deleted, "a deleted message must be marked deleted");
    assert_eq!(tomb.content, None, "a tombstone has no content");
    assert_eq!(tomb.media, None, "a tombstone has no media");
    assert!(tomb.reactions.is_empty(), "a tombstone has no reactions");
    assert_eq!(
        (tomb.seq, tomb.updated_seq),
        (1, 3),
        "a deletion keeps seq, moves updated_seq"
    );
    assert_eq!(
        (
            tomb.id,
            tomb.chat_id,
            &tomb.sender_id,
            tomb.kind,
            &tomb.client_msg_id,
            tomb.created_at
        ),
        (
            m.id,
            m.chat_id,
            &m.sender_id,
            m.kind,
            &m.client_msg_id,
            m.created_at
        ),
        "a deletion keeps the message's identity"
    );
    assert_eq!(get_message(s, m.id).await, tomb);
    let c = get_chat(s, chat.id).await;
    assert_eq!(c.last_seq, 3);
    assert_eq!(c.last_activity, at(3), "a deletion moves last_activity");
    assert_eq!(
        ok(s.history(chat.id, all_history()).await, "history"),
        vec![tomb],
        "history keeps the tombstone"
    );
}

/// Deleting a tombstone again returns it with `changed: false` and takes
/// no seq.
pub async fn delete_twice_changes_nothing(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    let m = post(s, text(chat.id, &alice, "c-1", "bye", at(1))).await;
    let (tomb, _) = updated(apply_one(s, delete(chat.id, m.id, at(2))).await, "deleting");
    let (again, changed) = updated(
        apply_one(s, delete(chat.id, m.id, at(3))).await,
        "deleting again",
    );
    assert!(!changed, "deleting a tombstone must report changed: false");
    assert_eq!(again, tomb, "deleting a tombstone must return it unchanged");
    let c = get_chat(s, chat.id).await;
    assert_eq!(c.last_seq, 2, "deleting a tombstone must take no seq");
    assert_eq!(c.last_activity, at(2));
}

/// Reactions are added and removed per user and emoji, each change
/// taking a seq; users are kept in the order they reacted; removing the
/// last user of an emoji removes the emoji.
pub async fn react_adds_and_removes_in_order(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
    let m = post(s, text(chat.id, &alice, "c-1", "news", at(1))).await;
    let steps: Vec<(&UserId, &str, bool, Reactions)> = vec![
        (&carol, "👍", true, reactions(&[("👍", &[&carol])])),
        (&alice, "👍", true, reactions(&[("👍", &[&carol, &alice])])),
        (
            &bob,
            "❤️",
            true,
            reactions(&[("👍", &[&carol, &alice]), ("❤️", &[&bob])]),
        ),
        (
            &alice,
            "❤️",
            true,
            reactions(&[("👍", &[&carol, &alice]), ("❤️", &[&bob, &alice])]),
        ),
        (
            &carol,
            "👍",
            false,
            reactions(&[("👍", &[&alice]), ("❤️", &[&bob, &alice])]),
        ),
        (&alice, "👍", false, reactions(&[("❤️", &[&bob, &alice])])),
    ];
    for ((who, emoji, on, expected), secs) in steps.into_iter().zip(2..) {
        let what = format!("{who} {} {emoji}", if on { "adds" } else { "removes" });
        let (message, changed) = updated(
            apply_one(s, react(chat.id, m.id, who, emoji, on, at(secs))).await,
            &what,
        );
        let seq = u64::try_from(secs).unwrap_or_default();
        assert!(changed, "{what}: must report changed: true");
        assert_eq!(
            message.reactions, expected,
            "{what}: reactions must list users in the order they reacted, \
             without emoji nobody uses"
        );
        assert_eq!(
            (message.seq, message.updated_seq),
            (1, seq),
            "{what}: a reaction moves updated_seq"
        );
        assert_eq!(get_message(s, m.id).await, message);
        let c = get_chat(s, chat.id).await;
        assert_eq!((c.last_seq, c.last_activity), (seq, at(secs)));
    }
    assert_eq!(
        get_message(s, m.id).await.content.as_deref(),
        Some("news"),
        "reactions leave the content alone"
    );
}

/// Adding a reaction that exists, or removing one that does not, returns
/// `changed: false` and takes no seq.
pub async fn react_duplicates_change_nothing(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let m = post(s, text(chat.id, &alice, "c-1", "news", at(1))).await;
    let (first, _) = updated(
        apply_one(s, react(chat.id, m.id, &alice, "👍", true, at(2))).await,
        "first reaction",
    );
    for (who, emoji, on, what) in [
        (&alice, "👍", true, "adding the same reaction again"),
        (&bob, "👍", false, "removing a reaction the user never gave"),
        (&alice, "❤️", false, "removing an emoji nobody used"),
    ] {
        let (message, changed) = updated(
            apply_one(s, react(chat.id, m.id, who, emoji, on, at(5))).await,
            what,
        );
        assert!(!changed, "{what}: must report changed: false");
        assert_eq!(message, first, "{what}: must return the message unchanged");
    }
    let c = get_chat(s, chat.id).await;
    assert_eq!(c.last_seq, 2, "reactions that change nothing take no seq");
    assert_eq!(c.last_activity, at(2));
}

/// A new distinct emoji on a message that has `max_distinct` already is
/// a `Conflict` (no seq); more users on an existing emoji are fine.
pub async fn react_limits_distinct_emoji(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let m = post(s, text(chat.id, &alice, "c-1", "vote", at(1))).await;
    let r = |who: &UserId, emoji: &str, on: bool, secs| {
        react_max(chat.id, m.id, who, emoji, on, 2, at(secs))
    };
    updated(apply_one(s, r(&alice, "👍", true, 2)).await, "first emoji");
    updated(apply_one(s, r(&alice, "❤️", true, 3)).await, "second emoji");
    conflict(
        apply_one(s, r(&bob, "😂", true, 4)).await,
        "a third distinct emoji with max_distinct 2",
    );
    assert_eq!(
        last_seq(s, chat.id).await,
        3,
        "a refused reaction takes no seq"
    );
    let (message, changed) = updated(
        apply_one(s, r(&bob, "👍", true, 5)).await,
        "an existing emoji",
    );
    assert!(
        changed,
        "another user on an existing emoji is within the limit"
    );
    assert_eq!(
        message.reactions,
        reactions(&[("👍", &[&alice, &bob]), ("❤️", &[&alice])])
    );
    updated(
        apply_one(s, r(&alice, "❤️", false, 6)).await,
        "freeing a slot",
    );
    let (message, _) = updated(apply_one(s, r(&bob, "😂", true, 7)).await, "a freed slot");
    assert_eq!(
        message.reactions,
        reactions(&[("👍", &[&alice, &bob]), ("😂", &[&bob])])
    );
    assert_eq!(message.updated_seq, 6);
}

/// Reacting to a deleted message is a `Conflict` and takes no seq.
pub async fn react_to_deleted_message_conflicts(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let m = post(s, text(chat.id, &alice, "c-1", "gone soon", at(1))).await;
    let (tomb, _) = updated(apply_one(s, delete(chat.id, m.id, at(2))).await, "deleting");
    conflict(
        apply_one(s, react(chat.id, m.id, &bob, "👍", true, at(3))).await,
        "reacting to a deleted message",
    );
    assert_eq!(last_seq(s, chat.id).await, 2);
    assert_eq!(get_message(s, m.id).await, tomb);
}

// --- batches -----------------------------------------------------------

/// `apply` returns one result per change in order; later changes see
/// earlier ones; a failing change leaves no trace (no seq) and does not
/// stop the others; an empty batch returns nothing.
pub async fn apply_batch_isolates_failures(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, mallory) = (user("alice"), user("bob"), user("mallory"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let first = text(chat.id, &alice, "c-1", "one", at(1));
    let batch = vec![
        Change::Post(first.clone()),
        Change::Post(text(chat.id, &mallory, "m-1", "intruder", at(2))),
        react(chat.id, first.id, &bob, "👍", true, at(3)),
        edit(chat.id, MessageId::new(), "ghost", at(4)),
        add(chat.id, &bob, Role::Member, &alice, at(5)),
        Change::Post(text(chat.id, &bob, "b-1", "three", at(6))),
        mark(chat.id, &bob, 3, 3),
        Change::Post(NewMessage {
            id: MessageId::new(),
            ..first.clone()
        }),
    ];
    let results = s.apply(batch).await;
    assert_eq!(results.len(), 8, "apply must return one result per change");
    let mut results = results.into_iter().map(|r| r.map(|c| c.applied));
    let mut next = |i: usize| some(results.next(), &format!("result {i}"));

    let (m1, dup) = posted(next(0), "change 0 (post)");
    assert!(!dup);
    assert_eq!(m1.seq, 1);
    not_found(next(1), "change 1 (post by a non-participant)");
    let (reacted, changed) = updated(next(2), "change 2 (react to change 0's message)");
    assert!(changed);
    assert_eq!(
        (reacted.id, reacted.updated_seq),
        (m1.id, 2),
        "the failed change 1 must not take a seq"
    );
    not_found(next(3), "change 3 (edit of an unknown message)");
    conflict(next(4), "change 4 (adding a participant twice)");
    let (m3, _) = posted(next(5), "change 5 (post)");
    assert_eq!(m3.seq, 3, "failed changes 3 and 4 must not take seqs");
    assert_eq!(marked(next(6), "change 6 (mark)"), (3, 3, true, true));
    let (retry, dup) = posted(next(7), "change 7 (retry of change 0)");
    assert!(
        dup,
        "a retry of an earlier change in the batch is a duplicate"
    );
    assert_eq!(retry.id, m1.id);

    let c = get_chat(s, chat.id).await;
    assert_eq!((c.last_seq, c.last_activity), (3, at(6)));
    assert_eq!(c.participants.len(), 2);
    assert_eq!(history_seqs(s, chat.id, all_history()).await, vec![3, 1]);
    assert_eq!(
        ok(
            s.find_by_client_id(&mallory, "m-1").await,
            "find_by_client_id"
        ),
        None,
        "a failed post leaves no trace"
    );
    assert!(
        s.apply(Vec::new()).await.is_empty(),
        "an empty batch returns no results"
    );
    assert_eq!(last_seq(s, chat.id).await, 3);
}

// --- reads -------------------------------------------------------------

/// `history` returns messages newest first within `from_seq <= seq`,
/// `after_seq < seq < before_seq`, at most `limit`, tombstones
/// included.
pub async fn history_returns_newest_first_within_bounds(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let empty = group(s, &[&alice], at(0)).await;
    for i in 1..=10 {
        post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i))).await;
    }
    let q = |before_seq, after_seq, from_seq, limit| HistoryQuery {
        before_seq,
        after_seq,
        from_seq,
        limit,
    };
    let cases: Vec<(HistoryQuery, Vec<u64>)> = vec![
        (q(None, None, 0, 100), (1..=10).rev().collect()),
        (q(None, None, 0, 3), vec![10, 9, 8]),
        (q(Some(5), None, 0, 100), vec![4, 3, 2, 1]),
        (q(Some(5), None, 0, 2), vec![4, 3]),
        (q(None, Some(7), 0, 100), vec![10, 9, 8]),
        (q(Some(6), Some(2), 0, 100), vec![5, 4, 3]),
        (q(None, None, 4, 100), (4..=10).rev().collect()),
        (q(None, Some(2), 4, 100), (4..=10).rev().collect()),
        (q(None, Some(6), 4, 100), vec![10, 9, 8, 7]),
        (q(Some(6), None, 4, 100), vec![5, 4]),
        (q(Some(6), Some(5), 0, 100), vec![]),
        (q(Some(1), None, 0, 100), vec![]),
        (q(None, Some(10), 0, 100), vec![]),
        (q(None, None, 11, 100), vec![]),
        (q(None, None, 0, 0), vec![]),
    ];
    for (query, expected) in cases {
        assert_eq!(
            history_seqs(s, chat.id, query).await,
            expected,
            "history({query:?}) must return these seqs, newest first"
        );
    }
    let all = ok(s.history(chat.id, all_history()).await, "history");
    for m in &all {
        assert_eq!(
            &get_message(s, m.id).await,
            m,
            "history returns whole messages"
        );
    }

    let (tomb, _) = updated(
        apply_one(s, delete(chat.id, all[5].id, at(20))).await,
        "deleting seq 5",
    );
    let after = ok(
        s.history(chat.id, q(Some(6), Some(4), 0, 100)).await,
        "history",
    );
    assert_eq!(after, vec![tomb], "history keeps tombstones at their seq");
    assert_eq!(
        history_seqs(s, chat.id, all_history()).await.len(),
        10,
        "a deletion adds no message"
    );
    assert!(history_seqs(s, empty.id, all_history()).await.is_empty());
}

/// `changes` returns messages with `updated_seq > after` and
/// `seq >= from_seq` in ascending `updated_seq`, at most `limit`, so an
/// edit, deletion, reaction or system message shows up after its cursor.
pub async fn changes_follow_updated_seq(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let mut m = Vec::new();
    for i in 1..=5 {
        m.push(
            post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i)))
                .await
                .id,
        );
    }
    let ids = |list: &[(usize, u64)]| -> Vec<(MessageId, u64)> {
        list.iter().map(|(i, u)| (m[*i], *u)).collect()
    };
    assert_eq!(
        changes_ids(s, chat.id, 0, 0, 100).await,
        ids(&[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)])
    );
    updated(
        apply_one(s, edit(chat.id, m[1], "edited", at(6))).await,
        "edit seq 2",
    );
    assert_eq!(
        changes_ids(s, chat.id, 5, 0, 100).await,
        ids(&[(1, 6)]),
        "an edit of an old message must show up after the cursor"
    );
    assert_eq!(
        changes_ids(s, chat.id, 0, 0, 100).await,
        ids(&[(0, 1), (2, 3), (3, 4), (4, 5), (1, 6)]),
        "changes must be ordered by updated_seq"
    );
    assert_eq!(
        changes_ids(s, chat.id, 3, 0, 100).await,
        ids(&[(3, 4), (4, 5), (1, 6)])
    );
    assert_eq!(
        changes_ids(s, chat.id, 0, 0, 2).await,
        ids(&[(0, 1), (2, 3)]),
        "limit must cap the result"
    );
    assert_eq!(
        changes_ids(s, chat.id, 0, 3, 100).await,
        ids(&[(2, 3), (3, 4), (4, 5)]),
        "from_seq must hide messages older than it, even when edited"
    );
    updated(
        apply_one(s, delete(chat.id, m[3], at(7))).await,
        "delete seq 4",
    );
    let deleted = ok(s.changes(chat.id, 6, 0, 100).await, "changes");
    assert_eq!(deleted.len(), 1);
    assert!(
        deleted[0].id == m[3] && deleted[0].deleted,
        "a deletion must show up as a tombstone after the cursor"
    );
    updated(
        apply_one(s, react(chat.id, m[0], &bob, "👍", true, at(8))).await,
        "react to seq 1",
    );
    assert_eq!(changes_ids(s, chat.id, 7, 0, 100).await, ids(&[(0, 8)]));
    let (_, added) = membership(
        apply_one(s, add(chat.id, &carol, Role::Member, &alice, at(9))).await,
        "adding carol",
    );
    let added = some(added, "system message");
    assert_eq!(
        ok(s.changes(chat.id, 8, 0, 100).await, "changes"),
        vec![added],
        "a membership change must show up as its system message"
    );
    assert!(changes_ids(s, chat.id, 9, 0, 100).await.is_empty());
    assert_eq!(changes_ids(s, chat.id, 0, 0, 100).await.len(), 6);
}

/// `find_by_client_id` returns the message as it is now (edited,
/// deleted), and `None` for another sender or an unknown key.
pub async fn find_by_client_id_returns_current_message(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let m = post(s, text(chat.id, &alice, "c-1", "draft", at(1))).await;
    let find = |who: &UserId, key: &str| {
        let (who, key) = (who.clone(), key.to_owned());
        async move { ok(s.find_by_client_id(&who, &key).await, "find_by_client_id") }
    };
    assert_eq!(find(&alice, "c-1").await, Some(m.clone()));
    assert_eq!(
        find(&bob, "c-1").await,
        None,
        "the key belongs to its sender"
    );
    assert_eq!(find(&alice, "c-2").await, None);

    let (edited, _) = updated(
        apply_one(s, edit(chat.id, m.id, "final", at(2))).await,
        "edit",
    );
    assert_eq!(
        find(&alice, "c-1").await,
        Some(edited),
        "must return the edited message"
    );
    let (tomb, _) = updated(apply_one(s, delete(chat.id, m.id, at(3))).await, "delete");
    assert_eq!(
        find(&alice, "c-1").await,
        Some(tomb.clone()),
        "must return the tombstone of a deleted message"
    );
    let (retry, dup) = posted(
        apply_one(
            s,
            Change::Post(text(chat.id, &alice, "c-1", "again", at(4))),
        )
        .await,
        "retry after deletion",
    );
    assert!(dup, "the key of a deleted message stays taken");
    assert_eq!(retry, tomb);
    assert_eq!(last_seq(s, chat.id).await, 3);
}

/// `get_message` returns the message as it is now, with its reactions,
/// and `None` for an unknown id.
pub async fn get_message_returns_current_state(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    assert_eq!(
        ok(s.get_message(MessageId::new()).await, "get_message"),
        None
    );
    let m = post(s, text(chat.id, &alice, "c-1", "hi", at(1))).await;
    assert_eq!(get_message(s, m.id).await, m);
    let results = s
        .apply(vec![
            react(chat.id, m.id, &bob, "🎉", true, at(2)),
            react(chat.id, m.id, &alice, "🎉", true, at(3)),
            react(chat.id, m.id, &bob, "👀", true, at(4)),
            edit(chat.id, m.id, "hi all", at(5)),
        ])
        .await;
    assert!(
        results.iter().all(Result::is_ok),
        "all changes apply: {results:?}"
    );
    let now = get_message(s, m.id).await;
    assert_eq!(
        now,
        Message {
            content: Some("hi all".to_owned()),
            edited_at: Some(at(5)),
            updated_seq: 5,
            reactions: reactions(&[("🎉", &[&bob, &alice]), ("👀", &[&bob])]),
            ..m
        },
        "get_message must include reactions and the latest edit"
    );
}
