//! The rules of uploads, on the memory store and an in-memory media store.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};

use super::super::tests::{actor, direct, uid};
use super::*;
use crate::{
    ErrorCode,
    clock::ManualClock,
    crypto::MasterKey,
    engine::{NewGroup, SendMessage},
    keystore::{KeyringConfig, MemoryKeyStore},
    media::ObjectMediaStore,
    memory::MemoryStore,
    model::{MessageType, Role, Timestamp},
    store::Store,
    testing::media as fixtures,
};

struct Setup {
    engine: ChatEngine,
    store: Arc<MemoryStore>,
    media: Arc<ObjectMediaStore>,
    keyring: Option<Arc<crate::keystore::Keyring>>,
    clock: Arc<ManualClock>,
}

async fn setup(encrypted: bool, config: MediaConfig) -> Setup {
    let store = Arc::new(MemoryStore::new());
    let media = Arc::new(ObjectMediaStore::memory().with_part_size(32 * 1024));
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_795_464_000_000)));
    let mut builder = ChatEngine::builder(store.clone())
        .clock(clock.clone())
        .media(media.clone(), config);
    let mut keyring = None;
    if encrypted {
        let k = Arc::new(
            crate::keystore::Keyring::new(
                MasterKey::generate().unwrap(),
                Arc::new(MemoryKeyStore::new()),
                clock.clone(),
                KeyringConfig::default(),
            )
            .await
            .unwrap(),
        );
        builder = builder.encrypt_at_rest(k.clone());
        keyring = Some(k);
    }
    Setup {
        engine: builder.build().await.unwrap(),
        store,
        media,
        keyring,
        clock,
    }
}

fn body(bytes: Vec<u8>, chunk: usize) -> Upload<'static> {
    let chunks: Vec<Result<Bytes>> = bytes
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Upload::new(stream::iter(chunks).boxed())
}

async fn read(d: Download) -> Vec<u8> {
    let chunks: Vec<Bytes> = d.body.try_collect().await.unwrap();
    chunks.concat()
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
    r.unwrap_err().code()
}

fn image_message(chat: ChatId, cid: &str, media: MediaId) -> SendMessage {
    SendMessage {
        chat_id: chat,
        client_msg_id: cid.into(),
        kind: Some(MessageType::Image),
        content: None,
        media_id: Some(media),
        reply_to: None,
        resource: None,
    }
}

#[tokio::test]
async fn a_file_round_trips_with_ranges_sealed_and_plain() {
    for encrypted in [false, true] {
        let s = setup(encrypted, MediaConfig::default()).await;
        let chat = direct(&s.engine, "ann", "bob").await;
        let marker = format!("marker-{encrypted}");
        let bytes = fixtures::pdf_padded(200_000, &marker);
        let mut upload = body(bytes.clone(), 7_000);
        upload.file_name = Some("../../etc/Report \"1\".pdf".into());
        let record = s.engine.upload(&actor("ann"), chat, upload).await.unwrap();
        assert_eq!(record.kind, MediaKind::File);
        assert_eq!(record.mime, "application/pdf");
        assert_eq!(record.size, bytes.len() as u64);
        assert_eq!(record.sealed, encrypted);
        assert_eq!(record.name.as_deref(), Some("Report 1.pdf"));
        let whole = s
            .engine
            .download(&actor("ann"), record.id, false, None)
            .await
            .unwrap();
        assert_eq!(whole.served, Served::Whole);
        assert_eq!(read(whole).await, bytes, "encrypted: {encrypted}");
        let stored = s.media.get(&record.object_key(), None).await.unwrap();
        let stored_bytes: Vec<Bytes> = stored.body.try_collect().await.unwrap();
        let stored_bytes = stored_bytes.concat();
        let contains = stored_bytes
            .windows(marker.len())
            .any(|w| w == marker.as_bytes());
        assert_eq!(contains, !encrypted, "plaintext in the media store");
        // Ranges inside one part, across parts, at the end, and past it.
        for (range, want) in [
            (ByteRange::Bounded(10, 19), 10..20),
            (ByteRange::Bounded(65_530, 65_545), 65_530..65_546),
            (ByteRange::Bounded(60_000, 140_000), 60_000..140_001),
            (ByteRange::From(199_990), 199_990..bytes.len()),
            (ByteRange::Last(5), bytes.len() - 5..bytes.len()),
            (
                ByteRange::Bounded(199_000, 10_000_000),
                199_000..bytes.len(),
            ),
        ] {
            let d = s
                .engine
                .download(&actor("ann"), record.id, false, Some(range))
                .await
                .unwrap();
            assert_eq!(
                d.served,
                Served::Partial(want.start as u64..want.end as u64)
            );
            assert_eq!(read(d).await, &bytes[want], "{range:?}");
        }
        let past = s
            .engine
            .download(
                &actor("ann"),
                record.id,
                false,
                Some(ByteRange::From(300_000)),
            )
            .await
            .unwrap();
        assert_eq!(past.served, Served::Unsatisfiable);
    }
}

#[tokio::test]
async fn only_participants_upload_and_only_the_uploader_sees_it_before_it_is_sent() {
    let s = setup(false, MediaConfig::default()).await;
    let chat = direct(&s.engine, "ann", "bob").await;
    let e = &s.engine;
    assert_eq!(
        code(
            e.upload(&actor("eve"), chat, body(fixtures::png(4, 4), 1024))
                .await
        ),
        ErrorCode::NotFound
    );
    let record = e
        .upload(&actor("ann"), chat, body(fixtures::png(40, 30), 1024))
        .await
        .unwrap();
    assert_eq!((record.width, record.height), (Some(40), Some(30)));
    assert!(record.has_thumbnail);
    for who in ["eve", "bob"] {
        assert_eq!(
            code(e.download(&actor(who), record.id, false, None).await),
            ErrorCode::NotFound,
            "{who} before it is sent"
        );
    }
    e.send(&actor("ann"), image_message(chat, "c1", record.id))
        .await
        .unwrap();
    assert!(
        e.download(&actor("bob"), record.id, true, None)
            .await
            .is_ok()
    );
    assert_eq!(
        code(e.download(&actor("eve"), record.id, false, None).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn an_upload_is_attached_once_by_its_uploader_to_its_chat() {
    let s = setup(false, MediaConfig::default()).await;
    let e = &s.engine;
    let chat = direct(e, "ann", "bob").await;
    let other = direct(e, "ann", "cat").await;
    let record = e
        .upload(&actor("ann"), chat, body(fixtures::png(8, 8), 100))
        .await
        .unwrap();
    // Bob's message with Ann's upload; Ann's upload in another chat.
    assert_eq!(
        code(
            e.send(&actor("bob"), image_message(chat, "b1", record.id))
                .await
        ),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(
            e.send(&actor("ann"), image_message(other, "a0", record.id))
                .await
        ),
        ErrorCode::NotFound
    );
    // The wrong message type.
    let mut voice = image_message(chat, "a1", record.id);
    voice.kind = Some(MessageType::Voice);
    assert_eq!(
        code(e.send(&actor("ann"), voice).await),
        ErrorCode::BadRequest
    );
    let sent = e
        .send(&actor("ann"), image_message(chat, "a2", record.id))
        .await
        .unwrap();
    let media = sent.media.clone().unwrap();
    assert_eq!(media.id, record.id);
    assert_eq!((media.width, media.height), (Some(8), Some(8)));
    // A retry gets the same message; another message cannot take it.
    let again = e
        .send(&actor("ann"), image_message(chat, "a2", record.id))
        .await
        .unwrap();
    assert_eq!(again.id, sent.id);
    assert_eq!(
        code(
            e.send(&actor("ann"), image_message(chat, "a3", record.id))
                .await
        ),
        ErrorCode::Conflict
    );
    let stored = s.store.get_media(record.id).await.unwrap().unwrap();
    assert_eq!(stored.message_id, Some(sent.id));
}

#[tokio::test]
async fn a_refused_send_releases_the_upload() {
    let s = setup(false, MediaConfig::default()).await;
    let e = &s.engine;
    let chat = direct(e, "ann", "bob").await;
    let record = e
        .upload(&actor("ann"), chat, body(fixtures::png(8, 8), 100))
        .await
        .unwrap();
    e.block(&actor("bob"), &uid("ann")).await.unwrap();
    assert_eq!(
        code(
            e.send(&actor("ann"), image_message(chat, "a1", record.id))
                .await
        ),
        ErrorCode::Forbidden
    );
    e.unblock(&actor("bob"), &uid("ann")).await.unwrap();
    e.send(&actor("ann"), image_message(chat, "a2", record.id))
        .await
        .unwrap();
}

#[tokio::test]
async fn deleting_the_message_deletes_the_bytes() {
    let s = setup(true, MediaConfig::default()).await;
    let e = &s.engine;
    let chat = direct(e, "ann", "bob").await;
    let record = e
        .upload(&actor("ann"), chat, body(fixtures::png(500, 400), 4096))
        .await
        .unwrap();
    let sent = e
        .send(&actor("ann"), image_message(chat, "a1", record.id))
        .await
        .unwrap();
    let thumb = e
        .download(&actor("bob"), record.id, true, None)
        .await
        .unwrap();
    assert_eq!(thumb.mime, "image/jpeg");
    assert!(!read(thumb).await.is_empty());
    e.delete(&actor("ann"), sent.id).await.unwrap();
    for key in [record.object_key(), record.thumbnail_key().unwrap()] {
        assert!(matches!(
            s.media.get(&key, None).await,
            Err(Error::NotFound(_))
        ));
    }
    assert!(s.store.get_media(record.id).await.unwrap().is_none());
    assert_eq!(
        code(e.download(&actor("ann"), record.id, false, None).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn retention_removes_the_bytes_of_the_messages_it_sweeps() {
    let s = setup(true, MediaConfig::default()).await;
    let e = &s.engine;
    let chat = direct(e, "ann", "bob").await;
    let old = e
        .upload(&actor("ann"), chat, body(fixtures::png(50, 40), 4096))
        .await
        .unwrap();
    e.send(&actor("ann"), image_message(chat, "old", old.id))
        .await
        .unwrap();
    e.set_retention(&actor("bob"), chat, Some(3600))
        .await
        .unwrap();
    s.clock.advance(Duration::from_secs(1800));
    let recent = e
        .upload(&actor("ann"), chat, body(fixtures::png(50, 40), 4096))
        .await
        .unwrap();
    e.send(&actor("ann"), image_message(chat, "recent", recent.id))
        .await
        .unwrap();
    s.clock.advance(Duration::from_secs(2400));
    assert_eq!(e.sweep_retention().await.unwrap(), 1);
    for key in [old.object_key(), old.thumbnail_key().unwrap()] {
        assert!(matches!(
            s.media.get(&key, None).await,
            Err(Error::NotFound(_))
        ));
    }
    assert!(s.store.get_media(old.id).await.unwrap().is_none());
    assert!(s.store.get_media(recent.id).await.unwrap().is_some());
    let kept = e.download(&actor("bob"), recent.id, false, None).await;
    assert!(kept.is_ok(), "a recent upload stays readable");
}

#[tokio::test]
async fn erasing_the_uploader_leaves_their_media_unreadable() {
    let s = setup(true, MediaConfig::default()).await;
    let e = &s.engine;
    let chat = direct(e, "ann", "bob").await;
    let record = e
        .upload(
            &actor("ann"),
            chat,
            body(fixtures::pdf_padded(100_000, "m"), 8192),
        )
        .await
        .unwrap();
    let mut file = image_message(chat, "a1", record.id);
    file.kind = Some(MessageType::File);
    e.send(&actor("ann"), file).await.unwrap();
    assert!(
        e.download(&actor("bob"), record.id, false, None)
            .await
            .is_ok()
    );
    s.keyring
        .as_ref()
        .unwrap()
        .erase_user(&uid("ann"))
        .await
        .unwrap();
    assert_eq!(
        code(e.download(&actor("bob"), record.id, false, None).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn a_new_member_does_not_see_media_sent_before_they_joined() {
    let s = setup(false, MediaConfig::default()).await;
    let e = &s.engine;
    let new = NewGroup {
        name: "g".into(),
        member_ids: vec![uid("bob")],
        ..Default::default()
    };
    let group = e.create_group(&actor("ann"), new).await.unwrap().chat.id;
    let record = e
        .upload(&actor("ann"), group, body(fixtures::png(8, 8), 100))
        .await
        .unwrap();
    e.send(&actor("ann"), image_message(group, "a1", record.id))
        .await
        .unwrap();
    e.add_participant(&actor("ann"), group, &uid("cat"), Role::Member)
        .await
        .unwrap();
    assert!(
        e.download(&actor("bob"), record.id, false, None)
            .await
            .is_ok()
    );
    assert_eq!(
        code(e.download(&actor("cat"), record.id, false, None).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn limits_and_types_are_checked_from_the_bytes() {
    let mut config = MediaConfig::default();
    config.limits.file_bytes = 50_000;
    let s = setup(false, config).await;
    let e = &s.engine;
    let chat = direct(e, "ann", "bob").await;
    let mut elf = body(fixtures::elf_bytes(), 64);
    elf.file_name = Some("cat.png".into());
    assert_eq!(
        code(e.upload(&actor("ann"), chat, elf).await),
        ErrorCode::UnsupportedMediaType
    );
    assert_eq!(
        code(
            e.upload(
                &actor("ann"),
                chat,
                body(fixtures::pdf_padded(60_000, "big"), 1000)
            )
            .await
        ),
        ErrorCode::TooLarge
    );
    let announced = body(fixtures::png(4, 4), 100).length(Some(1 << 40));
    assert_eq!(
        code(e.upload(&actor("ann"), chat, announced).await),
        ErrorCode::TooLarge
    );
    assert_eq!(
        code(
            e.upload(
                &actor("ann"),
                chat,
                body(fixtures::png_declaring(50_000, 50_000), 100)
            )
            .await
        ),
        ErrorCode::TooLarge
    );
    assert_eq!(
        code(e.upload(&actor("ann"), chat, body(Vec::new(), 1)).await),
        ErrorCode::UnsupportedMediaType
    );
    let long = fixtures::wav_pcm(301_000, 8000);
    assert_eq!(
        code(e.upload(&actor("ann"), chat, body(long, 65_536)).await),
        ErrorCode::TooLarge
    );
    let voice = e
        .upload(
            &actor("ann"),
            chat,
            body(fixtures::wav_pcm(2_500, 8000), 4096),
        )
        .await
        .unwrap();
    assert_eq!(voice.kind, MediaKind::Voice);
    let ms = voice.duration_ms.unwrap();
    assert!(ms.abs_diff(2_500) <= 50, "{ms} ms");
}

#[tokio::test]
async fn uploads_never_sent_are_swept_after_their_time() {
    let s = setup(true, MediaConfig::default()).await;
    let e = &s.engine;
    let chat = direct(e, "ann", "bob").await;
    let old = e
        .upload(&actor("ann"), chat, body(fixtures::png(8, 8), 100))
        .await
        .unwrap();
    let sent = e
        .upload(&actor("ann"), chat, body(fixtures::png(8, 8), 100))
        .await
        .unwrap();
    e.send(&actor("ann"), image_message(chat, "a1", sent.id))
        .await
        .unwrap();
    s.clock.advance(Duration::from_secs(23 * 3600));
    let young = e
        .upload(&actor("ann"), chat, body(fixtures::png(8, 8), 100))
        .await
        .unwrap();
    assert_eq!(e.sweep_media().await.unwrap(), 0);
    s.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(e.sweep_media().await.unwrap(), 1);
    assert!(s.store.get_media(old.id).await.unwrap().is_none());
    assert!(matches!(
        s.media.get(&old.object_key(), None).await,
        Err(Error::NotFound(_))
    ));
    for kept in [&sent, &young] {
        assert!(s.store.get_media(kept.id).await.unwrap().is_some());
        assert!(s.media.get(&kept.object_key(), None).await.is_ok());
    }
}

#[tokio::test]
async fn without_a_media_store_uploads_are_refused() {
    let e = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .build()
        .await
        .unwrap();
    let chat = direct(&e, "ann", "bob").await;
    assert_eq!(
        code(
            e.upload(&actor("ann"), chat, body(fixtures::png(4, 4), 100))
                .await
        ),
        ErrorCode::NotFound
    );
    assert!(e.media_limits().is_none());
}

#[tokio::test]
async fn an_open_report_holds_the_media_of_a_deleted_message_as_evidence() {
    let s = setup(true, MediaConfig::default()).await;
    let e = &s.engine;
    let chat = direct(e, "ann", "bob").await;
    let record = e
        .upload(&actor("bob"), chat, body(fixtures::png(64, 64), 1000))
        .await
        .unwrap();
    let sent = e
        .send(&actor("bob"), image_message(chat, "b1", record.id))
        .await
        .unwrap();
    let report = e
        .report(&actor("ann"), sent.id, "an abusive picture")
        .await
        .unwrap();
    let admin = Actor::admin(uid("root"));
    // The sender deletes it: the participants lose it, the bytes stay.
    e.delete(&actor("bob"), sent.id).await.unwrap();
    assert_eq!(
        code(e.download(&actor("ann"), record.id, false, None).await),
        ErrorCode::NotFound
    );
    assert!(s.media.get(&record.object_key(), None).await.is_ok());
    // The admin reviewing the report sees the evidence; other admins'
    // access needs a report too.
    let evidence = e.download(&admin, record.id, false, None).await.unwrap();
    assert_eq!(read(evidence).await.len() as u64, record.size);
    let queue = e
        .list_reports(&admin, crate::store::ReportQuery::new(10))
        .await
        .unwrap();
    let view = serde_json::to_value(queue[0].view()).unwrap();
    assert_eq!(view["snapshot"]["message"]["type"], "image");
    assert_eq!(
        view["snapshot"]["message"]["media"]["id"],
        record.id.to_string()
    );
    assert_eq!(view["snapshot"]["message"]["sender_id"], "bob");
    // Resolving ends the hold.
    e.resolve_report(
        &admin,
        report,
        crate::engine::ModerationAction::Dismiss,
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.media.get(&record.object_key(), None).await,
        Err(Error::NotFound(_))
    ));
    assert!(s.store.get_media(record.id).await.unwrap().is_none());
}
