//! Rows written before a migration, read after it.

mod common;

use chat_core::{ChatId, MediaId, MediaKind, Store, Timestamp};
use chat_store_postgres::{MIGRATOR, sqlx};

use crate::common::{TestDb, small_pool};

/// The last migration before media records had a kind, dimensions, a name,
/// `sealed` and the message they are attached to.
const BEFORE_MEDIA_KINDS: i64 = 20261206000004;

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
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor_id, action, target_type, target_id) \
         VALUES ('01J', 1, 'root', 'suspend_user', 'user', 'bob')",
    )
    .execute(store.pool())
    .await
    .expect("append");
    for refused in [
        "DELETE FROM audit_log",
        "UPDATE audit_log SET note = 'rewritten'",
        "UPDATE audit_log SET action = 'erase_user'",
        "UPDATE audit_log SET at = 2",
    ] {
        let done = sqlx::query(sqlx::AssertSqlSafe(refused))
            .execute(store.pool())
            .await;
        assert!(done.is_err(), "{refused}");
    }
    sqlx::query("UPDATE audit_log SET actor_id = 'x', target_id = 'y'")
        .execute(store.pool())
        .await
        .expect("pseudonymization");
}
