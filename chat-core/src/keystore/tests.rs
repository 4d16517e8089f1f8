//! Tests of the flows over a key store ([`KeyStoreExt`]), on the memory
//! store. The store contract itself is the conformance suite's.

use std::sync::Arc;

use super::{KeyStore, KeyStoreExt, MemoryKeyStore, Rotation};
use crate::{
    crypto::{CryptoError, MasterKey, UserKey, WrappedUserKey},
    error::Error,
    model::UserId,
};

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

fn master() -> MasterKey {
    MasterKey::generate().expect("master key")
}

#[track_caller]
fn key_mismatch(result: crate::Result<impl std::fmt::Debug>) -> CryptoError {
    match result {
        Err(Error::Backend { source }) => match source.downcast::<CryptoError>() {
            Ok(e) if matches!(*e, CryptoError::KeyMismatch { .. }) => *e,
            Ok(e) => panic!("expected KeyMismatch, got {e:?}"),
            Err(e) => panic!("expected a CryptoError, got {e:?}"),
        },
        other => panic!("expected a backend error, got {other:?}"),
    }
}

#[tokio::test]
async fn user_key_is_made_once() {
    let store = MemoryKeyStore::new();
    let master = master();
    let alice = user("alice");
    let first = store.user_key(&master, &alice).await.expect("first use");
    let again = store.user_key(&master, &alice).await.expect("second use");
    assert_eq!(first.id(), again.id());
    let stored = store
        .get_user_key(&alice)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(
        master
            .unwrap_user_key(&alice, &stored)
            .expect("unwrap")
            .id(),
        first.id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_uses_agree_on_one_key() {
    let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
    let master = Arc::new(master());
    let alice = user("alice");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, master, alice) = (Arc::clone(&store), Arc::clone(&master), alice.clone());
            tokio::spawn(async move { store.user_key(&master, &alice).await.map(|k| k.id()) })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task").expect("user key"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every racer got the stored key");
}

#[tokio::test]
async fn a_shredded_user_gets_a_new_key_and_old_data_keys_say_so() {
    let store = MemoryKeyStore::new();
    let master = master();
    let alice = user("alice");
    let old = store.user_key(&master, &alice).await.expect("key");
    let scope = crate::crypto::DataKeyScope::new(
        crate::ChatId::new(),
        alice.clone(),
        crate::crypto::KeyEpoch::FIRST,
    );
    let data_key = crate::crypto::DataKey::generate().expect("data key");
    let wrapped = old.wrap_data_key(&scope, &data_key).expect("wrap");

    assert!(store.delete_user_key(&alice).await.expect("delete"));
    assert!(
        store.get_user_key(&alice).await.expect("get").is_none(),
        "erased"
    );

    let new = store.user_key(&master, &alice).await.expect("new key");
    assert_ne!(new.id(), old.id());
    assert!(matches!(
        new.unwrap_data_key(&scope, &wrapped),
        Err(CryptoError::KeyMismatch { .. })
    ));
}

#[tokio::test]
async fn the_master_key_check_is_sealed_once_and_then_enforced() {
    let store = MemoryKeyStore::new();
    let right = master();
    store.verify_master_key(&right).await.expect("first start");
    let check = store.get_check().await.expect("get").expect("sealed");
    assert_eq!(check.key_id(), right.id());
    store.verify_master_key(&right).await.expect("restart");

    let wrong = master();
    let e = key_mismatch(store.verify_master_key(&wrong).await);
    assert!(e.to_string().contains(&right.id().to_string()), "{e}");
    assert_eq!(
        store.get_check().await.expect("get"),
        Some(check),
        "nothing changed"
    );
}

#[tokio::test]
async fn a_store_without_check_is_judged_by_its_keys() {
    let store = MemoryKeyStore::new();
    let right = master();
    put_key_under(&store, &right, &user("alice")).await;

    key_mismatch(store.verify_master_key(&master()).await);
    assert!(
        store.get_check().await.expect("get").is_none(),
        "nothing written"
    );
    store
        .verify_master_key(&right)
        .await
        .expect("the right key");
}

/// Stores a new key for `user`, wrapped under `master` (not necessarily
/// the key store's).
async fn put_key_under(store: &dyn KeyStore, master: &MasterKey, user: &UserId) -> WrappedUserKey {
    let key = UserKey::generate().expect("key");
    let wrapped = master.wrap_user_key(user, &key).expect("wrap");
    store
        .put_user_key_if_absent(user, wrapped.clone())
        .await
        .expect("put");
    wrapped
}

/// Users, each with a key under `master`; returns their key ids.
async fn populate(
    store: &dyn KeyStore,
    master: &MasterKey,
    n: usize,
) -> Vec<(UserId, crate::crypto::KeyId)> {
    let mut users = Vec::new();
    for i in 0..n {
        let u = user(&format!("user-{i:03}"));
        let key = store.user_key(master, &u).await.expect("user key");
        users.push((u, key.id()));
    }
    users
}

#[tokio::test]
async fn rotation_rewraps_every_user_key_and_retires_the_old_master_key() {
    let store = MemoryKeyStore::new();
    let old = master();
    store.verify_master_key(&old).await.expect("start");
    let users = populate(&store, &old, 25).await;

    let new = master();
    let rotation = store
        .rotate_master_key(&old, &new, 7)
        .await
        .expect("rotate");
    assert_eq!(
        rotation,
        Rotation {
            rewrapped: 25,
            ..Rotation::default()
        }
    );
    for (u, id) in &users {
        let wrapped = store.get_user_key(u).await.expect("get").expect("kept");
        assert_eq!(wrapped.key_id(), new.id());
        assert_eq!(
            new.unwrap_user_key(u, &wrapped).expect("unwrap").id(),
            *id,
            "same user key"
        );
    }
    store
        .verify_master_key(&new)
        .await
        .expect("new key accepted");
    key_mismatch(store.verify_master_key(&old).await);

    // Again, with the keys swapped around the wrong way: refused, nothing changed.
    key_mismatch(store.rotate_master_key(&old, &master(), 7).await);
    // Again, the same way: nothing left to do.
    let again = store.rotate_master_key(&old, &new, 7).await.expect("rerun");
    assert_eq!(again.already_rotated, 25);
    assert_eq!(again.rewrapped, 0);
}

#[tokio::test]
async fn an_interrupted_rotation_resumes() {
    let store = MemoryKeyStore::new();
    let old = master();
    store.verify_master_key(&old).await.expect("start");
    let users = populate(&store, &old, 10).await;
    let new = master();

    // As if a rotation stopped after the check and three users.
    let check = store.get_check().await.expect("get").expect("check");
    assert!(
        store
            .replace_check(&check, new.seal_check().expect("seal"))
            .await
            .expect("replace")
    );
    for (u, _) in &users[..3] {
        let current = store.get_user_key(u).await.expect("get").expect("key");
        let key = old.unwrap_user_key(u, &current).expect("unwrap");
        let rewrapped = new.wrap_user_key(u, &key).expect("wrap");
        assert!(
            store
                .replace_user_key(u, &current, rewrapped)
                .await
                .expect("replace")
        );
    }
    key_mismatch(store.verify_master_key(&old).await);

    let rotation = store
        .rotate_master_key(&old, &new, 4)
        .await
        .expect("resume");
    assert_eq!((rotation.rewrapped, rotation.already_rotated), (7, 3));
    for (u, id) in &users {
        let wrapped = store.get_user_key(u).await.expect("get").expect("kept");
        assert_eq!(new.unwrap_user_key(u, &wrapped).expect("unwrap").id(), *id);
    }
}

#[tokio::test]
async fn rotation_reports_keys_it_cannot_read_and_goes_on() {
    let store = MemoryKeyStore::new();
    let old = master();
    store.verify_master_key(&old).await.expect("start");
    populate(&store, &old, 3).await;
    // A key wrapped under a third master key.
    let stray = user("stray");
    let wrapped = put_key_under(&store, &master(), &stray).await;

    let new = master();
    let rotation = store
        .rotate_master_key(&old, &new, 2)
        .await
        .expect("rotate");
    assert_eq!(rotation.rewrapped, 3);
    assert_eq!(rotation.unreadable, vec![stray.clone()]);
    assert_eq!(
        store.get_user_key(&stray).await.expect("get"),
        Some(wrapped),
        "left as it was"
    );
}

#[tokio::test]
async fn rotating_to_the_same_key_is_refused() {
    let store = MemoryKeyStore::new();
    let key = master();
    let same = MasterKey::from_base64(&key.to_base64()).expect("same key");
    assert!(matches!(
        store.rotate_master_key(&key, &same, 10).await,
        Err(Error::InvalidInput(_))
    ));
}
