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
    let (insert, refused, allowed) = chat_core::testing::AUDIT_LOG_SQL;
    let run = |sql: &'static str| sqlx::query(sql).execute(store.pool());
    run(insert).await.expect("append");
    for &sql in refused {
        assert!(run(sql).await.is_err(), "{sql}");
    }
    run(allowed).await.expect("pseudonymization");
}
