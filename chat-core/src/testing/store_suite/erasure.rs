//! Cases of what erasing a user reads and writes: their messages,
//! reactions and uploads found, reports put on legal hold, their rows
//! removed, and a direct chat one side left freed for a new one.

use std::sync::Arc;

use super::*;
use crate::{
    mls::MAX_KEY_PACKAGES_PER_DEVICE,
    model::DeviceId,
    store::{CheckinAnswer, ErasedRows, HeldReports, HeldSnapshot},
};

/// `messages_by_sender` pages through a user's standing messages in
/// `client_msg_id` order, across chats, leaving out tombstones, system
/// entries and others' messages; `reactions_by_user` and
/// `media_by_uploader` find theirs.
pub async fn erasure_finds_a_users_messages_reactions_and_uploads(store: Arc<dyn Store>) {
    let s = &*store;
    let (ann, bob) = (user("ann"), user("bob"));
    let g = group(s, &[&ann, &bob], at(0)).await;
    let d = direct(s, &ann, &bob, at(0)).await;
    let mut mine = Vec::new();
    for (i, chat) in [g.id, d.id, g.id, d.id, g.id].into_iter().enumerate() {
        let m = post(s, text(chat, &ann, &format!("k{i}"), "hi", at(1))).await;
        mine.push((chat, m.id, format!("k{i}")));
    }
    post(s, text(g.id, &bob, "b0", "yo", at(1))).await;
    let gone = post(s, text(g.id, &ann, "k9", "gone", at(1))).await;
    updated(apply_one(s, delete(g.id, gone.id, at(2))).await, "delete");
    let event = SystemEvent::ParticipantRemoved {
        user_id: bob.clone(),
    };
    post(s, system(g.id, &ann, event, at(2))).await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ok(
            s.messages_by_sender(&ann, after.as_deref(), 2).await,
            "messages_by_sender",
        );
        assert!(page.len() <= 2, "a page holds at most its limit");
        let Some(last) = page.last() else { break };
        after = Some(last.client_msg_id.clone());
        seen.extend(page.into_iter().map(|m| (m.chat_id, m.id, m.client_msg_id)));
    }
    assert_eq!(
        seen, mine,
        "ann's standing messages, in client_msg_id order, nothing else"
    );

    let bobs = post(s, text(g.id, &bob, "b1", "react to me", at(3))).await;
    for emoji in ["x", "y"] {
        updated(
            apply_one(s, react(g.id, bobs.id, &ann, emoji, true, at(3))).await,
            "react",
        );
    }
    updated(
        apply_one(s, react(g.id, bobs.id, &bob, "z", true, at(3))).await,
        "react",
    );
    let mut reacted: Vec<(ChatId, MessageId, String)> =
        ok(s.reactions_by_user(&ann, 10).await, "reactions_by_user")
            .into_iter()
            .map(|r| (r.chat_id, r.message_id, r.emoji))
            .collect();
    reacted.sort();
    assert_eq!(
        reacted,
        [(g.id, bobs.id, "x".into()), (g.id, bobs.id, "y".into())],
        "ann's reactions, not bob's"
    );
    assert_eq!(
        ok(s.reactions_by_user(&ann, 1).await, "reactions_by_user").len(),
        1,
        "at most the limit"
    );

    let mut uploads = Vec::new();
    for i in 0..3 {
        let record = media_record(g.id, &ann, at(4 + i));
        ok(s.insert_media(record.clone()).await, "insert_media");
        uploads.push(record.id);
    }
    ok(
        s.insert_media(media_record(g.id, &bob, at(4))).await,
        "insert_media",
    );
    uploads.sort();
    let first = ok(
        s.media_by_uploader(&ann, None, 2).await,
        "media_by_uploader",
    );
    let rest = ok(
        s.media_by_uploader(&ann, first.last().map(|m| m.id), 2)
            .await,
        "media_by_uploader",
    );
    let found: Vec<MediaId> = first.iter().chain(&rest).map(|m| m.id).collect();
    assert_eq!(found, uploads, "ann's uploads in id order, in pages");
}

/// `hold_reports` moves every report of the user's messages to the
/// pseudonym: open ones keep their snapshot (the one given) on legal
/// hold, closed ones lose it; resolving a held report destroys
/// its snapshot.
pub async fn hold_reports_keeps_open_evidence_until_resolved(store: Arc<dyn Store>) {
    let s = &*store;
    let (ann, bob, carol) = (user("ann"), user("bob"), user("carol"));
    let g = group(s, &[&ann, &bob, &carol], at(0)).await;
    let mut new = text(g.id, &ann, "k1", "evidence", at(1));
    new.media = Some(MediaRef::for_record(&media_record(g.id, &ann, at(1))));
    let m1 = post(s, new).await;
    let m2 = post(s, text(g.id, &ann, "k2", "old evidence", at(1))).await;
    let theirs = post(s, text(g.id, &carol, "c1", "not ann's", at(1))).await;
    let open = ok(
        s.insert_report(report(&bob, &m1, "threat", at(2))).await,
        "insert_report",
    );
    let untouched = ok(
        s.insert_report(report(&carol, &m1, "same", at(3))).await,
        "insert_report",
    );
    let closed = ok(
        s.insert_report(report(&bob, &m2, "old", at(3))).await,
        "insert_report",
    );
    let other = ok(
        s.insert_report(report(&bob, &theirs, "other", at(3))).await,
        "insert_report",
    );
    ok(
        s.resolve_report(resolution(closed.id, at(4))).await,
        "resolve_report",
    );

    let pseudonym = user("erased-01");
    let held = [(open.id, "resealed"), (untouched.id, "resealed too")]
        .map(|(id, content)| HeldSnapshot {
            id,
            chat_id: g.id,
            message_id: m1.id,
            content: Some(content.into()),
        })
        .to_vec();
    assert_eq!(
        ok(s.hold_reports(&ann, &pseudonym, held).await, "hold_reports"),
        HeldReports {
            held: 2,
            destroyed: 1
        }
    );
    let get = |id| async move { some(ok(s.get_report(id).await, "get_report"), "the report") };
    let open = get(open.id).await;
    assert_eq!(open.reported_user_id, pseudonym);
    assert!(open.legal_hold, "an open report is held");
    assert_eq!(open.content.as_deref(), Some("resealed"));
    assert!(open.media.is_some(), "the media reference is kept");
    let untouched = get(untouched.id).await;
    assert!(untouched.legal_hold);
    assert_eq!(
        untouched.content.as_deref(),
        Some("resealed too"),
        "every held report gets its snapshot"
    );
    let closed = get(closed.id).await;
    assert_eq!(closed.reported_user_id, pseudonym);
    assert!(!closed.legal_hold);
    assert_eq!((closed.content, closed.media), (None, None), "destroyed");
    assert_eq!(
        get(other.id).await,
        other,
        "a report of someone else is not touched"
    );
    let by_ann = ReportQuery {
        reported_user: Some(ann.clone()),
        ..ReportQuery::new(10)
    };
    assert!(ok(s.list_reports(by_ann).await, "list_reports").is_empty());

    let resolved = ok(
        s.resolve_report(resolution(open.id, at(5))).await,
        "resolve_report",
    );
    assert_eq!(
        (resolved.content.clone(), resolved.media.clone()),
        (None, None)
    );
    assert_eq!(
        get(open.id).await,
        resolved,
        "the hold ends with the report"
    );
}

fn resolution(id: ReportId, at: Timestamp) -> ReportResolution {
    ReportResolution {
        id,
        status: ReportStatus::Dismissed,
        by: user("admin"),
        note: None,
        at,
    }
}

/// `erase_user_rows` removes the user's rows and leaves others' alone:
/// their messages name the pseudonym and free their `client_msg_id`s,
/// reports they filed name the pseudonym without a reason, and their
/// blocks (not those of others on them), key packages, device keys,
/// reactions, memberships and user record are gone.
pub async fn erase_user_rows_removes_the_users_rows(store: Arc<dyn Store>) {
    let s = &*store;
    let (ann, bob) = (user("ann"), user("bob"));
    let g = group(s, &[&bob, &ann], at(0)).await;
    let pair = direct(s, &ann, &bob, at(0)).await;
    let m = post(s, text(g.id, &ann, "k1", "hi", at(1))).await;
    let b = post(s, text(g.id, &bob, "k1", "yo", at(1))).await;
    updated(
        apply_one(s, react(g.id, b.id, &ann, "x", true, at(2))).await,
        "react",
    );
    updated(apply_one(s, delete(g.id, m.id, at(2))).await, "delete");
    ok(s.set_block(&ann, &bob, true).await, "set_block");
    ok(s.set_block(&bob, &ann, true).await, "set_block");
    ok(s.set_privacy(&ann, Privacy::default()).await, "set_privacy");
    ok(s.set_last_seen(&ann, at(3)).await, "set_last_seen");
    let filed = ok(
        s.insert_report(report(&ann, &b, "rude", at(3))).await,
        "insert_report",
    );
    let device = some(DeviceId::new("phone").ok(), "device id");
    let packages = vec![vec![1u8; 8], vec![2u8; 8]];
    const { assert!(2 <= MAX_KEY_PACKAGES_PER_DEVICE) };
    ok(
        s.publish_key_packages(&ann, &device, packages, Some(vec![3u8; 8]), at(3))
            .await,
        "publish_key_packages",
    );
    ok(
        s.pin_device_key(&ann, &device, vec![9u8; 32]).await,
        "pin_device_key",
    );
    let upload = media_record(g.id, &ann, at(3));
    ok(s.insert_media(upload.clone()).await, "insert_media");
    let answer = CheckinAnswer {
        message_id: b.id,
        chat_id: g.id,
        user_id: ann.clone(),
        option: 1,
        at: at(3),
    };
    ok(s.answer_checkin(answer).await, "answer_checkin");

    let pseudonym = user("erased-02");
    let rows = ok(s.erase_user_rows(&ann, &pseudonym).await, "erase_user_rows");
    assert_eq!(
        rows,
        ErasedRows {
            messages: 1,
            reports_filed: 1,
            blocks: 1,
            key_packages: 3,
            device_keys: 1,
            reactions: 1,
            memberships: 2,
            checkin_answers: 1,
            user: true,
        }
    );
    let m = get_message(s, m.id).await;
    assert_eq!(
        (m.sender_id.clone(), m.client_msg_id.clone()),
        (pseudonym.clone(), None)
    );
    assert!(m.deleted);
    assert_eq!(
        ok(s.find_by_client_id(&ann, "k1").await, "find_by_client_id"),
        None,
        "ann's client_msg_id is free for a new ann"
    );
    assert_eq!(get_message(s, b.id).await.sender_id, bob, "bob's stays his");
    assert!(
        get_message(s, b.id).await.reactions.is_empty(),
        "ann's reaction is gone"
    );
    let filed = some(ok(s.get_report(filed.id).await, "get_report"), "report");
    assert_eq!(
        (filed.reporter_id, filed.reason.as_str()),
        (pseudonym.clone(), "")
    );
    assert!(ok(s.blocked_by_user(&ann).await, "blocked_by_user").is_empty());
    assert_eq!(
        ok(s.blocked_by_user(&bob).await, "blocked_by_user"),
        vec![ann.clone()],
        "bob's block of ann is bob's, and stays"
    );
    assert_eq!(ok(s.get_user(&ann).await, "get_user"), None);
    assert!(ok(s.checkin_answers(b.id).await, "checkin_answers").is_empty());
    assert!(
        ok(
            s.claim_key_packages(std::slice::from_ref(&ann)).await,
            "claim"
        )
        .is_empty()
    );
    assert_eq!(
        ok(s.device_keys(&[(ann.clone(), device)]).await, "device_keys"),
        vec![None]
    );
    assert!(get_chat(s, g.id).await.participant(&ann).is_none());
    assert_eq!(
        ok(s.find_direct_chat(&ann, &bob).await, "find_direct_chat"),
        None,
        "the pair's direct chat is free for a new ann"
    );
    assert_eq!(
        get_chat(s, pair.id).await.participants.len(),
        1,
        "bob keeps it"
    );
    assert!(list_chat_ids(s, &ann, all_chats()).await.is_empty());
    let upload = some(ok(s.get_media(upload.id).await, "get_media"), "media");
    assert_eq!(
        upload.uploader_id, pseudonym,
        "held uploads name the pseudonym"
    );
    assert_eq!(
        ok(s.erase_user_rows(&ann, &pseudonym).await, "again"),
        ErasedRows::default(),
        "nothing is left"
    );
}

/// A direct chat one side left (only erasure removes a side of one) is
/// no longer the pair's: the pair can open a new one.
pub async fn leaving_a_direct_chat_frees_the_pair(store: Arc<dyn Store>) {
    let s = &*store;
    let (ann, bob) = (user("ann"), user("bob"));
    let old = direct(s, &ann, &bob, at(0)).await;
    membership(
        apply_one(s, remove(old.id, &ann, &ann, at(1))).await,
        "remove",
    );
    assert_eq!(
        ok(s.find_direct_chat(&ann, &bob).await, "find_direct_chat"),
        None
    );
    let new = direct(s, &bob, &ann, at(2)).await;
    assert_ne!(new.id, old.id);
    assert_eq!(
        ok(s.find_direct_chat(&ann, &bob).await, "find_direct_chat").map(|c| c.id),
        Some(new.id)
    );
    let kept = get_chat(s, old.id).await;
    assert_eq!(kept.participants.len(), 1, "bob keeps the old one");
}
