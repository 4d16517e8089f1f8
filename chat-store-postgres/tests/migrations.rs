//! Rows written before a migration, read after it.

mod common;

use chat_core::{
    ChatId, MediaId, MediaKind, MessageId, Privacy, ReportId, ReportStatus, Store, Timestamp,
    UserId,
    store::{HeldReports, ReportResolution},
};
use chat_store_postgres::{MIGRATOR, sqlx};

use crate::common::{TestDb, small_pool};

/// The last migration before media records had a kind, dimensions, a name,
/// `sealed` and the message they are attached to.
const BEFORE_MEDIA_KINDS: i64 = 20261206000004;

/// The last migration before reports had `legal_hold`.
const BEFORE_LEGAL_HOLD: i64 = 20261206000009;

/// The last migration before users had `mood_sharing`.
const BEFORE_MOOD_SHARING: i64 = 20261206000010;

/// Media rows from before `20261206000005_media` are read with their kind
/// from their mime, unsealed and unattached, and the sweep lists them.
#[tokio::test]
async fn media_rows_from_before_kinds_are_read_by_their_mime() {
    let Some(db) = TestDb::create_empty().await else {
        return;
    };
    let store = db.store(small_pool()).await;
    MIGRATOR
        .run_to(BEFORE_MEDIA_KINDS, store.pool())
        .await
        .expect("migrate to the version before media kinds");
    let chat = ChatId::new();
    let rows = [
        (MediaId::new(), "image/png", 3),
        (MediaId::new(), "audio/ogg", 1),
        (MediaId::new(), "application/pdf", 2),
    ];
    for (id, mime, created_at) in rows {
        sqlx::query(
            "INSERT INTO media (id, chat_id, uploader_id, mime, size, duration_ms, \
               has_thumbnail, created_at) VALUES ($1, $2, 'alice', $3, 10, NULL, FALSE, $4)",
        )
        .bind(id.to_string())
        .bind(chat.to_string())
        .bind(mime)
        .bind(i64::from(created_at))
        .execute(store.pool())
        .await
        .expect("an old media row");
    }
    store.migrate().await.expect("migrate to the latest");

    let mut read = Vec::new();
    for (id, _, _) in rows {
        let m = store
            .get_media(id)
            .await
            .expect("get_media")
            .expect("the row is kept");
        read.push((m.kind, m.sealed, m.message_id, m.width, m.name));
    }
    assert_eq!(
        read,
        [
            (MediaKind::Image, false, None, None, None),
            (MediaKind::Voice, false, None, None, None),
            (MediaKind::File, false, None, None, None),
        ],
        "old rows have their kind from the mime, unsealed, unattached"
    );
    let swept: Vec<MediaId> = store
        .unattached_media(Timestamp::from_millis(10), 10)
        .await
        .expect("unattached_media")
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(swept, [rows[1].0, rows[2].0, rows[0].0], "oldest first");
    store.close().await;
}

/// The database refuses to delete an audit entry or to change anything of
/// it but the ids pseudonymization replaces.
#[tokio::test]
async fn the_audit_log_is_append_only() {
    let Some(db) = TestDb::create_empty().await else {
        return;
    };
    let store = db.store(small_pool()).await;
    store.migrate().await.expect("migrate");
    let (insert, refused, allowed) = chat_core::testing::AUDIT_LOG_SQL;
    let run = |sql: &'static str| sqlx::query(sql).execute(store.pool());
    run(insert).await.expect("append");
    for &sql in refused {
        assert!(run(sql).await.is_err(), "{sql}");
    }
    run(allowed).await.expect("pseudonymization");
}

/// Reports from before `20261206000010_erasure` are not on legal hold:
/// resolving one keeps its snapshot, and an erasure's `hold_reports` puts
/// the open ones on hold.
#[tokio::test]
async fn reports_from_before_legal_hold_are_not_held() {
    let Some(db) = TestDb::create_empty().await else {
        return;
    };
    let store = db.store(small_pool()).await;
    MIGRATOR
        .run_to(BEFORE_LEGAL_HOLD, store.pool())
        .await
        .expect("migrate to the version before legal holds");
    let (closed, open) = (ReportId::new(), ReportId::new());
    for (id, reporter) in [(closed, "bob"), (open, "carol")] {
        sqlx::query(
            "INSERT INTO reports (id, reporter_id, chat_id, message_id, reported_user_id, \
               reason, content, status, created_at, kind) \
             VALUES ($1, $2, $3, $4, 'ann', 'spam', 'evidence', 'open', 1, 'text')",
        )
        .bind(id.to_string())
        .bind(reporter)
        .bind(ChatId::new().to_string())
        .bind(MessageId::new().to_string())
        .execute(store.pool())
        .await
        .expect("an old report row");
    }
    store.migrate().await.expect("migrate to the latest");

    let report = |id| {
        let store = &store;
        async move {
            store
                .get_report(id)
                .await
                .expect("get_report")
                .expect("the row is kept")
        }
    };
    assert!(!report(open).await.legal_hold, "old rows are not held");
    let resolved = store
        .resolve_report(ReportResolution {
            id: closed,
            status: ReportStatus::Dismissed,
            by: UserId::new("admin").expect("user id"),
            note: None,
            at: Timestamp::from_millis(2),
        })
        .await
        .expect("resolve_report");
    assert_eq!(
        resolved.content.as_deref(),
        Some("evidence"),
        "a report not on hold keeps its snapshot when resolved"
    );

    let ann = UserId::new("ann").expect("user id");
    let pseudonym = UserId::new("erased-01").expect("user id");
    let done = store
        .hold_reports(&ann, &pseudonym, Vec::new())
        .await
        .expect("hold_reports");
    assert_eq!(
        done,
        HeldReports {
            held: 1,
            destroyed: 1
        }
    );
    let open = report(open).await;
    assert!(open.legal_hold);
    assert_eq!(
        (open.reported_user_id, open.content.as_deref()),
        (pseudonym, Some("evidence")),
        "held with the snapshot it had"
    );
    assert_eq!(report(closed).await.content, None, "destroyed");
    store.close().await;
}

/// Users from before `20261206000011_checkins` keep their privacy settings
/// and do not share their moods (an opt-in); setting it is kept.
#[tokio::test]
async fn users_from_before_mood_sharing_do_not_share_moods() {
    let Some(db) = TestDb::create_empty().await else {
        return;
    };
    let store = db.store(small_pool()).await;
    MIGRATOR
        .run_to(BEFORE_MOOD_SHARING, store.pool())
        .await
        .expect("migrate to the version before mood sharing");
    sqlx::query(
        "INSERT INTO users (user_id, last_seen, read_receipts, typing, presence) \
         VALUES ('ann', 5, FALSE, TRUE, FALSE)",
    )
    .execute(store.pool())
    .await
    .expect("an old user row");
    store.migrate().await.expect("migrate to the latest");

    let ann = UserId::new("ann").expect("user id");
    let old = Privacy {
        read_receipts: false,
        typing: true,
        presence: false,
        mood_sharing: false,
    };
    let record = store
        .get_user(&ann)
        .await
        .expect("get_user")
        .expect("the row is kept");
    assert_eq!(
        (record.privacy, record.last_seen),
        (old, Some(Timestamp::from_millis(5)))
    );
    let sharing = Privacy {
        mood_sharing: true,
        ..old
    };
    store.set_privacy(&ann, sharing).await.expect("set_privacy");
    let records = store
        .get_users(std::slice::from_ref(&ann))
        .await
        .expect("get_users");
    assert_eq!(
        records
            .into_iter()
            .map(|r| r.map(|r| r.privacy))
            .collect::<Vec<_>>(),
        [Some(sharing)]
    );
    store.close().await;
}
