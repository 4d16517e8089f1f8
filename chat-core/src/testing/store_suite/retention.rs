//! Cases of retention: the chat's setting as a change of its log, and what
//! the sweep reads and writes (chats with a retention, the old messages
//! after a watermark, the watermark).

use std::sync::Arc;

use super::*;
use crate::store::{ExpiredMessage, RetentionChat};

fn set_retention(chat: ChatId, seconds: Option<u64>, by: &UserId, at: Timestamp) -> Change {
    Change::SetRetention {
        chat_id: chat,
        seconds,
        by: by.clone(),
        at,
    }
}

async fn all_retention_chats(s: &dyn Store, page: usize) -> Vec<RetentionChat> {
    let mut out: Vec<RetentionChat> = Vec::new();
    loop {
        let after = out.last().map(|c| c.chat_id);
        let chats = ok(s.retention_chats(after, page).await, "retention_chats");
        assert!(chats.len() <= page, "retention_chats must honour its limit");
        let done = chats.len() < page;
        out.extend(chats);
        if done {
            return out;
        }
    }
}

/// `SetRetention` sets the chat's `retention_secs` and records a `system`
/// message `retention_changed` with the next seq; setting the value the
/// chat has changes nothing; `None` clears it; a missing chat is
/// `NotFound`.
pub async fn set_retention_records_system_message(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = direct(s, &alice, &bob, at(0)).await;
    assert_eq!(
        chat.retention_secs, None,
        "a new chat keeps messages forever"
    );

    let (after, message) = membership(
        apply_one(s, set_retention(chat.id, Some(3600), &alice, at(1))).await,
        "setting a retention",
    );
    assert_eq!(after.retention_secs, Some(3600));
    let message = some(message, "a change of retention records a system message");
    assert_eq!(
        (
            message.seq,
            message.kind,
            &message.sender_id,
            message.created_at
        ),
        (1, MessageType::System, &alice, at(1))
    );
    assert_eq!(
        message.system,
        Some(SystemEvent::RetentionChanged {
            seconds: Some(3600)
        })
    );
    assert_eq!(get_message(s, message.id).await, message);
    let read = get_chat(s, chat.id).await;
    assert_eq!((read.retention_secs, read.last_seq), (Some(3600), 1));

    let (same, message) = membership(
        apply_one(s, set_retention(chat.id, Some(3600), &bob, at(2))).await,
        "setting the same retention",
    );
    assert!(message.is_none(), "the same retention records nothing");
    assert_eq!((same.retention_secs, same.last_seq), (Some(3600), 1));

    let (cleared, message) = membership(
        apply_one(s, set_retention(chat.id, None, &bob, at(3))).await,
        "clearing the retention",
    );
    assert_eq!(cleared.retention_secs, None);
    let message = some(message, "clearing records a system message");
    assert_eq!(message.seq, 2);
    assert_eq!(
        message.system,
        Some(SystemEvent::RetentionChanged { seconds: None })
    );
    assert_eq!(get_chat(s, chat.id).await.retention_secs, None);

    not_found(
        apply_one(s, set_retention(ChatId::new(), Some(3600), &alice, at(4))).await,
        "setting the retention of a missing chat",
    );
}

/// `retention_chats` lists the chats with a retention, in id order, with
/// their watermark (0 at first), paged by `after` and `limit`; a chat
/// whose retention is cleared leaves the list.
pub async fn retention_chats_page_in_id_order(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let mut chats = Vec::new();
    for i in 0..5 {
        let chat = group(s, &[&alice], at(i)).await;
        chats.push(chat.id);
    }
    let _without = group(s, &[&alice], at(9)).await;
    for (i, chat) in chats.iter().enumerate() {
        let seconds = 3600 * (i as u64 + 1);
        ok(
            apply_one(s, set_retention(*chat, Some(seconds), &alice, at(10))).await,
            "setting a retention",
        );
    }
    ok(
        apply_one(s, set_retention(chats[2], None, &alice, at(11))).await,
        "clearing a retention",
    );
    let mut expected: Vec<RetentionChat> = chats
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(i, chat)| RetentionChat {
            chat_id: *chat,
            seconds: 3600 * (i as u64 + 1),
            swept_seq: 0,
        })
        .collect();
    expected.sort_by_key(|c| c.chat_id);
    for page in [1, 2, 3, 10] {
        assert_eq!(
            all_retention_chats(s, page).await,
            expected,
            "retention_chats in pages of {page}"
        );
    }
}

/// `expired_messages` returns the messages after `after_seq` in seq order,
/// of every kind, deleted or not, with what the sweep needs (kind,
/// tombstone, upload), and stops at the first one created at or after
/// `before`, or at `limit`.
pub async fn expired_messages_stop_at_the_first_new_one(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let first = post(s, text(chat.id, &alice, "r-1", "one", at(1))).await;
    let image_id = MediaId::new();
    let image = post(
        s,
        NewMessage {
            kind: MessageType::Image,
            content: None,
            media: Some(MediaRef {
                id: image_id,
                mime: "image/png".to_owned(),
                size: 10,
                url: format!("/api/v1/chat/media/{image_id}"),
                thumbnail_url: None,
                duration_ms: None,
                width: Some(1),
                height: Some(1),
                name: None,
            }),
            ..text(chat.id, &bob, "r-2", "", at(2))
        },
    )
    .await;
    let note = post(
        s,
        system(
            chat.id,
            &alice,
            SystemEvent::RetentionChanged {
                seconds: Some(3600),
            },
            at(3),
        ),
    )
    .await;
    let gone = post(s, text(chat.id, &bob, "r-3", "three", at(4))).await;
    ok(
        apply_one(s, delete(chat.id, gone.id, at(5))).await,
        "deleting a message",
    );
    let new = post(s, text(chat.id, &alice, "r-4", "new", at(6))).await;
    let _newer_but_older = post(s, text(chat.id, &alice, "r-5", "skewed", at(1))).await;

    let expected = vec![
        ExpiredMessage {
            id: first.id,
            seq: first.seq,
            kind: MessageType::Text,
            deleted: false,
            media: None,
        },
        ExpiredMessage {
            id: image.id,
            seq: image.seq,
            kind: MessageType::Image,
            deleted: false,
            media: Some(image_id),
        },
        ExpiredMessage {
            id: note.id,
            seq: note.seq,
            kind: MessageType::System,
            deleted: false,
            media: None,
        },
        ExpiredMessage {
            id: gone.id,
            seq: gone.seq,
            kind: MessageType::Text,
            deleted: true,
            media: None,
        },
    ];
    let found = ok(
        s.expired_messages(chat.id, 0, at(6), 100).await,
        "expired_messages",
    );
    assert_eq!(
        found, expected,
        "every message before the first new one, in seq order (an older one after it waits)"
    );
    let found = ok(
        s.expired_messages(chat.id, first.seq, at(6), 2).await,
        "expired_messages after a watermark",
    );
    assert_eq!(found, expected[1..3], "after_seq and limit");
    let found = ok(
        s.expired_messages(chat.id, 0, at(1), 100).await,
        "expired_messages before the first",
    );
    assert!(
        found.is_empty(),
        "nothing is older than `before`: {found:?}"
    );
    let found = ok(
        s.expired_messages(chat.id, new.seq, at(99), 100).await,
        "expired_messages at the end",
    );
    assert_eq!(found.len(), 1, "the last message: {found:?}");
    let found = ok(
        s.expired_messages(ChatId::new(), 0, at(99), 100).await,
        "expired_messages of a missing chat",
    );
    assert!(found.is_empty());
}

/// The retention watermark moves forward only, is kept per chat, and
/// moving it for a missing chat does nothing.
pub async fn retention_watermark_moves_forward_only(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let (one, two) = (
        group(s, &[&alice], at(0)).await,
        group(s, &[&alice], at(0)).await,
    );
    for chat in [one.id, two.id] {
        ok(
            apply_one(s, set_retention(chat, Some(7200), &alice, at(1))).await,
            "setting a retention",
        );
    }
    ok(s.set_retention_watermark(one.id, 3).await, "watermark 3");
    ok(s.set_retention_watermark(one.id, 2).await, "watermark 2");
    ok(
        s.set_retention_watermark(ChatId::new(), 5).await,
        "watermark of a missing chat",
    );
    let listed = all_retention_chats(s, 10).await;
    let swept = |id: ChatId| listed.iter().find(|c| c.chat_id == id).map(|c| c.swept_seq);
    assert_eq!(swept(one.id), Some(3), "the watermark never moves back");
    assert_eq!(swept(two.id), Some(0), "each chat has its own watermark");
    assert_eq!(listed.len(), 2);
}
