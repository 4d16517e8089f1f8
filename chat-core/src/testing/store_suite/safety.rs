//! Cases of blocks, users (privacy and settings), reports, media
//! records and participant settings.

use std::sync::Arc;

use super::*;

// --- blocks ------------------------------------------------------------

/// `set_block` returns whether anything changed: blocking twice or
/// lifting a block that does not exist changes nothing.
pub async fn set_block_reports_changes(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let steps = [
        (&alice, &bob, true, true, "blocking"),
        (&alice, &bob, true, false, "blocking again"),
        (
            &bob,
            &alice,
            false,
            false,
            "lifting a block that is the other way round",
        ),
        (&alice, &bob, false, true, "lifting the block"),
        (&alice, &bob, false, false, "lifting it again"),
        (&alice, &bob, true, true, "blocking once more"),
    ];
    for (blocker, blocked, on, changed, what) in steps {
        assert_eq!(
            ok(s.set_block(blocker, blocked, on).await, what),
            changed,
            "{what}: set_block({blocker}, {blocked}, {on}) must return {changed}"
        );
    }
    assert_eq!(
        ok(s.blocked_by_user(&alice).await, "blocked_by_user"),
        vec![bob.clone()]
    );
    assert!(ok(s.blocked_by_user(&bob).await, "blocked_by_user").is_empty());
}

/// `blocked_by_user` lists in blocking order (a block lifted and set
/// again counts from the new time); `blockers_of` lists who blocks a
/// user.
pub async fn blocked_by_user_keeps_blocking_order(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol, dave, zed] = ["alice", "bob", "carol", "dave", "zed"].map(user);
    for blocked in [&zed, &bob, &dave, &carol] {
        assert!(ok(s.set_block(&alice, blocked, true).await, "set_block"));
    }
    assert!(ok(s.set_block(&carol, &bob, true).await, "set_block"));
    assert_eq!(
        ok(s.blocked_by_user(&alice).await, "blocked_by_user"),
        vec![zed.clone(), bob.clone(), dave.clone(), carol.clone()],
        "blocked_by_user must list users in the order they were blocked"
    );
    assert!(ok(s.set_block(&alice, &bob, false).await, "unblock"));
    assert!(ok(s.set_block(&alice, &bob, true).await, "block again"));
    assert_eq!(
        ok(s.blocked_by_user(&alice).await, "blocked_by_user"),
        vec![zed.clone(), dave.clone(), carol.clone(), bob.clone()],
        "a block set again comes last"
    );
    let mut blockers = ok(s.blockers_of(&bob).await, "blockers_of");
    blockers.sort();
    assert_eq!(blockers, vec![alice.clone(), carol.clone()]);
    assert_eq!(
        ok(s.blockers_of(&zed).await, "blockers_of"),
        vec![alice.clone()]
    );
    assert!(ok(s.blockers_of(&alice).await, "blockers_of").is_empty());
    assert!(ok(s.blocked_by_user(&bob).await, "blocked_by_user").is_empty());
}

/// `is_blocked_either` sees a block in either direction, and stops
/// seeing it once lifted.
pub async fn is_blocked_either_checks_both_directions(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let either = |a: &UserId, b: &UserId| {
        let (a, b) = (a.clone(), b.clone());
        async move { ok(s.is_blocked_either(&a, &b).await, "is_blocked_either") }
    };
    assert!(!either(&alice, &bob).await, "nobody blocks anybody yet");
    ok(s.set_block(&alice, &bob, true).await, "set_block");
    assert!(either(&alice, &bob).await, "alice blocks bob");
    assert!(
        either(&bob, &alice).await,
        "the block counts in both directions"
    );
    assert!(!either(&alice, &carol).await && !either(&carol, &bob).await);
    ok(s.set_block(&bob, &alice, true).await, "set_block");
    ok(s.set_block(&alice, &bob, false).await, "lift");
    assert!(either(&alice, &bob).await, "bob still blocks alice");
    ok(s.set_block(&bob, &alice, false).await, "lift");
    assert!(!either(&alice, &bob).await && !either(&bob, &alice).await);
}

// --- users ---------------------------------------------------------------

/// `get_user` is `None` until something is stored about the user; each
/// setter alone creates the record with defaults for the rest.
pub async fn get_user_is_none_until_something_is_stored(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(user);
    assert_eq!(ok(s.get_user(&alice).await, "get_user"), None);
    ok(s.set_last_seen(&alice, at(1)).await, "set_last_seen");
    assert_eq!(
        ok(s.get_user(&alice).await, "get_user"),
        Some(UserRecord {
            last_seen: Some(at(1)),
            ..UserRecord::new(alice.clone())
        })
    );
    let private = Privacy {
        read_receipts: false,
        typing: true,
        presence: false,
        mood_sharing: true,
    };
    ok(s.set_privacy(&bob, private).await, "set_privacy");
    assert_eq!(
        ok(s.get_user(&bob).await, "get_user"),
        Some(UserRecord {
            privacy: private,
            ..UserRecord::new(bob.clone())
        })
    );
    ok(
        s.set_suspension(&carol, Some(at(100))).await,
        "set_suspension",
    );
    assert_eq!(
        ok(s.get_user(&carol).await, "get_user"),
        Some(UserRecord {
            suspended_until: Some(at(100)),
            ..UserRecord::new(carol.clone())
        })
    );
    assert_eq!(
        ok(s.get_user(&dave).await, "get_user"),
        None,
        "storing about others stores nothing about dave"
    );
}

/// `set_last_seen`, `set_privacy` and `set_suspension` (`Some` and
/// `None`) each change their own field only.
pub async fn user_settings_do_not_clobber_each_other(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let private = Privacy {
        read_receipts: false,
        typing: false,
        presence: true,
        mood_sharing: true,
    };
    let record = |last_seen, privacy, suspended_until| UserRecord {
        user_id: alice.clone(),
        last_seen,
        privacy,
        suspended_until,
    };
    let alice_ref = &alice;
    let get = || async move { ok(s.get_user(alice_ref).await, "get_user") };

    ok(s.set_privacy(&alice, private).await, "set_privacy");
    ok(s.set_last_seen(&alice, at(5)).await, "set_last_seen");
    assert_eq!(get().await, Some(record(Some(at(5)), private, None)));
    ok(
        s.set_suspension(&alice, Some(Timestamp::FOREVER)).await,
        "suspend",
    );
    assert_eq!(
        get().await,
        Some(record(Some(at(5)), private, Some(Timestamp::FOREVER)))
    );
    ok(s.set_last_seen(&alice, at(9)).await, "set_last_seen");
    assert_eq!(
        get().await,
        Some(record(Some(at(9)), private, Some(Timestamp::FOREVER))),
        "set_last_seen must keep privacy and suspension"
    );
    ok(
        s.set_privacy(&alice, Privacy::default()).await,
        "set_privacy",
    );
    assert_eq!(
        get().await,
        Some(record(
            Some(at(9)),
            Privacy::default(),
            Some(Timestamp::FOREVER)
        )),
        "set_privacy must keep last_seen and suspension"
    );
    ok(s.set_suspension(&alice, None).await, "lift suspension");
    assert_eq!(
        get().await,
        Some(record(Some(at(9)), Privacy::default(), None)),
        "set_suspension(None) must lift the suspension and keep the rest"
    );
}

// --- reports -------------------------------------------------------------

/// `insert_report` stores a report as given; `get_report` returns it,
/// and `None` for an unknown id.
pub async fn insert_and_get_report(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let m = post(s, text(chat.id, &bob, "b-1", "spam", at(1))).await;
    let r = report(&alice, &m, "spam", at(2));
    assert_eq!(ok(s.insert_report(r.clone()).await, "insert_report"), r);
    assert_eq!(ok(s.get_report(r.id).await, "get_report"), Some(r.clone()));
    assert_eq!(ok(s.get_report(ReportId::new()).await, "get_report"), None);
    // The evidence survives the message's deletion.
    updated(apply_one(s, delete(chat.id, m.id, at(3))).await, "delete");
    assert_eq!(ok(s.get_report(r.id).await, "get_report"), Some(r));
}

/// A second open report by the same reporter of the same message returns
/// the first and stores nothing; other reporters, and reports after the
/// first was closed, are new reports.
pub async fn duplicate_open_report_returns_existing(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
    let m = post(s, text(chat.id, &bob, "b-1", "spam", at(1))).await;
    let first = report(&alice, &m, "spam", at(2));
    ok(s.insert_report(first.clone()).await, "insert_report");
    let second = report(&alice, &m, "really spam", at(3));
    assert_eq!(
        ok(s.insert_report(second.clone()).await, "insert_report again"),
        first,
        "a second open report of the same message must return the first"
    );
    assert_eq!(ok(s.get_report(second.id).await, "get_report"), None);
    let other = report(&carol, &m, "spam", at(4));
    assert_eq!(
        ok(s.insert_report(other.clone()).await, "insert_report"),
        other
    );
    assert_eq!(
        ok(s.list_reports(ReportQuery::new(100)).await, "list_reports").len(),
        2
    );

    ok(
        s.resolve_report(ReportResolution {
            id: first.id,
            status: ReportStatus::Dismissed,
            by: user("admin"),
            note: None,
            at: at(5),
        })
        .await,
        "resolve_report",
    );
    let third = report(&alice, &m, "it is back", at(6));
    assert_eq!(
        ok(
            s.insert_report(third.clone()).await,
            "insert_report after closing"
        ),
        third,
        "once the first report is closed, a new one is stored"
    );
    assert_eq!(
        ok(s.list_reports(ReportQuery::new(100)).await, "list_reports").len(),
        3
    );
}

/// `list_reports` filters by status (all with `None`), oldest first, at
/// most `limit`.
pub async fn list_reports_filters_by_status_oldest_first(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(user);
    let chat = group(s, &[&alice, &bob, &carol, &dave], at(0)).await;
    let m = post(s, text(chat.id, &bob, "b-1", "spam", at(1))).await;
    let n = post(s, text(chat.id, &carol, "c-1", "rude", at(2))).await;
    // Filed out of order on purpose: listing must not be insertion order.
    let r3 = report(&dave, &n, "rude", at(30));
    let r1 = report(&alice, &m, "spam", at(10));
    let r4 = report(&alice, &n, "rude", at(40));
    let r2 = report(&carol, &m, "spam", at(20));
    for r in [&r3, &r1, &r4, &r2] {
        ok(s.insert_report(r.clone()).await, "insert_report");
    }
    let resolved = ok(
        s.resolve_report(ReportResolution {
            id: r2.id,
            status: ReportStatus::Resolved,
            by: user("admin"),
            note: None,
            at: at(50),
        })
        .await,
        "resolve_report",
    );
    let dismissed = ok(
        s.resolve_report(ReportResolution {
            id: r4.id,
            status: ReportStatus::Dismissed,
            by: user("admin"),
            note: None,
            at: at(51),
        })
        .await,
        "resolve_report",
    );
    let list = |status: Option<ReportStatus>, limit: usize| async move {
        ok(
            s.list_reports(ReportQuery::new(limit).status(status)).await,
            "list_reports",
        )
    };
    assert_eq!(
        list(None, 100).await,
        vec![r1.clone(), resolved.clone(), r3.clone(), dismissed.clone()],
        "list_reports(None) must list every report, oldest first"
    );
    assert_eq!(
        list(None, 2).await,
        vec![r1.clone(), resolved.clone()],
        "limit"
    );
    assert_eq!(
        list(Some(ReportStatus::Open), 100).await,
        vec![r1.clone(), r3.clone()],
        "list_reports(Open) must list open reports, oldest first"
    );
    assert_eq!(list(Some(ReportStatus::Open), 1).await, vec![r1.clone()]);
    assert_eq!(
        list(Some(ReportStatus::Resolved), 100).await,
        vec![resolved]
    );
    assert_eq!(
        list(Some(ReportStatus::Dismissed), 100).await,
        vec![dismissed]
    );
    assert!(list(None, 0).await.is_empty());

    // The other filters, alone and together, and paging.
    let query = |f: &dyn Fn(&mut ReportQuery)| {
        let mut q = ReportQuery::new(100);
        f(&mut q);
        async move { ok(s.list_reports(q).await, "list_reports") }
    };
    let ids = |reports: Vec<Report>| reports.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(query(&|q| q.reporter = Some(alice.clone())).await),
        vec![r1.id, r4.id],
        "by reporter"
    );
    assert_eq!(
        ids(query(&|q| q.reported_user = Some(carol.clone())).await),
        vec![r3.id, r4.id],
        "by reported user"
    );
    assert_eq!(
        ids(query(&|q| {
            q.reporter = Some(alice.clone());
            q.reported_user = Some(carol.clone());
        })
        .await),
        vec![r4.id],
        "both"
    );
    assert_eq!(
        ids(query(&|q| q.chat = Some(chat.id)).await).len(),
        4,
        "by chat"
    );
    assert!(
        query(&|q| q.chat = Some(ChatId::new())).await.is_empty(),
        "another chat"
    );
    assert_eq!(
        ids(query(&|q| q.after = Some(r2.id)).await),
        vec![r3.id, r4.id],
        "after a cursor"
    );
    assert_eq!(
        ids(query(&|q| {
            q.after = Some(r1.id);
            q.status = Some(ReportStatus::Open);
        })
        .await),
        vec![r3.id],
        "cursor and status"
    );
}

/// `resolve_report` sets status, `resolved_by`, note and `resolved_at`
/// once; resolving a closed report is a `Conflict`, an unknown one
/// `NotFound`.
pub async fn resolve_report_closes_it_once(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, admin) = (user("alice"), user("bob"), user("admin"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let m = post(s, text(chat.id, &bob, "b-1", "spam", at(1))).await;
    let r = report(&alice, &m, "spam", at(2));
    ok(s.insert_report(r.clone()).await, "insert_report");
    let resolution = ReportResolution {
        id: r.id,
        status: ReportStatus::Resolved,
        by: admin.clone(),
        note: Some("warned the sender".to_owned()),
        at: at(3),
    };
    let closed = ok(s.resolve_report(resolution.clone()).await, "resolve_report");
    let expected = Report {
        status: ReportStatus::Resolved,
        resolved_at: Some(at(3)),
        resolved_by: Some(admin.clone()),
        resolution_note: Some("warned the sender".to_owned()),
        ..r.clone()
    };
    assert_eq!(
        closed, expected,
        "resolve_report must set status, by, note and at"
    );
    assert_eq!(
        ok(s.get_report(r.id).await, "get_report"),
        Some(expected.clone())
    );
    conflict(
        s.resolve_report(ReportResolution {
            status: ReportStatus::Dismissed,
            at: at(4),
            ..resolution.clone()
        })
        .await,
        "resolving a closed report",
    );
    assert_eq!(
        ok(s.get_report(r.id).await, "get_report"),
        Some(expected),
        "a refused resolution changes nothing"
    );
    not_found(
        s.resolve_report(ReportResolution {
            id: ReportId::new(),
            ..resolution
        })
        .await,
        "resolving an unknown report",
    );

    let other = report(&bob, &m, "mine", at(5));
    ok(s.insert_report(other.clone()).await, "insert_report");
    let dismissed = ok(
        s.resolve_report(ReportResolution {
            id: other.id,
            status: ReportStatus::Dismissed,
            by: admin.clone(),
            note: None,
            at: at(6),
        })
        .await,
        "dismissing",
    );
    assert_eq!(
        dismissed,
        Report {
            status: ReportStatus::Dismissed,
            resolved_at: Some(at(6)),
            resolved_by: Some(admin),
            resolution_note: None,
            ..other
        }
    );
}

// --- media ---------------------------------------------------------------

/// `insert_media` stores a record that `get_media` returns as given, every
/// field of every kind; an unknown id is `None`.
pub async fn media_records_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    let image = media_record(chat.id, &alice, at(1));
    let voice = MediaRecord {
        id: MediaId::new(),
        kind: MediaKind::Voice,
        mime: "audio/ogg".to_owned(),
        size: 12_345,
        width: None,
        height: None,
        duration_ms: Some(4_200),
        has_thumbnail: false,
        ..media_record(chat.id, &alice, at(2))
    };
    let file = MediaRecord {
        id: MediaId::new(),
        kind: MediaKind::File,
        mime: "application/pdf".to_owned(),
        size: 3_000_000_000,
        width: None,
        height: None,
        name: Some("Rapport annuel – été 2026.pdf".to_owned()),
        has_thumbnail: false,
        sealed: true,
        ..media_record(chat.id, &alice, at(3))
    };
    for record in [&image, &voice, &file] {
        ok(s.insert_media(record.clone()).await, "insert_media");
    }
    for record in [&image, &voice, &file] {
        assert_eq!(
            ok(s.get_media(record.id).await, "get_media"),
            Some(record.clone()),
            "get_media must return the {:?} record as inserted",
            record.kind
        );
    }
    assert_eq!(ok(s.get_media(MediaId::new()).await, "get_media"), None);
}

/// `attach_media` is a compare-and-set: the first attach wins, a second
/// (to another message or the same one) returns `false` and changes
/// nothing, and an unknown upload is `false`.
pub async fn media_attaches_once(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    let upload = media_record(chat.id, &alice, at(1));
    ok(s.insert_media(upload.clone()).await, "insert_media");
    let (first, second) = (MessageId::new(), MessageId::new());
    assert!(
        ok(s.attach_media(upload.id, first).await, "attach_media"),
        "attaching an unattached upload must return true"
    );
    let attached = MediaRecord {
        message_id: Some(first),
        ..upload.clone()
    };
    assert_eq!(
        ok(s.get_media(upload.id).await, "get_media"),
        Some(attached.clone()),
        "get_media must show the message it is attached to"
    );
    for (message, what) in [(second, "another message"), (first, "the same message")] {
        assert!(
            !ok(s.attach_media(upload.id, message).await, "attach_media"),
            "attaching an attached upload to {what} must return false"
        );
        assert_eq!(
            ok(s.get_media(upload.id).await, "get_media"),
            Some(attached.clone()),
            "attaching to {what} must leave the upload attached to the first"
        );
    }
    assert!(
        !ok(s.attach_media(MediaId::new(), second).await, "attach_media"),
        "attaching an unknown upload must return false"
    );
}

/// `detach_media` undoes an attach only when given the message it is
/// attached to; the upload can then be attached again.
pub async fn media_detaches_only_from_its_message(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    let upload = media_record(chat.id, &alice, at(1));
    ok(s.insert_media(upload.clone()).await, "insert_media");
    let (mine, other) = (MessageId::new(), MessageId::new());
    ok(
        s.detach_media(upload.id, mine).await,
        "detaching an unattached upload",
    );
    assert_eq!(
        ok(s.get_media(upload.id).await, "get_media"),
        Some(upload.clone()),
        "detaching an unattached upload changes nothing"
    );
    assert!(ok(s.attach_media(upload.id, mine).await, "attach_media"));
    ok(
        s.detach_media(upload.id, other).await,
        "detaching by the wrong message",
    );
    assert_eq!(
        some(ok(s.get_media(upload.id).await, "get_media"), "the upload").message_id,
        Some(mine),
        "detaching by another message must leave the upload attached"
    );
    ok(s.detach_media(upload.id, mine).await, "detach_media");
    assert_eq!(
        ok(s.get_media(upload.id).await, "get_media"),
        Some(upload.clone()),
        "detaching by its message must clear message_id"
    );
    assert!(
        ok(s.attach_media(upload.id, other).await, "attach_media"),
        "a detached upload can be attached again"
    );
    assert_eq!(
        some(ok(s.get_media(upload.id).await, "get_media"), "the upload").message_id,
        Some(other)
    );
    ok(
        s.detach_media(MediaId::new(), mine).await,
        "detaching an unknown upload",
    );
}

/// `delete_media` removes the record and returns it as it was (attached
/// or not); deleting again, or an unknown id, returns `None`.
pub async fn delete_media_returns_the_record(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    let loose = media_record(chat.id, &alice, at(1));
    let kept = media_record(chat.id, &alice, at(2));
    let sent = media_record(chat.id, &alice, at(3));
    for record in [&loose, &kept, &sent] {
        ok(s.insert_media(record.clone()).await, "insert_media");
    }
    let message = MessageId::new();
    assert!(ok(s.attach_media(sent.id, message).await, "attach_media"));
    let sent = MediaRecord {
        message_id: Some(message),
        ..sent
    };
    for record in [&loose, &sent] {
        assert_eq!(
            ok(s.delete_media(record.id).await, "delete_media"),
            Some(record.clone()),
            "delete_media must return the record it removed"
        );
        assert_eq!(
            ok(s.get_media(record.id).await, "get_media"),
            None,
            "a deleted record is gone"
        );
        assert_eq!(
            ok(s.delete_media(record.id).await, "delete_media"),
            None,
            "deleting a record twice returns None the second time"
        );
    }
    assert_eq!(
        ok(s.delete_media(MediaId::new()).await, "delete_media"),
        None,
        "deleting an unknown upload returns None"
    );
    assert_eq!(
        ok(s.get_media(kept.id).await, "get_media"),
        Some(kept),
        "deleting one record leaves the others"
    );
}

/// `unattached_media` lists uploads attached to nothing and created
/// strictly before `before`, oldest first, at most `limit`.
pub async fn unattached_media_lists_abandoned_uploads_oldest_first(store: Arc<dyn Store>) {
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    // Inserted out of order, so that order by insertion is not enough.
    let records: Vec<MediaRecord> = [4, 1, 5, 3, 2]
        .into_iter()
        .map(|secs| media_record(chat.id, &alice, at(secs)))
        .collect();
    for record in &records {
        ok(s.insert_media(record.clone()).await, "insert_media");
    }
    let by_secs = |secs: i64| {
        some(
            records.iter().find(|r| r.created_at == at(secs)),
            "a record of the case",
        )
    };
    let message = MessageId::new();
    assert!(ok(
        s.attach_media(by_secs(2).id, message).await,
        "attach_media"
    ));
    let listed = |before: i64, limit: usize| async move {
        ok(
            s.unattached_media(at(before), limit).await,
            "unattached_media",
        )
        .into_iter()
        .map(|r| r.created_at)
        .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(5, 10).await,
        [at(1), at(3), at(4)],
        "unattached uploads created before the cutoff, oldest first; \
         not the attached one, not the one created at the cutoff"
    );
    assert_eq!(listed(6, 2).await, [at(1), at(3)], "at most `limit`");
    assert_eq!(listed(6, 0).await, [], "a limit of 0 lists nothing");
    assert_eq!(listed(1, 10).await, [], "nothing is older than the oldest");
    let oldest = some(
        ok(s.unattached_media(at(6), 1).await, "unattached_media")
            .into_iter()
            .next(),
        "the oldest unattached upload",
    );
    assert_eq!(&oldest, by_secs(1), "listed records are whole");
    assert!(ok(
        s.attach_media(by_secs(3).id, MessageId::new()).await,
        "attach_media"
    ));
    assert_eq!(
        listed(6, 10).await,
        [at(1), at(4), at(5)],
        "an upload is no longer listed once attached"
    );
    ok(s.detach_media(by_secs(2).id, message).await, "detach_media");
    assert_eq!(
        listed(6, 10).await,
        [at(1), at(2), at(4), at(5)],
        "a detached upload is listed again"
    );
    ok(s.delete_media(by_secs(1).id).await, "delete_media");
    assert_eq!(
        listed(6, 10).await,
        [at(2), at(4), at(5)],
        "a deleted upload is not listed"
    );
}

/// A participant's own settings are stored, replaced whole, survive
/// watermark moves and new messages, and are refused for outsiders.
pub async fn participant_settings_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let settings_of = |c: &Chat, u: &UserId| c.participant(u).map(|p| p.settings);
    let fresh = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
    assert_eq!(
        settings_of(&fresh, &alice),
        Some(ParticipantSettings::default())
    );
    let muted = ParticipantSettings {
        muted_until: Some(at(99)),
        hidden_seq: Some(0),
    };
    ok(
        s.set_participant_settings(chat.id, &alice, muted).await,
        "set_participant_settings",
    );
    let mark = Change::Mark {
        chat_id: chat.id,
        user_id: alice.clone(),
        delivered_up_to: 0,
        read_up_to: 0,
        at: at(3),
    };
    let _ = s.apply(vec![mark]).await;
    let after = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
    assert_eq!(
        settings_of(&after, &alice),
        Some(muted),
        "settings are stored"
    );
    assert_eq!(
        settings_of(&after, &bob),
        Some(ParticipantSettings::default()),
        "per participant"
    );
    assert_eq!(after.last_seq, fresh.last_seq, "settings take no seq");
    ok(
        s.set_participant_settings(chat.id, &alice, ParticipantSettings::default())
            .await,
        "set_participant_settings",
    );
    let cleared = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
    assert_eq!(
        settings_of(&cleared, &alice),
        Some(ParticipantSettings::default()),
        "replaced whole"
    );
    not_found(
        s.set_participant_settings(chat.id, &eve, muted).await,
        "settings of a non-participant",
    );
    not_found(
        s.set_participant_settings(ChatId::new(), &alice, muted)
            .await,
        "settings in a missing chat",
    );
}

/// Inserting a media record whose id exists is a `Conflict` and keeps
/// the first record.
pub async fn duplicate_media_id_conflicts(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let first = media_record(chat.id, &alice, at(1));
    ok(s.insert_media(first.clone()).await, "insert_media");
    let clash = MediaRecord {
        uploader_id: bob,
        size: 1,
        ..first.clone()
    };
    conflict(s.insert_media(clash).await, "inserting a media id twice");
    assert_eq!(ok(s.get_media(first.id).await, "get_media"), Some(first));
}

/// A moderator's mute (`set_silenced`) is stored per participant, apart
/// from their own notification settings, takes no seq, is lifted with
/// `None`, and is `false` for someone who is not a participant. A member
/// removed and added again comes back unmuted.
pub async fn participants_are_silenced_apart_from_their_settings(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let fresh = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
    let silenced = |c: &Chat, u: &UserId| c.participant(u).and_then(|p| p.silenced_until);
    assert_eq!(silenced(&fresh, &bob), None, "nobody starts muted");
    assert!(ok(
        s.set_silenced(chat.id, &bob, Some(at(600))).await,
        "set_silenced"
    ));
    let after = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
    assert_eq!(silenced(&after, &bob), Some(at(600)));
    assert_eq!(silenced(&after, &alice), None, "per participant");
    assert_eq!(
        after.participant(&bob).map(|p| p.settings),
        Some(ParticipantSettings::default()),
        "not the participant's own mute"
    );
    assert_eq!(after.last_seq, fresh.last_seq, "a mute takes no seq");
    assert!(
        !ok(
            s.set_silenced(chat.id, &eve, Some(at(600))).await,
            "set_silenced"
        ),
        "not a participant"
    );
    assert!(
        !ok(
            s.set_silenced(ChatId::new(), &bob, None).await,
            "set_silenced"
        ),
        "no such chat"
    );
    assert!(ok(
        s.set_silenced(chat.id, &bob, None).await,
        "set_silenced"
    ));
    let lifted = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
    assert_eq!(silenced(&lifted, &bob), None, "lifted");

    assert!(ok(
        s.set_silenced(chat.id, &bob, Some(at(900))).await,
        "set_silenced"
    ));
    membership(
        apply_one(s, remove(chat.id, &bob, &alice, at(10))).await,
        "removing bob",
    );
    membership(
        apply_one(s, add(chat.id, &bob, Role::Member, &alice, at(11))).await,
        "adding bob again",
    );
    let back = ok(s.get_chat(chat.id).await, "get_chat").expect("chat exists");
    assert_eq!(
        silenced(&back, &bob),
        None,
        "a new membership starts unmuted"
    );
}

/// A report keeps the reported message's type and media (its evidence
/// snapshot), also for a message without text; `list_reports` filters by
/// message.
pub async fn reports_keep_the_type_and_media_of_the_message(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let media_id = MediaId::new();
    let media = MediaRef {
        id: media_id,
        mime: "image/jpeg".to_owned(),
        size: 9_000,
        url: format!("/api/v1/chat/media/{media_id}"),
        thumbnail_url: Some(format!("/api/v1/chat/media/{media_id}?thumbnail=true")),
        duration_ms: None,
        width: Some(640),
        height: Some(480),
        name: None,
    };
    let image = NewMessage {
        kind: MessageType::Image,
        content: None,
        media: Some(media.clone()),
        ..text(chat.id, &bob, "b-img", "", at(1))
    };
    let m = post(s, image).await;
    let other = post(s, text(chat.id, &bob, "b-2", "hello", at(2))).await;
    let r = report(&alice, &m, "abusive picture", at(3));
    assert_eq!(
        (r.kind, r.media.as_ref()),
        (MessageType::Image, Some(&media))
    );
    ok(s.insert_report(r.clone()).await, "insert_report");
    ok(
        s.insert_report(report(&alice, &other, "spam", at(4))).await,
        "insert_report",
    );
    let stored = some(ok(s.get_report(r.id).await, "get_report"), "the report");
    assert_eq!(stored, r, "type and media are kept");
    let mut by_message = ReportQuery::new(10);
    by_message.message = Some(m.id);
    assert_eq!(
        ok(s.list_reports(by_message).await, "list_reports"),
        vec![r],
        "by message"
    );
}
