//! Sign-in throttling per account (the email as typed, so unknown emails are throttled exactly
//! like known ones) and per client address. A key may fail a few times freely; from then on each
//! failure locks it for a delay that doubles with every further failure, up to a ceiling.
//! Counters are forgotten after an hour without failures; a successful sign-in clears the
//! account's counter (not the address's). Time comes from the injected clock.

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

/// The address key of a peer address (`ip:port` or `[ip6]:port`), without the port.
pub fn address_key(client_address: &str) -> String {
    let host = match client_address.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().to_string(),
        Err(_) => client_address.to_string(),
    };
    format!("address:{host}")
}

/// Refuses with RESOURCE_EXHAUSTED (and the time left) while any of `keys` is locked.
pub async fn check(
    db: &impl ConnectionTrait,
    keys: &[String],
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let mut wait = 0_i64;
    for key in keys {
        if let Some(row) = throttle::Entity::find_by_id(key.clone()).one(db).await? {
            if let Some(until) = row.locked_until {
                let left = (until - now).num_milliseconds();
                wait = wait.max(left);
            }
        }
    }
    if wait > 0 {
        let secs = u64::try_from((wait + 999) / 1000).unwrap_or(1).max(1);
        return Err(ApiError::ResourceExhausted { retry_after: Duration::from_secs(secs) });
    }
    Ok(())
}

/// Counts a failure against `key` under `policy`. The count is incremented in the database
/// (`failures = failures + 1`), never read and written back, so concurrent failures (a burst of
/// parallel guesses) each count.
pub async fn fail(
    db: &impl ConnectionTrait,
    key: &str,
    policy: &Policy,
    now: DateTime<Utc>,
) -> ApiResult<()> {
    // A counter quiet for `reset_after_secs` starts over.
    throttle::Entity::update_many()
        .col_expr(throttle::Column::Failures, Expr::value(0))
        .filter(throttle::Column::Key.eq(key))
        .filter(
            throttle::Column::UpdatedAt
                .lt(now - chrono::Duration::seconds(policy.reset_after_secs)),
        )
        .exec(db)
        .await?;
    let row = throttle::ActiveModel {
        key: Set(key.to_string()),
        failures: Set(1),
        locked_until: Set(None),
        updated_at: Set(now),
    };
    throttle::Entity::insert(row)
        .on_conflict(
            OnConflict::column(throttle::Column::Key)
                .value(
                    throttle::Column::Failures,
                    Expr::col((throttle::Entity, throttle::Column::Failures)).add(1),
                )
                .update_column(throttle::Column::UpdatedAt)
                .to_owned(),
        )
        .exec(db)
        .await?;
    let failures =
        throttle::Entity::find_by_id(key.to_string()).one(db).await?.map_or(1, |r| r.failures);
    let delay = policy.delay(failures);
    if delay > 0 {
        let until = now + chrono::Duration::seconds(delay);
        // Only ever extends a lock, so a slower concurrent failure cannot shorten it.
        throttle::Entity::update_many()
            .col_expr(throttle::Column::LockedUntil, Expr::value(Some(until)))
            .filter(throttle::Column::Key.eq(key))
            .filter(
                throttle::Column::LockedUntil.is_null().or(throttle::Column::LockedUntil.lt(until)),
            )
            .exec(db)
            .await?;
        tracing::info!(
            failures,
            delay_secs = delay,
            kind = key.split(':').next().unwrap_or(""),
            "sign-in throttled"
        );
    }
    Ok(())
}

/// Forgets the failures of `key`.
pub async fn clear(db: &impl ConnectionTrait, key: &str) -> ApiResult<()> {
    throttle::Entity::delete_by_id(key.to_string()).exec(db).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_failures() {
        let delays: Vec<i64> = (1..=8).map(|n| ACCOUNT.delay(n)).collect();
        assert_eq!(delays, vec![0, 0, 0, 0, 2, 4, 8, 16]);
        assert_eq!(ACCOUNT.delay(100), 900);
    }

    #[tokio::test]
    async fn concurrent_failures_all_count() {
        for backend in steward_storage::testing::backends() {
            let db = steward_storage::testing::TestDatabase::create(backend).await.unwrap();
            let conn = steward_storage::connect(&db.url("auth"), 8).await.unwrap();
            <crate::Migrator as sea_orm_migration::MigratorTrait>::up(&conn, None).await.unwrap();
            let now = Utc::now();
            let key = account_key("victim@example.com");
            let attempts = (0..16).map(|_| fail(&conn, &key, &ADDRESS, now));
            for result in futures::future::join_all(attempts).await {
                result.unwrap();
            }
            let row = throttle::Entity::find_by_id(key).one(&conn).await.unwrap().unwrap();
            assert_eq!(row.failures, 16, "lost updates on {backend:?}");
            // Past the free failures of ADDRESS (20)? Not yet: no lock.
            assert!(row.locked_until.is_none());
        }
    }

    #[test]
    fn address_keys_drop_the_port() {
        assert_eq!(address_key("127.0.0.1:5555"), "address:127.0.0.1");
        assert_eq!(address_key("[::1]:5555"), "address:::1");
        assert_eq!(address_key(""), "address:");
        assert_eq!(account_key(" Ada@Example.COM "), "account:ada@example.com");
    }
}
