//! Cases of concurrent changes: seqs, retries, watermarks, direct
//! chats, capacity and reactions under contention.

use std::sync::Arc;

use super::*;

// --- concurrency -----------------------------------------------------

/// 50 tasks posting 20 messages each into one chat, through separate
/// `apply` calls, get the seqs 1..=1000 exactly once; each task's seqs
/// grow; `history` returns all of them.
pub async fn concurrent_posts_take_unique_gap_free_seqs(store: Arc<dyn Store>) {
    const TASKS: usize = 50;
    const POSTS: usize = 20;
    let s = &*store;
    let users: Vec<UserId> = (0..TASKS).map(|i| user(&format!("u{i:02}"))).collect();
    let refs: Vec<&UserId> = users.iter().collect();
    let chat = group(s, &refs, at(0)).await;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut handles = Vec::new();
    for (t, sender) in users.iter().cloned().enumerate() {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut mine = Vec::with_capacity(POSTS);
            for i in 0..POSTS {
                let secs = i64::try_from(i + 1).unwrap_or_default();
                let new = text(
                    chat.id,
                    &sender,
                    &format!("t{t}-{i}"),
                    &format!("{t}/{i}"),
                    at(secs),
                );
                let m = post(&*store, new).await;
                mine.push((m.id, m.seq));
            }
            mine
        }));
    }
    let per_task = join_all(handles).await;
    let mut seqs = Vec::new();
    for (t, mine) in per_task.iter().enumerate() {
        assert!(
            mine.windows(2).all(|w| w[0].1 < w[1].1),
            "task {t}: seqs of one caller's successive posts must grow: {mine:?}"
        );
        seqs.extend(mine.iter().map(|(_, seq)| *seq));
    }
    seqs.sort_unstable();
    let total = u64::try_from(TASKS * POSTS).unwrap_or_default();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "concurrent posts must take every seq from 1 to {total} exactly once"
    );
    assert_eq!(last_seq(s, chat.id).await, total);
    let history = ok(s.history(chat.id, all_history()).await, "history");
    assert_eq!(
        history.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=total).rev().collect::<Vec<_>>(),
        "history must return every concurrent post"
    );
    let stored: HashSet<MessageId> = history.iter().map(|m| m.id).collect();
    assert!(
        per_task.iter().flatten().all(|(id, _)| stored.contains(id)),
        "every acknowledged post must be in history"
    );
}

/// Many tasks posting the same `(sender, client_msg_id)` at once store
/// exactly one message: all see the same message, exactly one sees
/// `duplicate: false`, and one seq is taken.
pub async fn concurrent_retries_store_one_message(store: Arc<dyn Store>) {
    const ROUNDS: usize = 5;
    const RACERS: usize = 16;
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(RACERS));
        let secs = i64::try_from(round + 1).unwrap_or_default();
        let attempts: Vec<NewMessage> = (0..RACERS)
            .map(|r| {
                text(
                    chat.id,
                    &alice,
                    &format!("retry-{round}"),
                    &format!("attempt {r}"),
                    at(secs),
                )
            })
            .collect();
        let mut handles = Vec::new();
        for new in attempts.iter().cloned() {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                posted(
                    apply_one(&*store, Change::Post(new)).await,
                    "a concurrent retry",
                )
            }));
        }
        let results = join_all(handles).await;
        let winner = &results[0].0;
        assert!(
            results.iter().all(|(m, _)| m == winner),
            "round {round}: every racer must see the one stored message"
        );
        assert_eq!(
            results.iter().filter(|(_, dup)| !dup).count(),
            1,
            "round {round}: exactly one racer must see duplicate: false"
        );
        let round_seq = u64::try_from(round + 1).unwrap_or_default();
        assert_eq!(
            winner.seq, round_seq,
            "round {round}: one seq taken per round"
        );
        let original = some(
            attempts.iter().find(|a| a.id == winner.id),
            "the stored message must be one of the attempts",
        );
        assert_eq!(winner, &stored(original, round_seq));
        assert_eq!(
            ok(
                s.find_by_client_id(&alice, &format!("retry-{round}")).await,
                "find"
            ),
            Some(winner.clone())
        );
    }
    let rounds = u64::try_from(ROUNDS).unwrap_or_default();
    assert_eq!(last_seq(s, chat.id).await, rounds);
    assert_eq!(
        history_seqs(s, chat.id, all_history()).await,
        (1..=rounds).rev().collect::<Vec<_>>(),
        "racing retries must store one message per key"
    );
}

/// Concurrent marks with random (rising) values never move a watermark
/// back: every caller sees watermarks at least as far as it asked
/// (clamped) and at least as far as any mark returned before it started,
/// and they end at the maximum.
pub async fn concurrent_marks_never_move_backwards(store: Arc<dyn Store>) {
    const TASKS: u64 = 16;
    const MARKS: usize = 25;
    const LAST: u64 = 100;
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let posts = (1..=LAST)
        .map(|i| {
            let secs = i64::try_from(i).unwrap_or_default();
            Change::Post(text(chat.id, &alice, &format!("c-{i}"), "msg", at(secs)))
        })
        .collect();
    let results = s.apply(posts).await;
    assert!(
        results.iter().all(Result::is_ok),
        "posting 100 messages in a batch"
    );
    assert_eq!(last_seq(s, chat.id).await, LAST);

    let barrier = Arc::new(Barrier::new(usize::try_from(TASKS).unwrap_or(1)));
    // The highest watermarks any mark has returned so far: a mark that
    // starts after they were returned must see at least them.
    let floor = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (store, barrier, bob) = (Arc::clone(&store), Arc::clone(&barrier), bob.clone());
        let floor = Arc::clone(&floor);
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(t);
            let (mut max_d, mut max_r) = (0, 0);
            barrier.wait().await;
            for step in 0..MARKS {
                // Everyone ramps up together with jitter, so that marks
                // race at a moving frontier instead of saturating at
                // last_seq at once; the last steps ask beyond it.
                let base = u64::try_from(step).unwrap_or_default() * (LAST + 10)
                    / u64::try_from(MARKS).unwrap_or(1);
                let d = base + rng.below(12);
                let r = if rng.below(3) == 0 {
                    0
                } else {
                    (base + rng.below(12)).saturating_sub(6)
                };
                let (floor_d, floor_r) = (floor.0.load(SeqCst), floor.1.load(SeqCst));
                let (dd, rr, _, _) = marked(
                    apply_one(&*store, mark(chat.id, &bob, d, r)).await,
                    "a concurrent mark",
                );
                assert!(
                    rr <= dd && dd <= LAST,
                    "watermarks must keep read <= delivered <= last_seq, got ({dd}, {rr})"
                );
                assert!(
                    dd >= d.min(LAST) && rr >= r.min(LAST) && dd >= r.min(LAST),
                    "Mark({d}, {r}) returned ({dd}, {rr}): below what was asked"
                );
                assert!(
                    dd >= floor_d && rr >= floor_r,
                    "watermarks moved backwards: ({floor_d}, {floor_r}) had been returned \
                     before Mark({d}, {r}) started, which returned ({dd}, {rr})"
                );
                floor.0.fetch_max(dd, SeqCst);
                floor.1.fetch_max(rr, SeqCst);
                (max_d, max_r) = (max_d.max(d), max_r.max(r));
            }
            (max_d, max_r)
        }));
    }
    let maxima = join_all(handles).await;
    let max_r = maxima.iter().map(|m| m.1).max().unwrap_or(0).min(LAST);
    let max_d = maxima
        .iter()
        .map(|m| m.0)
        .max()
        .unwrap_or(0)
        .min(LAST)
        .max(max_r);
    let c = get_chat(s, chat.id).await;
    let p = participant(&c, &bob);
    assert_eq!(
        (p.delivered_seq, p.read_seq),
        (max_d, max_r),
        "after concurrent marks the watermarks must be the (clamped) maxima"
    );
    assert_eq!(c.last_seq, LAST, "marks take no seq");
}

/// Concurrent `create_chat` of the same direct pair (in both orders)
/// creates exactly one chat, which every caller gets.
pub async fn concurrent_direct_chat_creation_yields_one_chat(store: Arc<dyn Store>) {
    const PAIRS: usize = 4;
    const RACERS: usize = 8;
    let s = &*store;
    let barrier = Arc::new(Barrier::new(PAIRS * RACERS));
    let mut handles = Vec::new();
    for p in 0..PAIRS {
        let (a, b) = (user(&format!("a{p}")), user(&format!("b{p}")));
        for r in 0..RACERS {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            let new = if r % 2 == 0 {
                new_direct(&a, &b, at(0))
            } else {
                new_direct(&b, &a, at(0))
            };
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let (chat, created) = ok(store.create_chat(new).await, "a concurrent create_chat");
                (p, chat.id, created)
            }));
        }
    }
    let results = join_all(handles).await;
    for p in 0..PAIRS {
        let mine: Vec<_> = results.iter().filter(|r| r.0 == p).collect();
        assert_eq!(
            mine.iter().filter(|r| r.2).count(),
            1,
            "pair {p}: exactly one concurrent create_chat must create the chat"
        );
        let id = mine[0].1;
        assert!(
            mine.iter().all(|r| r.1 == id),
            "pair {p}: every caller must get the same chat"
        );
        let (a, b) = (user(&format!("a{p}")), user(&format!("b{p}")));
        assert_eq!(
            ok(s.find_direct_chat(&b, &a).await, "find_direct_chat").map(|c| c.id),
            Some(id)
        );
        assert_eq!(
            list_chat_ids(s, &a, all_chats()).await,
            vec![id],
            "pair {p}: only one chat may exist"
        );
    }
}

/// Concurrent adds to a group never exceed `max_participants`.
pub async fn concurrent_adds_respect_capacity(store: Arc<dyn Store>) {
    const CANDIDATES: usize = 20;
    const MAX: usize = 10;
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    let barrier = Arc::new(Barrier::new(CANDIDATES));
    let mut handles = Vec::new();
    for i in 0..CANDIDATES {
        let (store, barrier, alice) = (Arc::clone(&store), Arc::clone(&barrier), alice.clone());
        let newcomer = user(&format!("n{i:02}"));
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let result = apply_one(
                &*store,
                add_max(chat.id, &newcomer, Role::Member, &alice, MAX, at(1)),
            )
            .await;
            match result {
                Ok(applied) => {
                    membership(Ok(applied), "a concurrent add");
                    true
                }
                Err(Error::Conflict(_)) => false,
                Err(e) => panic!("a concurrent add must succeed or be a Conflict, got {e:?}"),
            }
        }));
    }
    let added = join_all(handles).await.into_iter().filter(|a| *a).count();
    assert_eq!(
        added,
        MAX - 1,
        "concurrent adds must fill the group exactly to max_participants"
    );
    let c = get_chat(s, chat.id).await;
    assert_eq!(
        c.participants.len(),
        MAX,
        "the group must hold max_participants"
    );
    let expected_seq = u64::try_from(MAX - 1).unwrap_or_default();
    assert_eq!(c.last_seq, expected_seq, "refused adds take no seq");
    assert_eq!(
        history_seqs(s, chat.id, all_history()).await,
        (1..=expected_seq).rev().collect::<Vec<_>>()
    );
}

/// Concurrent reactions with distinct emoji never exceed
/// `max_distinct`.
pub async fn concurrent_reactions_respect_max_distinct(store: Arc<dyn Store>) {
    const USERS: usize = 12;
    const MAX: usize = 5;
    let s = &*store;
    let users: Vec<UserId> = (0..USERS).map(|i| user(&format!("u{i:02}"))).collect();
    let refs: Vec<&UserId> = users.iter().collect();
    let chat = group(s, &refs, at(0)).await;
    let m = post(s, text(chat.id, &users[0], "c-1", "pick one", at(1))).await;
    let barrier = Arc::new(Barrier::new(USERS));
    let mut handles = Vec::new();
    for (i, who) in users.iter().cloned().enumerate() {
        let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let change = react_max(chat.id, m.id, &who, &format!("e{i}"), true, MAX, at(2));
            match apply_one(&*store, change).await {
                Ok(applied) => updated(Ok(applied), "a concurrent reaction").1,
                Err(Error::Conflict(_)) => false,
                Err(e) => {
                    panic!("a concurrent reaction must apply or be a Conflict, got {e:?}")
                }
            }
        }));
    }
    let applied = join_all(handles).await.into_iter().filter(|a| *a).count();
    assert_eq!(
        applied, MAX,
        "exactly max_distinct distinct emoji may be added"
    );
    let now = get_message(s, m.id).await;
    assert_eq!(now.reactions.len(), MAX);
    let expected_seq = 1 + u64::try_from(MAX).unwrap_or_default();
    assert_eq!(now.updated_seq, expected_seq);
    assert_eq!(
        last_seq(s, chat.id).await,
        expected_seq,
        "refused reactions take no seq"
    );
}

/// Concurrent posts, edits, reactions and deletions in one chat each
/// take their own seq: `last_seq` counts them, and no two messages share
/// a seq or an `updated_seq`.
pub async fn concurrent_mixed_changes_take_distinct_seqs(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    let s = &*store;
    let users: Vec<UserId> = (0..=TASKS).map(|i| user(&format!("u{i:02}"))).collect();
    let refs: Vec<&UserId> = users.iter().collect();
    let chat = group(s, &refs, at(0)).await;
    let shared = post(s, text(chat.id, &users[0], "shared", "react here", at(1))).await;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut handles = Vec::new();
    for who in &users[1..] {
        let (store, barrier, who) = (Arc::clone(&store), Arc::clone(&barrier), who.clone());
        handles.push(tokio::spawn(async move {
            let s = &*store;
            barrier.wait().await;
            let own = post(s, text(chat.id, &who, "own", "mine", at(2))).await;
            let mut seqs = vec![own.seq];
            let changes = [
                edit(chat.id, own.id, "mine, edited", at(3)),
                react(chat.id, shared.id, &who, "👍", true, at(4)),
                react(chat.id, own.id, &who, "🎉", true, at(5)),
                delete(chat.id, own.id, at(6)),
            ];
            for change in changes {
                let (message, changed) = updated(apply_one(s, change).await, "a concurrent change");
                assert!(changed, "every concurrent change here changes something");
                seqs.push(message.updated_seq);
            }
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "one caller's successive changes must take growing seqs: {seqs:?}"
            );
            seqs
        }));
    }
    let taken: Vec<u64> = join_all(handles).await.into_iter().flatten().collect();
    let total = 1 + u64::try_from(taken.len()).unwrap_or_default();
    assert_eq!(
        last_seq(s, chat.id).await,
        total,
        "last_seq must count every change"
    );
    let mut unique: Vec<u64> = taken.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        taken.len(),
        "no seq may be taken twice: {taken:?}"
    );
    assert!(unique.iter().all(|seq| (2..=total).contains(seq)));

    let messages = ok(s.changes(chat.id, 0, 0, 1_000).await, "changes");
    assert_eq!(messages.len(), TASKS + 1);
    let seqs: HashSet<u64> = messages.iter().map(|m| m.seq).collect();
    let updated_seqs: HashSet<u64> = messages.iter().map(|m| m.updated_seq).collect();
    assert_eq!(
        seqs.len(),
        messages.len(),
        "no two messages may share a seq"
    );
    assert_eq!(
        updated_seqs.len(),
        messages.len(),
        "no two messages may share an updated_seq"
    );
    assert!(
        messages
            .windows(2)
            .all(|w| w[0].updated_seq < w[1].updated_seq),
        "changes must be in ascending updated_seq"
    );
    let shared_now = get_message(s, shared.id).await;
    let thumbs: BTreeMap<&str, usize> = shared_now
        .reactions
        .iter()
        .map(|(e, us)| (e.as_str(), us.len()))
        .collect();
    assert_eq!(
        thumbs,
        BTreeMap::from([("👍", TASKS)]),
        "every concurrent reaction must be kept once"
    );
    assert!(
        messages
            .iter()
            .filter(|m| m.id != shared.id)
            .all(|m| m.deleted),
        "every own message was deleted"
    );
}

/// Tasks attaching one upload to different messages at once: exactly one
/// attach returns `true`, and the upload is attached to that task's
/// message. Repeated over a few uploads.
pub async fn concurrent_attaches_of_one_upload_accept_one(store: Arc<dyn Store>) {
    const ROUNDS: usize = 5;
    const RACERS: usize = 8;
    let s = &*store;
    let alice = user("alice");
    let chat = group(s, &[&alice], at(0)).await;
    for round in 0..ROUNDS {
        let secs = i64::try_from(round + 1).unwrap_or_default();
        let upload = media_record(chat.id, &alice, at(secs));
        ok(s.insert_media(upload.clone()).await, "insert_media");
        let barrier = Arc::new(Barrier::new(RACERS));
        let mut handles = Vec::new();
        for _ in 0..RACERS {
            let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
            let message = MessageId::new();
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let won = ok(
                    store.attach_media(upload.id, message).await,
                    "a concurrent attach_media",
                );
                (message, won)
            }));
        }
        let winners: Vec<MessageId> = join_all(handles)
            .await
            .into_iter()
            .filter_map(|(message, won)| won.then_some(message))
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {RACERS} concurrent attaches must win, \
             {} did",
            winners.len()
        );
        assert_eq!(
            some(ok(s.get_media(upload.id).await, "get_media"), "the upload").message_id,
            Some(winners[0]),
            "round {round}: the upload is attached to the winner's message"
        );
    }
}
