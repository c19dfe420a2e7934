//! TOTP secrets written in clear by an earlier version are sealed by the start-up pass, and
//! still open to the same secret; sealed values and empty columns are left alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    clippy::needless_pass_by_value
)]

mod support;

use chrono::Utc;
use sea_orm::{EntityTrait, Set};
use steward_auth::entity::credential;

fn row(
    administrator: &str,
    secret: Option<String>,
    pending: Option<String>,
) -> credential::ActiveModel {
    let now = Utc::now();
    credential::ActiveModel {
        administrator: Set(administrator.into()),
        organization: Set("organizations/o".into()),
        organization_display_name: Set("O".into()),
        email: Set(format!("{}@example.com", administrator.rsplit('/').next().unwrap())),
        password_hash: Set(None),
        activated_at: Set(None),
        mfa_secret: Set(secret),
        mfa_enrolled: Set(true),
        mfa_pending_secret: Set(pending),
        mfa_pending_expires_at: Set(None),
        mfa_last_step: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

#[tokio::test]
async fn secrets_stored_in_clear_are_sealed_at_start() {
    let h = support::harness().await;
    let (db, sealer) = (&h.state.db, &h.state.sealer);
    let (legacy, current, none) = (
        "organizations/o/administrators/legacy",
        "organizations/o/administrators/current",
        "organizations/o/administrators/none",
    );
    let already = sealer.seal(current, "KRSXG5CTMVRXEZLU").unwrap();
    credential::Entity::insert_many([
        row(legacy, Some("JBSWY3DPEHPK3PXP".into()), Some("GEZDGNBVGY3TQOJQ".into())),
        row(current, Some(already.clone()), None),
        row(none, None, None),
    ])
    .exec(db)
    .await
    .unwrap();

    assert_eq!(steward_auth::sealed::seal_legacy(db, sealer).await.unwrap(), 1);
    let get = |name: &'static str| async move {
        credential::Entity::find_by_id(name.to_string()).one(db).await.unwrap().unwrap()
    };
    let sealed = get(legacy).await;
    let secret = sealed.mfa_secret.unwrap();
    let pending = sealed.mfa_pending_secret.unwrap();
    assert!(secret.starts_with("v1:") && !secret.contains("JBSWY3DPEHPK3PXP"), "{secret}");
    assert_eq!(sealer.open(legacy, &secret).unwrap(), "JBSWY3DPEHPK3PXP");
    assert_eq!(sealer.open(legacy, &pending).unwrap(), "GEZDGNBVGY3TQOJQ");
    assert_eq!(get(current).await.mfa_secret.unwrap(), already, "sealed values are left alone");
    assert_eq!(get(none).await.mfa_secret, None);
    assert_eq!(steward_auth::sealed::seal_legacy(db, sealer).await.unwrap(), 0, "idempotent");
}
