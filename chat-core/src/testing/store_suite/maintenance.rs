//! Cases of the maintenance interface: stored texts read in pages and
//! replaced only where unchanged, and the store's meta values.

use std::sync::Arc;

use super::*;
use crate::store::{StoredText, TextReplacement, TextTable};

async fn all_texts(s: &dyn Store, table: TextTable, page: usize) -> Vec<StoredText> {
    let mut out: Vec<StoredText> = Vec::new();
    loop {
        let after = out.last().map(|t| t.row.clone());
        let texts = ok(
            s.stored_texts(table, after.as_deref(), page).await,
            "stored_texts",
        );
        assert!(texts.len() <= page, "stored_texts must honour its limit");
        let done = texts.len() < page;
        out.extend(texts);
        if done {
            return out;
        }
    }
}

/// `stored_texts` pages through every message with content (not system
/// messages, not deleted ones) and every report with a snapshot, in id
/// order, naming each text's chat, author and message.
pub async fn stored_texts_page_in_id_order(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let other = group(s, &[&bob, &alice], at(0)).await;
    let mut posted = Vec::new();
    for i in 0..5 {
        let (chat, sender) = if i % 2 == 0 {
            (chat.id, &alice)
        } else {
            (other.id, &bob)
        };
        let client = format!("t-{i}");
        posted.push(
            post(
                s,
                text(chat, sender, &client, &format!("text {i}"), at(i + 1)),
            )
            .await,
        );
    }
    post(
        s,
        system(
            chat.id,
            &alice,
            SystemEvent::GroupUpdated {
                name: Some("renamed".into()),
                description: None,
                avatar_url: None,
            },
            at(9),
        ),
    )
    .await;
    updated(
        apply_one(s, delete(other.id, posted[3].id, at(10))).await,
        "delete",
    );
    let r = report(&bob, &posted[0], "abuse", at(11));
    ok(s.insert_report(r.clone()).await, "insert_report");

    let texts = all_texts(s, TextTable::Messages, 2).await;
    let mut expected: Vec<&Message> = posted.iter().filter(|m| m.id != posted[3].id).collect();
    expected.sort_by_key(|m| m.id.to_string());
    assert_eq!(
        texts.iter().map(|t| t.row.as_str()).collect::<Vec<_>>(),
        expected
            .iter()
            .map(|m| m.id.to_string())
            .collect::<Vec<_>>(),
        "every message with content, in id order, deleted and system ones left out"
    );
    for (t, m) in texts.iter().zip(&expected) {
        assert_eq!(
            (t.chat_id, &t.author, t.message_id),
            (m.chat_id, &m.sender_id, m.id)
        );
        assert!(!t.text.is_empty());
    }
    let last = some(texts.last(), "a last text").row.clone();
    assert!(
        ok(
            s.stored_texts(TextTable::Messages, Some(&last), 10).await,
            "stored_texts"
        )
        .is_empty(),
        "nothing after the last row"
    );

    let reports = all_texts(s, TextTable::Reports, 10).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].row, r.id.to_string());
    assert_eq!(
        (
            reports[0].chat_id,
            &reports[0].author,
            reports[0].message_id
        ),
        (chat.id, &alice, posted[0].id),
        "a report's text is the reported user's, in the reported message"
    );
}

/// `replace_texts` replaces a text only where the row still holds `old`,
/// and changes nothing else about the message: no new `updated_seq`, no
/// edit time.
pub async fn replace_texts_only_where_unchanged(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let a = post(s, text(chat.id, &alice, "a-1", "first", at(1))).await;
    let b = post(s, text(chat.id, &bob, "b-1", "second", at(2))).await;
    let r = report(&bob, &a, "abuse", at(3));
    ok(s.insert_report(r.clone()).await, "insert_report");
    let texts = all_texts(s, TextTable::Messages, 10).await;
    let stored_a = some(texts.iter().find(|t| t.message_id == a.id), "a's text");
    let stored_b = some(texts.iter().find(|t| t.message_id == b.id), "b's text");
    let stored_r = some(
        all_texts(s, TextTable::Reports, 10).await.pop(),
        "the report's text",
    );
    let before_a = some(ok(s.get_message(a.id).await, "get_message"), "a");
    let replaced = ok(
        s.replace_texts(vec![
            TextReplacement {
                table: TextTable::Messages,
                row: stored_a.row.clone(),
                old: stored_a.text.clone(),
                new: "replaced a".into(),
            },
            TextReplacement {
                table: TextTable::Messages,
                row: stored_b.row.clone(),
                old: "not what it holds".into(),
                new: "replaced b".into(),
            },
            TextReplacement {
                table: TextTable::Reports,
                row: stored_r.row.clone(),
                old: stored_r.text.clone(),
                new: "replaced snapshot".into(),
            },
            TextReplacement {
                table: TextTable::Messages,
                row: MessageId::new().to_string(),
                old: "x".into(),
                new: "y".into(),
            },
        ])
        .await,
        "replace_texts",
    );
    assert_eq!(replaced, 2, "only the rows that still held `old`");
    let after_a = some(ok(s.get_message(a.id).await, "get_message"), "a");
    assert_eq!(after_a.content.as_deref(), Some("replaced a"));
    assert_eq!(
        (after_a.seq, after_a.updated_seq, after_a.edited_at),
        (before_a.seq, before_a.updated_seq, before_a.edited_at),
        "a replacement is not an edit"
    );
    let after_b = some(ok(s.get_message(b.id).await, "get_message"), "b");
    assert_eq!(after_b.content.as_deref(), Some("second"));
    let report = some(ok(s.get_report(r.id).await, "get_report"), "the report");
    assert_eq!(report.content.as_deref(), Some("replaced snapshot"));
    let chat_after = some(ok(s.get_chat(chat.id).await, "get_chat"), "the chat");
    assert_eq!(chat_after.last_seq, 2, "no change of the log");
}

/// Meta values round-trip and are overwritten.
pub async fn meta_values_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    assert_eq!(ok(s.get_meta("suite.key").await, "get_meta"), None);
    ok(s.set_meta("suite.key", "one").await, "set_meta");
    ok(s.set_meta("suite.other", "").await, "set_meta");
    assert_eq!(
        ok(s.get_meta("suite.key").await, "get_meta").as_deref(),
        Some("one")
    );
    ok(s.set_meta("suite.key", "two").await, "set_meta");
    assert_eq!(
        ok(s.get_meta("suite.key").await, "get_meta").as_deref(),
        Some("two")
    );
    assert_eq!(
        ok(s.get_meta("suite.other").await, "get_meta").as_deref(),
        Some("")
    );
}
