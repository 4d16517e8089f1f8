//! [`SqliteKeyStore`]: the `KeyStore` conformance suite of `chat-core`
//! against a fresh key store file per case, and what only a file can show
//! (keys survive reopening; a deleted key leaves the file and its WAL).

use std::{path::Path, sync::Arc};

use chat_core::{
    ChatId, Timestamp, UserId,
    crypto::{DataKey, DataKeyScope, KeyEpoch, MasterKey, UserKey, WrappedUserKey},
    keystore::{DataKeyRecord, KeyStore},
    testing::KeyStoreFixture,
};
use chat_store_sqlite::{Error, SqliteKeyStore, SqliteStore};

mod conformance {
    use super::*;

    async fn setup() -> KeyStoreFixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let keys = SqliteKeyStore::open(dir.path().join("keys.db"))
            .await
            .unwrap_or_else(|e| panic!("open the SQLite key store: {e}"));
        // The key store is dropped first, then the temp dir.
        KeyStoreFixture::with_guard(Arc::new(keys), dir)
    }

    chat_core::keystore_conformance_tests!(setup);
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("user id")
}

fn wrapped_user_key(master: &MasterKey, user: &UserId) -> WrappedUserKey {
    master
        .wrap_user_key(user, &UserKey::generate().expect("user key"))
        .expect("wrap a user key")
}

fn data_key(chat: ChatId, sender: &UserId, epoch: u32) -> DataKeyRecord {
    let epoch = KeyEpoch::new(epoch);
    let scope = DataKeyScope::new(chat, sender.clone(), epoch);
    let key = UserKey::generate()
        .and_then(|user_key| user_key.wrap_data_key(&scope, &DataKey::generate()?))
        .expect("wrap a data key");
    DataKeyRecord {
        epoch,
        key,
        created_at: Timestamp::from_millis(1_000),
    }
}

/// The bytes of the key store file and of its WAL (empty if there is none).
fn file_and_wal(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).expect("read the key store file");
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::read(&wal) {
        Ok(wal) => bytes.extend_from_slice(&wal),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("read the key store's WAL: {e}"),
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn reopening_the_file_keeps_the_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.db");
    let master = MasterKey::generate().expect("master key");
    let (ann, chat) = (user("ann"), ChatId::new());
    let key = wrapped_user_key(&master, &ann);
    let record = data_key(chat, &ann, 3);
    let check = master.seal_check().expect("check");

    let keys = SqliteKeyStore::open(&path).await.expect("open");
    keys.put_user_key_if_absent(&ann, key.clone())
        .await
        .expect("put");
    keys.put_data_key_if_absent(chat, &ann, record.clone())
        .await
        .expect("put data key");
    keys.put_check_if_absent(check.clone())
        .await
        .expect("put check");
    drop(keys);

    let keys = SqliteKeyStore::open(&path).await.expect("reopen");
    assert_eq!(keys.get_user_key(&ann).await.expect("get"), Some(key));
    assert_eq!(
        keys.latest_data_key(chat, &ann).await.expect("latest"),
        Some(record)
    );
    assert_eq!(keys.get_check().await.expect("check"), Some(check));
}

#[tokio::test]
async fn a_deleted_key_leaves_neither_the_file_nor_the_wal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.db");
    let master = MasterKey::generate().expect("master key");
    let (ann, bob, chat) = (user("ann"), user("bob"), ChatId::new());
    let keys = SqliteKeyStore::open(&path).await.expect("open");

    // Neighbours on the same pages, so the deletion rewrites a page that
    // stays in use rather than freeing it whole.
    let bobs = wrapped_user_key(&master, &bob);
    keys.put_user_key_if_absent(&bob, bobs.clone())
        .await
        .expect("put bob");
    keys.put_data_key_if_absent(chat, &bob, data_key(chat, &bob, 1))
        .await
        .expect("put bob's data key");
    let anns = wrapped_user_key(&master, &ann);
    keys.put_user_key_if_absent(&ann, anns.clone())
        .await
        .expect("put ann");
    let anns_data = data_key(chat, &ann, 1);
    keys.put_data_key_if_absent(chat, &ann, anns_data.clone())
        .await
        .expect("put ann's data key");

    // The search finds stored keys: its "absent" below means something.
    let before = file_and_wal(&path);
    assert!(contains(&before, anns.as_bytes()), "ann's key is stored");
    assert!(
        contains(&before, anns_data.key.as_bytes()),
        "ann's data key is stored"
    );

    assert!(keys.delete_user_key(&ann).await.expect("delete"));

    let after = file_and_wal(&path);
    assert!(
        !contains(&after, anns.as_bytes()),
        "the deleted user key's bytes linger in the key store file or its WAL"
    );
    // Ann's data key stays (the contract): without her user key it opens
    // nothing, and it keeps her epochs from being reused.
    assert_eq!(
        keys.latest_data_key(chat, &ann).await.expect("latest"),
        Some(anns_data)
    );
    assert!(
        contains(&after, bobs.as_bytes()),
        "bob's key is still stored"
    );
    assert_eq!(keys.get_user_key(&bob).await.expect("get bob"), Some(bobs));
}

#[tokio::test]
async fn the_message_database_is_refused_as_a_key_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("chat.db");
    SqliteStore::open(&path)
        .expect("open the message store")
        .close()
        .await
        .expect("close");
    match SqliteKeyStore::open(&path).await {
        Err(Error::NotAKeyStore { .. }) => {}
        other => panic!("expected NotAKeyStore, got {other:?}"),
    }
}
