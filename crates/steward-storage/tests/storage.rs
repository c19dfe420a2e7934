//! Storage behaviour on every backend: SQLite always, PostgreSQL when `STEWARD_TEST_POSTGRES_URL`
//! is set (each test names its backend, so the log shows both ran).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};
use sea_orm::{ConnectionTrait, TransactionTrait};
use steward_storage::idempotency::{Idempotency, Key, RETENTION};
use steward_storage::outbox::{Deliver, Outbox};
use steward_storage::testing::{Backend, TestDatabase, POSTGRES_ENV};

const OUTBOX: Outbox = Outbox::new("test_outbox");
const KEYS: Idempotency = Idempotency::new("test_idempotency_keys");

macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                ($body)(Backend::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                if std::env::var(POSTGRES_ENV).map_or(true, |v| v.is_empty()) {
                    assert!(
                        std::env::var("STEWARD_TEST_REQUIRE_POSTGRES").map_or(true, |v| v != "1"),
                        "{POSTGRES_ENV} is required"
                    );
                    eprintln!("skipping: {POSTGRES_ENV} not set");
                    return;
                }
                ($body)(Backend::Postgres).await;
            }
        }
    };
}

async fn open(backend: Backend) -> (TestDatabase, sea_orm::DatabaseConnection) {
    let database = TestDatabase::create(backend).await.unwrap();
    let db = steward_storage::connect(&database.url("storage"), 4).await.unwrap();
    let backend = db.get_database_backend();
    db.execute(backend.build(&OUTBOX.create_table())).await.unwrap();
    db.execute(backend.build(&KEYS.create_table())).await.unwrap();
    db.execute(backend.build(&KEYS.create_index())).await.unwrap();
    (database, db)
}

on_both_backends!(connects_and_answers_pings, |backend| async move {
    let (_database, db) = open(backend).await;
    assert!(steward_storage::ping(&db).await);
    assert_eq!(steward_storage::is_sqlite(&db), backend == Backend::Sqlite);
});

on_both_backends!(outbox_retries_until_delivered, |backend| async move {
    let (_database, db) = open(backend).await;
    let t0 = Utc::now();
    for i in 0..3 {
        OUTBOX
            .enqueue(&db, "test.topic", &format!("key-{i}"), &serde_json::json!({ "i": i }), t0)
            .await
            .unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let failures_left = Arc::new(AtomicUsize::new(1));
    let deliver: Deliver = {
        let seen = seen.clone();
        let failures_left = failures_left.clone();
        Arc::new(move |message| {
            let seen = seen.clone();
            let failures_left = failures_left.clone();
            Box::pin(async move {
                if message.idempotency_key == "key-1"
                    && failures_left
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    return Err("peer unavailable".to_string());
                }
                seen.lock().unwrap().push((
                    message.idempotency_key,
                    message.payload,
                    message.attempts,
                ));
                Ok(())
            })
        })
    };

    assert_eq!(OUTBOX.relay_once(&db, &deliver, &|| t0).await.unwrap(), 2);
    assert_eq!(OUTBOX.pending(&db).await.unwrap(), 1);
    // Backing off: not due again at the same instant.
    assert_eq!(OUTBOX.relay_once(&db, &deliver, &|| t0).await.unwrap(), 0);
    // Due after the backoff; delivered with its attempt count.
    let later = t0 + Duration::seconds(5);
    assert_eq!(OUTBOX.relay_once(&db, &deliver, &|| later).await.unwrap(), 1);
    assert_eq!(OUTBOX.pending(&db).await.unwrap(), 0);
    let seen = seen.lock().unwrap().clone();
    let keys: Vec<_> = seen.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, ["key-0", "key-2", "key-1"]);
    assert_eq!(seen[2].1, serde_json::json!({ "i": 1 }));
    assert_eq!(seen[2].2, 1);
});

on_both_backends!(outbox_rows_follow_their_transaction, |backend| async move {
    let (_database, db) = open(backend).await;
    let now = Utc::now();
    let txn = db.begin().await.unwrap();
    OUTBOX.enqueue(&txn, "t", "rolled-back", &serde_json::json!({}), now).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(OUTBOX.pending(&db).await.unwrap(), 0);

    let txn = db.begin().await.unwrap();
    OUTBOX.enqueue(&txn, "t", "committed", &serde_json::json!({}), now).await.unwrap();
    txn.commit().await.unwrap();
    let due = OUTBOX.due(&db, now).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].idempotency_key, "committed");
});

on_both_backends!(idempotency_replays_the_first_answer_then_expires, |backend| async move {
    let (_database, db) = open(backend).await;
    let t0 = Utc::now();
    let key = Key::new("create_thing", "organizations/o", "request-1");
    let other_scope = Key::new("create_thing", "organizations/p", "request-1");
    assert_eq!(KEYS.recall(&db, key.as_ref()).await.unwrap(), None);

    // A record made in a transaction that rolls back is not remembered.
    let txn = db.begin().await.unwrap();
    KEYS.record(&txn, key.as_ref(), "rolled back", t0).await.unwrap();
    txn.rollback().await.unwrap();
    assert_eq!(KEYS.recall(&db, key.as_ref()).await.unwrap(), None);

    let txn = db.begin().await.unwrap();
    KEYS.record(&txn, key.as_ref(), "things/1", t0).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(KEYS.recall(&db, key.as_ref()).await.unwrap().as_deref(), Some("things/1"));
    // Scopes keep tenants apart; a request without an id is never remembered.
    assert_eq!(KEYS.recall(&db, other_scope.as_ref()).await.unwrap(), None);
    KEYS.record(&db, None, "ignored", t0).await.unwrap();
    assert_eq!(KEYS.recall(&db, None).await.unwrap(), None);
    // A second first answer for one key is refused, so concurrent first requests cannot both act.
    assert!(matches!(
        KEYS.record(&db, key.as_ref(), "things/2", t0).await,
        Err(steward_storage::idempotency::RecordError::Conflict)
    ));

    // Kept for the whole retention, removed after it.
    assert_eq!(KEYS.expire(&db, t0 + RETENTION).await.unwrap(), 0);
    assert!(KEYS.recall(&db, key.as_ref()).await.unwrap().is_some());
    assert_eq!(KEYS.expire(&db, t0 + RETENTION + Duration::seconds(1)).await.unwrap(), 1);
    assert_eq!(KEYS.recall(&db, key.as_ref()).await.unwrap(), None);
});

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = steward_storage::connect("mysql://root@localhost/x", 1).await.unwrap_err();
    assert!(err.to_string().contains("unsupported database url"), "{err}");
}

// A transaction that reads, lets another connection write, then writes itself: on SQLite a plain
// deferred transaction fails here at once with SQLITE_BUSY (its snapshot went stale); one opened
// by `begin_write` holds the write lock from the start, so the other writer queues behind it.
on_both_backends!(
    write_transactions_that_read_first_do_not_fail_on_a_concurrent_write,
    |backend| async move {
        let (_database, db) = open(backend).await;
        for sql in [
            "CREATE TABLE tallies (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
            "INSERT INTO tallies (id, n) VALUES (1, 0)",
        ] {
            db.execute_unprepared(sql).await.unwrap();
        }
        for round in 0..5 {
            let txn = steward_storage::begin_write(&db, "tallies").await.unwrap();
            txn.query_one(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT n FROM tallies WHERE id = 1",
            ))
            .await
            .unwrap()
            .unwrap();
            let other = {
                let db = db.clone();
                tokio::spawn(async move {
                    db.execute_unprepared("UPDATE tallies SET n = n + 1 WHERE id = 1").await
                })
            };
            // Give the other writer every chance to commit before this transaction writes.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            txn.execute_unprepared(&format!("INSERT INTO notes (id, body) VALUES ({round}, 'x')"))
                .await
                .expect("the write after a read must not fail");
            txn.commit().await.unwrap();
            other.await.unwrap().expect("the other writer waits and then succeeds");
        }
        let row = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT (SELECT n FROM tallies WHERE id = 1) + (SELECT COUNT(*) FROM notes) AS total",
        ))
        .await
        .unwrap()
        .unwrap();
        let total: i64 = row.try_get("", "total").unwrap();
        assert_eq!(total, 10, "every write of both sides landed");
    }
);

/// A second pool on the same database: another replica's relay.
async fn second_pool(database: &TestDatabase) -> sea_orm::DatabaseConnection {
    steward_storage::connect(&database.url("storage"), 4).await.unwrap()
}

/// A delivery function that records every key it delivers.
fn recording(delivered: &Arc<Mutex<Vec<String>>>) -> Deliver {
    let delivered = delivered.clone();
    Arc::new(move |message| {
        let delivered = delivered.clone();
        Box::pin(async move {
            delivered.lock().unwrap().push(message.idempotency_key);
            Ok(())
        })
    })
}

// Two replicas relay one table at once, each through its own pool, with deliveries slow enough
// that both passes see the same due rows: every message is delivered once, never twice and
// never by both at the same time.
on_both_backends!(two_relays_on_one_table_deliver_each_message_once, |backend| async move {
    const MESSAGES: usize = 24;
    let (database, db) = open(backend).await;
    let other = second_pool(&database).await;
    let now = Utc::now();
    for i in 0..MESSAGES {
        OUTBOX.enqueue(&db, "t", &format!("key-{i}"), &serde_json::json!({}), now).await.unwrap();
    }
    let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let in_flight = Arc::new(Mutex::new(HashSet::<String>::new()));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let deliver: Deliver = {
        let (counts, in_flight, overlaps) = (counts.clone(), in_flight.clone(), overlaps.clone());
        Arc::new(move |message| {
            let (counts, in_flight, overlaps) =
                (counts.clone(), in_flight.clone(), overlaps.clone());
            Box::pin(async move {
                let key = message.idempotency_key;
                if !in_flight.lock().unwrap().insert(key.clone()) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(std::time::Duration::from_millis(30)).await;
                in_flight.lock().unwrap().remove(&key);
                *counts.lock().unwrap().entry(key).or_default() += 1;
                Ok(())
            })
        })
    };
    let relay = |db: sea_orm::DatabaseConnection| {
        let deliver = deliver.clone();
        tokio::spawn(async move {
            let mut delivered = 0;
            for _ in 0..500 {
                delivered += OUTBOX.relay_once(&db, &deliver, &Utc::now).await.unwrap();
                if OUTBOX.pending(&db).await.unwrap() == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            delivered
        })
    };
    let (a, b) = (relay(db.clone()), relay(other));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(OUTBOX.pending(&db).await.unwrap(), 0);
    assert_eq!(a + b, MESSAGES, "each relay counts only what it delivered");
    assert!(a > 0 && b > 0, "both relays took part: {a} and {b}");
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "no message was delivered twice at once");
    let counts = counts.lock().unwrap().clone();
    assert_eq!(counts.len(), MESSAGES);
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "delivered more than once: {repeated:?}");
});

// A relay that claims a message and dies before finishing (it neither deletes the row nor gives
// it back) holds it for its lease only: another replica leaves it alone meanwhile and delivers
// it once the lease has passed.
on_both_backends!(a_claim_whose_relay_died_is_taken_again_after_its_lease, |backend| async move {
    let (database, db) = open(backend).await;
    let other = second_pool(&database).await;
    let outbox = OUTBOX.with_lease(std::time::Duration::from_secs(10));
    let t0 = Utc::now();
    outbox.enqueue(&db, "t", "orphan", &serde_json::json!({}), t0).await.unwrap();
    let id = outbox.due(&db, t0).await.unwrap()[0].id;

    let until = outbox.claim(&db, id, t0).await.unwrap().expect("the first claim holds");
    assert!(until > t0 + Duration::seconds(9) && until <= t0 + Duration::seconds(10));
    assert_eq!(outbox.claim(&other, id, t0).await.unwrap(), None, "one holder at a time");

    let delivered = Arc::new(Mutex::new(Vec::new()));
    let deliver = recording(&delivered);
    let during = t0 + Duration::seconds(9);
    assert_eq!(outbox.relay_once(&other, &deliver, &|| during).await.unwrap(), 0);
    assert!(delivered.lock().unwrap().is_empty(), "not while the lease lasts");
    let after = t0 + Duration::seconds(10) + Duration::milliseconds(1);
    assert_eq!(outbox.relay_once(&other, &deliver, &|| after).await.unwrap(), 1);
    assert_eq!(*delivered.lock().unwrap(), ["orphan"]);
    assert_eq!(outbox.pending(&db).await.unwrap(), 0);
});

// A delivery that never answers is abandoned within the lease (after half of it) and counted
// as a failed attempt, so a live relay never holds a message past its claim.
on_both_backends!(a_hung_delivery_is_abandoned_before_its_lease_ends, |backend| async move {
    /// Records when the delivery holding it was dropped (abandoned).
    struct Abandoned(Arc<Mutex<Option<std::time::Instant>>>);
    impl Drop for Abandoned {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(std::time::Instant::now());
        }
    }

    let (_database, db) = open(backend).await;
    let outbox = OUTBOX.with_lease(std::time::Duration::from_secs(4));
    assert_eq!(outbox.delivery_timeout(), std::time::Duration::from_secs(2));
    let t0 = Utc::now();
    outbox.enqueue(&db, "t", "stuck", &serde_json::json!({}), t0).await.unwrap();
    let started = Arc::new(Mutex::new(None));
    let abandoned = Arc::new(Mutex::new(None));
    let deliver: Deliver = {
        let (started, abandoned) = (started.clone(), abandoned.clone());
        Arc::new(move |message| {
            let (started, abandoned) = (started.clone(), abandoned.clone());
            Box::pin(async move {
                if message.attempts == 0 {
                    *started.lock().unwrap() = Some(std::time::Instant::now());
                    let _guard = Abandoned(abandoned);
                    std::future::pending::<()>().await;
                }
                Ok(())
            })
        })
    };
    assert_eq!(outbox.relay_once(&db, &deliver, &|| t0).await.unwrap(), 0);
    let held = abandoned.lock().unwrap().unwrap() - started.lock().unwrap().unwrap();
    assert!(held < outbox.lease(), "abandoned before the lease ended, not after {held:?}");
    // Given back with a backoff, as any failure.
    assert!(outbox.due(&db, t0).await.unwrap().is_empty());
    let retry = t0 + Duration::seconds(1);
    assert_eq!(outbox.due(&db, retry).await.unwrap()[0].attempts, 1);
    assert_eq!(outbox.relay_once(&db, &deliver, &|| retry).await.unwrap(), 1);
    assert_eq!(outbox.pending(&db).await.unwrap(), 0);
});

// A relay that outlived its lease (stalled, or its clock behind another replica's by more than
// the margin) and then fails does not give the message back: another relay has claimed it
// meanwhile, and that claim stands.
on_both_backends!(a_late_failure_does_not_undo_a_newer_claim, |backend| async move {
    let (database, db) = open(backend).await;
    let other = second_pool(&database).await;
    let outbox = OUTBOX.with_lease(std::time::Duration::from_secs(4));
    let t0 = Utc::now();
    outbox.enqueue(&db, "t", "contested", &serde_json::json!({}), t0).await.unwrap();
    let id = outbox.due(&db, t0).await.unwrap()[0].id;

    let started = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Notify::new());
    let deliver: Deliver = {
        let (started, gate) = (started.clone(), gate.clone());
        Arc::new(move |_| {
            let (started, gate) = (started.clone(), gate.clone());
            Box::pin(async move {
                started.notify_one();
                gate.notified().await;
                Err("peer unavailable".to_string())
            })
        })
    };
    let first = tokio::spawn(async move { outbox.relay_once(&db, &deliver, &|| t0).await });
    started.notified().await;
    let newer = outbox.claim(&other, id, t0 + Duration::seconds(5)).await.unwrap();
    let newer = newer.expect("the first lease has passed by the second relay's clock");
    gate.notify_one();
    assert_eq!(first.await.unwrap().unwrap(), 0);
    let before_newer_ends = newer - Duration::milliseconds(1);
    assert!(
        outbox.due(&other, before_newer_ends).await.unwrap().is_empty(),
        "the failure gave the message back under the newer claim"
    );
});
