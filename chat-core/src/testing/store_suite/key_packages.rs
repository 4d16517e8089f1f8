//! Cases of the MLS key package directory: each key package handed out
//! once, oldest first, the last-resort one when none is left, bounded per
//! device, and never twice under concurrent claimers.

use std::sync::Arc;

use super::*;
use crate::{mls::MAX_KEY_PACKAGES_PER_DEVICE, model::DeviceId};

#[track_caller]
fn device(name: &str) -> DeviceId {
    match DeviceId::new(name) {
        Ok(d) => d,
        Err(e) => panic!("bad device id in the suite: {e}"),
    }
}

fn packages(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .collect()
}

/// What a claim gave: (user, device, package, last resort, remaining),
/// sorted by user and device.
async fn claim(s: &dyn Store, users: &[&UserId]) -> Vec<(String, String, String, bool, u64)> {
    let users: Vec<UserId> = users.iter().map(|u| (*u).clone()).collect();
    let mut out: Vec<_> = ok(s.claim_key_packages(&users).await, "claim_key_packages")
        .into_iter()
        .map(|c| {
            (
                c.user_id.to_string(),
                c.device_id.to_string(),
                String::from_utf8_lossy(&c.key_package).into_owned(),
                c.last_resort,
                c.remaining,
            )
        })
        .collect();
    out.sort();
    out
}

/// Key packages go out oldest first, one per device per claim, each once;
/// a device with none left gives its last-resort one (kept, and the
/// newest published), a device with neither gives nothing.
pub async fn key_packages_are_handed_out_once_oldest_first(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let (phone, laptop) = (device("phone"), device("laptop"));
    let available = ok(
        s.publish_key_packages(
            &alice,
            &phone,
            packages("ap", 2),
            Some(b"ap-lr-old".to_vec()),
            at(1),
        )
        .await,
        "publish",
    );
    assert_eq!(available, 2);
    let available = ok(
        s.publish_key_packages(&alice, &phone, Vec::new(), Some(b"ap-lr".to_vec()), at(2))
            .await,
        "publish a new last resort",
    );
    assert_eq!(available, 2, "the last-resort one is not counted");
    ok(
        s.publish_key_packages(&alice, &laptop, packages("al", 1), None, at(3))
            .await,
        "publish",
    );
    assert!(claim(s, &[&bob]).await.is_empty(), "bob published nothing");
    let listed = |user: UserId| async move {
        ok(s.key_packages_of(&user).await, "key_packages_of")
            .into_iter()
            .map(|p| {
                let bytes = String::from_utf8_lossy(&p.key_package).into_owned();
                (p.device_id.to_string(), bytes, p.last_resort)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(alice.clone()).await,
        [
            ("laptop".into(), "al-0".into(), false),
            ("phone".into(), "ap-0".into(), false),
            ("phone".into(), "ap-1".into(), false),
            ("phone".into(), "ap-lr".into(), true),
        ],
        "every unclaimed one, by device then publishing order, last resort last"
    );
    assert!(listed(bob.clone()).await.is_empty());
    assert_eq!(
        claim(s, &[&alice, &bob, &alice]).await,
        vec![
            ("alice".into(), "laptop".into(), "al-0".into(), false, 0),
            ("alice".into(), "phone".into(), "ap-0".into(), false, 1),
        ],
        "one per device, oldest first; a user named twice counts once"
    );
    assert_eq!(
        claim(s, &[&alice]).await,
        vec![("alice".into(), "phone".into(), "ap-1".into(), false, 0)],
        "the laptop has none left and no last-resort one"
    );
    for _ in 0..2 {
        assert_eq!(
            claim(s, &[&alice]).await,
            vec![("alice".into(), "phone".into(), "ap-lr".into(), true, 0)],
            "the newest last-resort one, as often as asked"
        );
    }
}

/// A device keeps at most `MAX_KEY_PACKAGES_PER_DEVICE`; a publish beyond
/// it is a conflict and stores none of its packages.
pub async fn key_packages_per_device_are_bounded(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, phone) = (user("alice"), device("phone"));
    let max = MAX_KEY_PACKAGES_PER_DEVICE as usize;
    ok(
        s.publish_key_packages(&alice, &phone, packages("a", max - 1), None, at(1))
            .await,
        "publish",
    );
    conflict(
        s.publish_key_packages(&alice, &phone, packages("b", 2), None, at(2))
            .await,
        "publishing past the bound",
    );
    assert_eq!(
        ok(
            s.publish_key_packages(&alice, &phone, packages("c", 1), None, at(3))
                .await,
            "publish up to the bound"
        ),
        MAX_KEY_PACKAGES_PER_DEVICE
    );
    let mut seen = Vec::new();
    for _ in 0..max {
        let claimed = claim(s, &[&alice]).await;
        seen.extend(claimed.into_iter().map(|c| c.2));
    }
    assert!(
        seen.iter().all(|p| !p.starts_with("b-")),
        "nothing of the refused publish was stored"
    );
    assert!(claim(s, &[&alice]).await.is_empty());
}

/// Concurrent claimers never get the same key package.
pub async fn concurrent_claims_never_share_a_key_package(store: Arc<dyn Store>) {
    let (alice, phone) = (user("alice"), device("phone"));
    ok(
        store
            .publish_key_packages(&alice, &phone, packages("k", 40), None, at(1))
            .await,
        "publish",
    );
    let barrier = Arc::new(Barrier::new(8));
    let tasks: Vec<JoinHandle<Vec<Vec<u8>>>> = (0..8)
        .map(|_| {
            let (store, barrier, alice) = (store.clone(), barrier.clone(), alice.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut got = Vec::new();
                for _ in 0..5 {
                    let claimed = ok(
                        store.claim_key_packages(std::slice::from_ref(&alice)).await,
                        "claim",
                    );
                    got.extend(claimed.into_iter().map(|c| c.key_package));
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(ok(task.await.map_err(Error::backend), "a claimer"));
    }
    let distinct: HashSet<&Vec<u8>> = all.iter().collect();
    assert_eq!(all.len(), 40, "every claim got one");
    assert_eq!(distinct.len(), 40, "no key package was handed out twice");
}

/// A device's signature key is pinned by the first caller: later keys,
/// also from concurrent callers, get the pinned one back.
pub async fn device_keys_are_pinned_by_the_first(store: Arc<dyn Store>) {
    let (alice, phone, laptop) = (user("alice"), device("phone"), device("laptop"));
    assert_eq!(
        ok(
            store.device_keys(&[(alice.clone(), phone.clone())]).await,
            "device_keys"
        ),
        vec![None]
    );
    let barrier = Arc::new(Barrier::new(4));
    let tasks: Vec<JoinHandle<Vec<u8>>> = (0..4)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let (alice, phone) = (alice.clone(), phone.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let key = format!("key-{i}").into_bytes();
                ok(store.pin_device_key(&alice, &phone, key).await, "pin")
            })
        })
        .collect();
    let mut pinned = Vec::new();
    for task in tasks {
        pinned.push(ok(task.await.map_err(Error::backend), "a pinner"));
    }
    assert!(
        pinned.windows(2).all(|w| w[0] == w[1]),
        "every caller gets the one pinned key: {pinned:?}"
    );
    ok(
        store
            .pin_device_key(&alice, &laptop, b"laptop-key".to_vec())
            .await,
        "pin",
    );
    assert_eq!(
        ok(
            store
                .device_keys(&[(alice.clone(), laptop), (alice.clone(), phone)])
                .await,
            "device_keys"
        ),
        vec![Some(b"laptop-key".to_vec()), Some(pinned[0].clone())]
    );
}
