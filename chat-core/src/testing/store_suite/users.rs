//! Cases of the batch reads of users.

use std::sync::Arc;

use super::*;

/// `get_users` answers each user in the order asked, `None` for users with
/// nothing stored, the same as `get_user` one by one.
pub async fn get_users_answers_in_order(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    ok(s.set_last_seen(&alice, at(1)).await, "set_last_seen");
    let private = Privacy {
        read_receipts: false,
        typing: true,
        presence: false,
        mood_sharing: true,
    };
    ok(s.set_privacy(&carol, private).await, "set_privacy");
    let asked = [carol.clone(), bob.clone(), alice.clone(), carol.clone()];
    let batch = ok(s.get_users(&asked).await, "get_users");
    let mut one_by_one = Vec::new();
    for u in &asked {
        one_by_one.push(ok(s.get_user(u).await, "get_user"));
    }
    assert_eq!(
        batch, one_by_one,
        "get_users must answer like get_user, in order"
    );
    assert!(batch[1].is_none(), "bob has nothing stored");
    assert_eq!(some(batch[0].clone(), "carol").privacy, private);
    assert_eq!(some(batch[2].clone(), "alice").last_seen, Some(at(1)));
    assert!(ok(s.get_users(&[]).await, "get_users of none").is_empty());
}
