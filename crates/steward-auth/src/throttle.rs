//! Throttling of guesses (passwords, second-factor codes, link tokens) and of password-reset
//! mail, per account (the email as typed, so unknown emails are throttled exactly like known ones)
//! and per client address (IPv6 by /64).
//!
//! Every throttle **reserves before it evaluates**: [`reserve`] takes one attempt from the key's
//! allowance with a single conditional `UPDATE` (an atomic increment that only succeeds while the
//! key is not locked), so a burst of parallel guesses, on any number of replicas sharing the
//! database, evaluates at most the free allowance; the rest are refused before any password is
//! hashed. The attempt that uses the last free slot, and every later one, also sets the lock
//! (`locked_until`), so at most one attempt per lock window gets through and the window doubles
//! each time, up to a ceiling. A successful attempt gives its slot back ([`release`]), or forgets
//! the account's failures altogether ([`clear`]). Counters quiet for an hour start over. Time
//! comes from the injected clock.
//!
//! Strangers cannot lock an administrator out: see [`Admission`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use steward_runtime::{ApiError, ApiResult};

use crate::entity::throttle;

/// One throttled dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Failures allowed before the first lock.
    pub free_failures: i32,
    /// First lock.
    pub base_delay_secs: i64,
    /// Longest lock.
    pub max_delay_secs: i64,
    /// Quiet time after which the counter starts over.
    pub reset_after_secs: i64,
}

/// Per account: five free failures, then 2 s, 4 s, 8 s ... up to 15 minutes.
pub const ACCOUNT: Policy =
    Policy { free_failures: 5, base_delay_secs: 2, max_delay_secs: 900, reset_after_secs: 3600 };
/// Per client address: more slack (offices share an address), same growth.
pub const ADDRESS: Policy =
    Policy { free_failures: 20, base_delay_secs: 2, max_delay_secs: 900, reset_after_secs: 3600 };

/// Password-reset requests per email: three an hour, then nothing is sent until the hour is over.
pub const RESET_EMAIL: Policy = Policy {
    free_failures: 3,
    base_delay_secs: 3600,
    max_delay_secs: 3600,
    reset_after_secs: 3600,
};
/// Password-reset requests per client address: thirty an hour.
pub const RESET_ADDRESS: Policy = Policy {
    free_failures: 30,
    base_delay_secs: 3600,
    max_delay_secs: 3600,
    reset_after_secs: 3600,
};

impl Policy {
    /// The lock imposed after the `failures`-th consecutive failure (zero while still free).
    pub fn delay(&self, failures: i32) -> i64 {
        if failures < self.free_failures {
            return 0;
        }
        let doublings = u32::try_from(failures - self.free_failures).unwrap_or(0).min(30);
        self.base_delay_secs.saturating_mul(1_i64 << doublings).min(self.max_delay_secs)
    }
}

/// The account key of `email`.
pub fn account_key(email: &str) -> String {
    format!("account:{}", email.trim().to_lowercase())
}

/// The key counting password-reset requests for `email` (as typed, so unknown emails count
/// exactly like known ones).
pub fn reset_key(email: &str) -> String {
    format!("reset:{}", email.trim().to_lowercase())
}

/// The key counting password-reset requests from a client address.
pub fn reset_address_key(client_address: &str) -> String {
    format!("reset-{}", address_key(client_address))
}

/// The key counting wrong second-factor codes of `administrator`.
pub fn mfa_key(administrator: &str) -> String {
    format!("mfa:{administrator}")
}

/// The address key of a client address (`ip`, `ip:port` or `[ip6]:port`), without the port.
/// IPv6 addresses are keyed by their /64: one host usually holds a whole /64, so keying by the
/// full address would hand an attacker 2^64 fresh counters.
pub fn address_key(client_address: &str) -> String {
    let ip = client_address
        .parse::<std::net::SocketAddr>()
        .map(|addr| addr.ip())
        .or_else(|_| client_address.parse::<std::net::IpAddr>());
    let host = match ip {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let segments = v6.segments();
            let prefix = std::net::Ipv6Addr::new(
                segments[0],
                segments[1],
                segments[2],
                segments[3],
                0,
                0,
                0,
                0,
            );
            format!("{prefix}/64")
        }
        Ok(std::net::IpAddr::V6(v6)) => v6.to_canonical().to_string(),
        Ok(ip) => ip.to_string(),
        Err(_) => client_address.to_string(),
    };
    format!("address:{host}")
}

/// The key counting invalid invite and reset links presented from a client address.
pub fn link_address_key(client_address: &str) -> String {
    format!("link-{}", address_key(client_address))
}

/// Invalid link tokens per client address: twenty free, then the usual doubling lock.
pub const LINK_ADDRESS: Policy =
    Policy { free_failures: 20, base_delay_secs: 2, max_delay_secs: 900, reset_after_secs: 3600 };

/// Compare-and-swap rounds [`reserve`] tries before refusing.
const RESERVE_ROUNDS: usize = 32;

/// `steward.auth.throttled`: attempts refused by a throttle.
static THROTTLED: std::sync::LazyLock<steward_runtime::metrics::Counter<u64>> =
    std::sync::LazyLock::new(|| {
        steward_runtime::metrics::meter()
            .u64_counter("steward.auth.throttled")
            .with_description("Attempts refused by a throttle (sign-in, links, resets)")
            .build()
    });

fn exhausted(locked_until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> ApiError {
    THROTTLED.add(1, &[]);
    let left = locked_until.map_or(1000, |until| (until - now).num_milliseconds());
    let secs = u64::try_from((left + 999) / 1000).unwrap_or(1).max(1);
    ApiError::ResourceExhausted { retry_after: Duration::from_secs(secs) }
}

/// Takes one attempt from `key`'s allowance under `policy`, before the attempt is evaluated, and
/// answers how many attempts were already counted against the key. Refuses with
/// `RESOURCE_EXHAUSTED` (and the time left) while the key is locked.
///
/// The decision is a compare-and-swap: the counter is read, then updated only if nobody changed
/// it meanwhile (a conditional `UPDATE`), and read again when it lost; so it holds under
/// parallel attempts on SQLite and PostgreSQL alike (PostgreSQL re-evaluates the condition on
/// the row once a concurrent writer commits).
pub async fn reserve(
    db: &impl ConnectionTrait,
    key: &str,
    policy: &Policy,
    now: DateTime<Utc>,
) -> ApiResult<i32> {
    let unlocked =
        || throttle::Column::LockedUntil.is_null().or(throttle::Column::LockedUntil.lte(now));
    // A counter quiet for `reset_after_secs` (and not locked) starts over.
    throttle::Entity::update_many()
        .col_expr(throttle::Column::Failures, Expr::value(0))
        .col_expr(throttle::Column::LockedUntil, Expr::value(Option::<DateTime<Utc>>::None))
        .filter(throttle::Column::Key.eq(key))
        .filter(
            throttle::Column::UpdatedAt
                .lt(now - chrono::Duration::seconds(policy.reset_after_secs)),
        )
        .filter(unlocked())
        .exec(db)
        .await?;
    // Compare-and-swap on the count: the update applies only if nobody took a slot since the
    // read, so each admitted attempt knows exactly how many came before it. A lost race reads
    // again; after a few slots the key is locked and every loser is refused at the read.
    for _ in 0..RESERVE_ROUNDS {
        let Some(current) = throttle::Entity::find_by_id(key.to_string()).one(db).await? else {
            // New, or cleared meanwhile by a concurrent success (which forgets the failures):
            // start the counter at zero and read again.
            start_counter(db, key, now).await?;
            continue;
        };
        if current.locked_until.is_some_and(|until| until > now) {
            return Err(exhausted(current.locked_until, now));
        }
        let taken = current.failures.saturating_add(1);
        let delay = policy.delay(taken);
        // The attempt that uses the last free slot, and every paid one, locks as it is taken.
        let lock = (delay > 0).then(|| now + chrono::Duration::seconds(delay));
        let swapped = throttle::Entity::update_many()
            .col_expr(throttle::Column::Failures, Expr::value(taken))
            .col_expr(throttle::Column::LockedUntil, Expr::value(lock))
            .col_expr(throttle::Column::UpdatedAt, Expr::value(now))
            .filter(throttle::Column::Key.eq(key))
            .filter(throttle::Column::Failures.eq(current.failures))
            .filter(unlocked())
            .exec(db)
            .await?;
        if swapped.rows_affected == 1 {
            if delay > 0 {
                tracing::info!(
                    failures = taken,
                    delay_secs = delay,
                    kind = key.split(':').next().unwrap_or(""),
                    "throttle engaged"
                );
            }
            return Ok(current.failures);
        }
    }
    // Contended beyond reason: refuse rather than evaluate unaccounted.
    Err(exhausted(None, now))
}

/// Creates `key`'s counter at zero unless it exists.
async fn start_counter(db: &impl ConnectionTrait, key: &str, now: DateTime<Utc>) -> ApiResult<()> {
    let row = throttle::ActiveModel {
        key: Set(key.to_string()),
        failures: Set(0),
        locked_until: Set(None),
        updated_at: Set(now),
    };
    throttle::Entity::insert(row)
        .on_conflict(OnConflict::column(throttle::Column::Key).do_nothing().to_owned())
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Gives back the attempt [`reserve`] took, once it turned out to be a success (or was never
/// evaluated). A lock already set stays.
pub async fn release(db: &impl ConnectionTrait, key: &str) -> ApiResult<()> {
    throttle::Entity::update_many()
        .col_expr(throttle::Column::Failures, Expr::col(throttle::Column::Failures).sub(1))
        .filter(throttle::Column::Key.eq(key))
        .filter(throttle::Column::Failures.gt(0))
        .exec(db)
        .await?;
    Ok(())
}

/// Forgets the failures (and any lock) of `key`.
pub async fn clear(db: &impl ConnectionTrait, key: &str) -> ApiResult<()> {
    throttle::Entity::delete_by_id(key.to_string()).exec(db).await?;
    Ok(())
}

/// How long an address an account signed in from stays "known" to it.
pub const KNOWN_ADDRESS_DAYS: i64 = 30;

/// "Known address" markers: remembered for [`KNOWN_ADDRESS_DAYS`] after the last sign-in.
const KNOWN: Policy = Policy {
    free_failures: 1,
    base_delay_secs: 0,
    max_delay_secs: 0,
    reset_after_secs: KNOWN_ADDRESS_DAYS * 24 * 3600,
};

/// The `LIKE` pattern of "known address" markers (kept longer than counters by the janitor).
pub const KNOWN_MARKERS: &str = "known:%";

/// The key marking `address` (an [`address_key`]) as one `account` signed in from.
fn known_key(account: &str, address: &str) -> String {
    format!("known:{account}|{address}")
}

/// The key counting guesses at `account` from a known `address` while the account is locked.
fn pair_key(account: &str, address: &str) -> String {
    format!("pair:{account}|{address}")
}

/// Failures counted against `key` and not yet forgotten (zero when quiet for the policy's reset
/// time). A read, for decisions that take no slot.
async fn recent_failures(
    db: &impl ConnectionTrait,
    key: &str,
    policy: &Policy,
    now: DateTime<Utc>,
) -> ApiResult<i32> {
    let quiet = now - chrono::Duration::seconds(policy.reset_after_secs);
    Ok(throttle::Entity::find_by_id(key.to_string())
        .one(db)
        .await?
        .filter(|row| row.updated_at >= quiet)
        .map_or(0, |row| row.failures))
}

/// The reservations an admitted attempt holds.
#[derive(Debug)]
pub struct Admission {
    account: String,
    address: String,
    address_reserved: bool,
    /// The (account, known address) counter used while the account itself is locked.
    pair: Option<String>,
}

impl Admission {
    /// Admits one guess at an account's secret (password or second factor) from `client_address`.
    ///
    /// Strangers cannot lock an administrator out:
    /// * The address's allowance is soft. When the address is locked (strangers behind the same
    ///   NAT, proxy or ingress have been guessing), a guess is still evaluated for an account with
    ///   no recent failures of its own: guessing from one address is slowed to one guess per
    ///   account per hour, and a correct password for an untouched account always gets through.
    /// * The account's allowance is hard for everyone else, but an address the account signed
    ///   in from within [`KNOWN_ADDRESS_DAYS`] has its own allowance while the account is locked,
    ///   so guesses from elsewhere do not keep the owner out.
    ///
    /// The address is checked first, so a refused attempt never takes (or locks) the account.
    pub async fn admit(
        db: &impl ConnectionTrait,
        account: String,
        account_policy: &Policy,
        client_address: &str,
        now: DateTime<Utc>,
    ) -> ApiResult<Self> {
        let address = address_key(client_address);
        match reserve(db, &address, &ADDRESS, now).await {
            Ok(_) => match reserve(db, &account, account_policy, now).await {
                Ok(_) => Ok(Self { account, address, address_reserved: true, pair: None }),
                Err(ApiError::ResourceExhausted { retry_after }) => {
                    let known =
                        recent_failures(db, &known_key(&account, &address), &KNOWN, now).await? > 0;
                    let pair = pair_key(&account, &address);
                    let admitted = if known {
                        reserve(db, &pair, account_policy, now).await.map(|_| ())
                    } else {
                        Err(ApiError::ResourceExhausted { retry_after })
                    };
                    match admitted {
                        Ok(()) => {
                            tracing::info!("account throttled; evaluating a guess from an address it signed in from");
                            Ok(Self { account, address, address_reserved: true, pair: Some(pair) })
                        }
                        Err(err) => {
                            release(db, &address).await?;
                            Err(err)
                        }
                    }
                }
                Err(err) => {
                    release(db, &address).await?;
                    Err(err)
                }
            },
            Err(ApiError::ResourceExhausted { retry_after }) => {
                let refused = ApiError::ResourceExhausted { retry_after };
                if recent_failures(db, &account, account_policy, now).await? > 0 {
                    return Err(refused);
                }
                if reserve(db, &account, account_policy, now).await? > 0 {
                    // A parallel guess got there first: this one is not evaluated.
                    release(db, &account).await?;
                    return Err(refused);
                }
                tracing::info!("client address throttled; evaluating a guess at an account without recent failures");
                Ok(Self { account, address, address_reserved: false, pair: None })
            }
            Err(err) => Err(err),
        }
    }

    /// The guess was right: the account's failures are forgotten, the address's slot is given
    /// back, and the address becomes known to the account.
    pub async fn succeeded(self, db: &impl ConnectionTrait, now: DateTime<Utc>) -> ApiResult<()> {
        clear(db, &self.account).await?;
        if let Some(pair) = &self.pair {
            clear(db, pair).await?;
        }
        if self.address_reserved {
            release(db, &self.address).await?;
        }
        let known = throttle::ActiveModel {
            key: Set(known_key(&self.account, &self.address)),
            failures: Set(1),
            locked_until: Set(None),
            updated_at: Set(now),
        };
        throttle::Entity::insert(known)
            .on_conflict(
                OnConflict::column(throttle::Column::Key)
                    .update_column(throttle::Column::UpdatedAt)
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the tests start from the wall clock; nothing waits on it
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_failures() {
        let delays: Vec<i64> = (1..=8).map(|n| ACCOUNT.delay(n)).collect();
        assert_eq!(delays, vec![0, 0, 0, 0, 2, 4, 8, 16]);
        assert_eq!(ACCOUNT.delay(100), 900);
    }

    // A burst of parallel attempts takes at most the free allowance: the reservation, not the
    // outcome, decides.
    #[tokio::test]
    async fn parallel_reservations_never_exceed_the_allowance() {
        for (db, conn) in crate::testing::databases().await {
            // Whole seconds, so the stored lock compares exactly whatever the column precision.
            let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
            let key = account_key("victim@example.com");
            let attempts = (0..40).map(|_| reserve(&conn, &key, &ACCOUNT, now));
            let results = futures::future::join_all(attempts).await;
            let admitted = results.iter().filter(|r| r.is_ok()).count();
            let refused = results
                .iter()
                .filter(|r| matches!(r, Err(ApiError::ResourceExhausted { .. })))
                .count();
            assert_eq!(admitted, ACCOUNT.free_failures as usize, "on {:?}", db.backend());
            assert_eq!(admitted + refused, 40, "no other errors on {:?}", db.backend());
            let row = throttle::Entity::find_by_id(key.clone()).one(&conn).await.unwrap().unwrap();
            assert_eq!(row.failures, ACCOUNT.free_failures);
            assert!(row.locked_until.is_some_and(|t| t > now), "locked after the last free slot");
            // Once the lock is over exactly one more attempt gets through, and locks for longer.
            let later = now + chrono::Duration::seconds(ACCOUNT.delay(ACCOUNT.free_failures) + 1);
            let attempts = (0..10).map(|_| reserve(&conn, &key, &ACCOUNT, later));
            let admitted =
                futures::future::join_all(attempts).await.iter().filter(|r| r.is_ok()).count();
            assert_eq!(admitted, 1, "one paid slot per lock window on {:?}", db.backend());
            let row = throttle::Entity::find_by_id(key).one(&conn).await.unwrap().unwrap();
            let lock = row.locked_until.unwrap() - later;
            assert_eq!(lock.num_seconds(), ACCOUNT.delay(ACCOUNT.free_failures + 1));
        }
    }

    #[tokio::test]
    async fn release_gives_the_slot_back_and_quiet_counters_start_over() {
        for (db, conn) in crate::testing::databases().await {
            let now = Utc::now();
            let key = address_key("10.0.0.1:1");
            for _ in 0..3 {
                reserve(&conn, &key, &ADDRESS, now).await.unwrap();
            }
            release(&conn, &key).await.unwrap();
            let row = throttle::Entity::find_by_id(key.clone()).one(&conn).await.unwrap().unwrap();
            assert_eq!(row.failures, 2, "on {:?}", db.backend());
            let much_later = now + chrono::Duration::seconds(ADDRESS.reset_after_secs + 1);
            assert_eq!(reserve(&conn, &key, &ADDRESS, much_later).await.unwrap(), 0);
        }
    }

    // The soft address dimension: a locked address still lets a guess at an account without
    // failures through, but not at one that has them.
    #[tokio::test]
    async fn a_locked_address_spares_accounts_without_failures() {
        for (db, conn) in crate::testing::databases().await {
            let now = Utc::now();
            let client = "192.0.2.7:4000";
            for i in 0..ADDRESS.free_failures {
                let account = account_key(&format!("stranger{i}@example.com"));
                Admission::admit(&conn, account, &ACCOUNT, client, now).await.unwrap();
            }
            let address = address_key(client);
            let row = throttle::Entity::find_by_id(address).one(&conn).await.unwrap().unwrap();
            assert!(row.locked_until.is_some_and(|t| t > now), "address locked");
            let owner = account_key("owner@example.com");
            let admitted = Admission::admit(&conn, owner.clone(), &ACCOUNT, client, now).await;
            assert!(admitted.is_ok(), "clean account admitted on {:?}", db.backend());
            // That guess was wrong: the owner's account now has a failure, so the next guess from
            // the locked address waits.
            let again = Admission::admit(&conn, owner.clone(), &ACCOUNT, client, now).await;
            assert!(matches!(again, Err(ApiError::ResourceExhausted { .. })), "{again:?}");
            let row = throttle::Entity::find_by_id(owner).one(&conn).await.unwrap().unwrap();
            assert_eq!(row.failures, 1, "the refused attempt took no slot");
            // Another address is unaffected.
            let other = account_key("owner@example.com");
            Admission::admit(&conn, other, &ACCOUNT, "198.51.100.1:1", now).await.unwrap();
        }
    }

    // Guesses from elsewhere lock the account, but not for the address its owner signs in from.
    #[tokio::test]
    async fn a_locked_account_still_admits_its_known_address() {
        for (db, conn) in crate::testing::databases().await {
            let now = Utc::now();
            let owner = account_key("owner@example.com");
            let home = "203.0.113.5:1000";
            Admission::admit(&conn, owner.clone(), &ACCOUNT, home, now)
                .await
                .unwrap()
                .succeeded(&conn, now)
                .await
                .unwrap();
            for _ in 0..ACCOUNT.free_failures {
                Admission::admit(&conn, owner.clone(), &ACCOUNT, "198.51.100.9:1", now)
                    .await
                    .unwrap();
            }
            let attacker =
                Admission::admit(&conn, owner.clone(), &ACCOUNT, "198.51.100.9:2", now).await;
            assert!(matches!(attacker, Err(ApiError::ResourceExhausted { .. })), "{attacker:?}");
            let elsewhere =
                Admission::admit(&conn, owner.clone(), &ACCOUNT, "192.0.2.77:3", now).await;
            assert!(matches!(elsewhere, Err(ApiError::ResourceExhausted { .. })), "{elsewhere:?}");
            let admitted = Admission::admit(&conn, owner.clone(), &ACCOUNT, home, now).await;
            assert!(admitted.is_ok(), "the owner's address on {:?}: {admitted:?}", db.backend());
            // Refused attempts took no address slot from their addresses.
            let row = throttle::Entity::find_by_id(address_key("192.0.2.77:3"))
                .one(&conn)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(row.failures, 0);
        }
    }

    #[test]
    fn address_keys_drop_the_port() {
        assert_eq!(address_key("127.0.0.1:5555"), "address:127.0.0.1");
        assert_eq!(address_key("[::1]:5555"), "address:::/64");
        assert_eq!(address_key("[2001:db8:1:2:3:4:5:6]:1"), "address:2001:db8:1:2::/64");
        assert_eq!(address_key("2001:db8:1:2:ffff::1"), "address:2001:db8:1:2::/64");
        assert_eq!(address_key("[::ffff:192.0.2.1]:9"), "address:192.0.2.1");
        assert_eq!(address_key("192.0.2.1"), "address:192.0.2.1");
        assert_eq!(address_key(""), "address:");
        assert_eq!(account_key(" Ada@Example.COM "), "account:ada@example.com");
    }
}
