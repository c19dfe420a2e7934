//! Billing: the organization's payment card, for billing administrators (BillingService). The
//! request's card number and CVC are validated ([`crate::card`]) and dropped; they are never
//! stored, logged, put in an error message or an audit event.

use std::collections::HashSet;

use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, Set};
use steward_proto::billing::v1::*;
use steward_runtime::authn::Principal;
use steward_runtime::roles::Permission;
use steward_runtime::{ApiError, ApiResult};

use crate::audit::Auditor;
use crate::card::{self, Brand};
use crate::entity::payment_card;
use crate::state::*;

/// Longest cardholder name.
pub const MAX_CARDHOLDER: usize = 200;

const PATHS: &[&str] = &["card_number", "cvc", "exp_month", "exp_year", "cardholder_name"];

/// How recent a sign-in must be to change the payment card, grant billing or reset someone's MFA.
pub const RECENT_AUTHENTICATION_SECS: i64 = 300;

/// `organizations/{o}/paymentCard` -> `{o}`.
fn parse_card_name(field: &str, name: &str) -> ApiResult<String> {
    let org = name.strip_suffix("/paymentCard").ok_or_else(|| {
        ApiError::invalid(field, "must look like `organizations/{id}/paymentCard`")
    })?;
    parse_org(field, org)
}

fn card_to_proto(row: &payment_card::Model, now: chrono::DateTime<chrono::Utc>) -> PaymentCard {
    PaymentCard {
        name: format!("{}/paymentCard", org_name(&row.organization_id)),
        brand: Brand::parse(&row.brand)
            .map(|b| b.to_proto())
            .unwrap_or(CardBrand::Unspecified)
            .into(),
        last4: row.last4.clone(),
        exp_month: row.exp_month,
        exp_year: row.exp_year,
        cardholder_name: row.cardholder_name.clone(),
        card_number: String::new(),
        cvc: String::new(),
        expired: card::expired(row.exp_month, row.exp_year, now),
        expires_soon: card::expires_soon(row.exp_month, row.exp_year, now),
        update_time: Some(timestamp(row.updated_at)),
        updated_by: row.updated_by.clone(),
        etag: etag(&["paymentCard", &row.organization_id, &row.revision.to_string()]),
    }
}

/// GetPaymentCard: the organization's card, for an administrator with billing access.
pub async fn get(
    state: &State,
    p: &Principal,
    req: GetPaymentCardRequest,
) -> ApiResult<GetPaymentCardResponse> {
    p.check_organization(&req.name)?;
    let org_id = parse_card_name("name", &req.name)?;
    caller_may_read(state, p, Need::Permission(Permission::BillingRead)).await?;
    let row = payment_card::Entity::find_by_id(org_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::NotFound(req.name.clone()))?;
    Ok(GetPaymentCardResponse { payment_card: Some(card_to_proto(&row, state.now())) })
}

/// UpdatePaymentCard: sets or changes the card (needs billing access and a recent sign-in).
pub async fn update(
    state: &State,
    p: &Principal,
    audit: &Auditor,
    req: UpdatePaymentCardRequest,
) -> ApiResult<UpdatePaymentCardResponse> {
    let input = req.payment_card.ok_or_else(|| ApiError::invalid("payment_card", "is required"))?;
    p.check_organization(&input.name)?;
    let org_id = parse_card_name("payment_card.name", &input.name)?;
    // A stolen access token alone must not redirect the billing: the card changes only
    // within minutes of a sign-in (password and second factor).
    p.require_recent_authentication(state.now(), RECENT_AUTHENTICATION_SECS)?;
    let mask: Vec<String> = req.update_mask.map(|m| m.paths).unwrap_or_default();
    let mut paths: HashSet<&str> = HashSet::new();
    for path in &mask {
        let known = PATHS.iter().find(|p| **p == path).ok_or_else(|| {
            ApiError::invalid("update_mask", format!("`{path}` cannot be updated"))
        })?;
        paths.insert(known);
    }
    let replace = paths.is_empty();
    let new_number = replace || paths.contains("card_number");
    if new_number {
        for required in ["cvc", "exp_month", "exp_year"] {
            if !replace && !paths.contains(required) {
                return Err(ApiError::invalid(
                    "update_mask",
                    format!("a new card_number also needs `{required}`"),
                ));
            }
        }
    } else if paths.contains("cvc") {
        return Err(ApiError::invalid(
            "update_mask",
            "`cvc` is only accepted with a new card_number",
        ));
    }
    if input.cardholder_name.chars().count() > MAX_CARDHOLDER {
        return Err(ApiError::invalid(
            "payment_card.cardholder_name",
            "must be at most 200 characters",
        ));
    }
    let now = state.now();
    let facts = if new_number {
        let facts = card::check_number("payment_card.card_number", &input.card_number)?;
        card::check_cvc("payment_card.cvc", &input.cvc, facts.brand)?;
        Some(facts)
    } else {
        None
    };

    let txn = state.begin_write().await?;
    lock_org(&txn, &org_id).await?;
    caller_row(&txn, p, Need::Permission(Permission::BillingUpdate)).await?;
    let current = payment_card::Entity::find_by_id(org_id.clone()).one(&txn).await?;
    if let Some(current) = &current {
        let current_etag =
            etag(&["paymentCard", &current.organization_id, &current.revision.to_string()]);
        if !input.etag.is_empty() && input.etag != current_etag {
            return Err(ApiError::Aborted(
                "the payment card was changed since it was read; get it again".into(),
            ));
        }
    }
    let saved = match (current, facts) {
        (None, None) => {
            return Err(ApiError::invalid(
                "payment_card.card_number",
                "setting the first card requires a card number",
            ));
        }
        (None, Some(facts)) => {
            card::check_expiry("payment_card", input.exp_month, input.exp_year, now)?;
            payment_card::ActiveModel {
                organization_id: Set(org_id.clone()),
                brand: Set(facts.brand.as_str().to_string()),
                last4: Set(facts.last4),
                exp_month: Set(input.exp_month),
                exp_year: Set(input.exp_year),
                cardholder_name: Set(input.cardholder_name.clone()),
                updated_by: Set(p.administrator.clone()),
                revision: Set(1),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(&txn)
            .await?
        }
        (Some(current), facts) => {
            let month = if facts.is_some() || paths.contains("exp_month") {
                input.exp_month
            } else {
                current.exp_month
            };
            let year = if facts.is_some() || paths.contains("exp_year") {
                input.exp_year
            } else {
                current.exp_year
            };
            card::check_expiry("payment_card", month, year, now)?;
            let revision = current.revision;
            let mut active = current.into_active_model();
            if let Some(facts) = facts {
                active.brand = Set(facts.brand.as_str().to_string());
                active.last4 = Set(facts.last4);
            }
            if replace || paths.contains("cardholder_name") {
                active.cardholder_name = Set(input.cardholder_name.clone());
            }
            active.exp_month = Set(month);
            active.exp_year = Set(year);
            active.updated_by = Set(p.administrator.clone());
            active.revision = Set(revision + 1);
            active.updated_at = Set(now);
            active.update(&txn).await?
        }
    };
    audit.allowed(&txn, &input.name, "payment card set", now).await?;
    txn.commit().await?;
    tracing::info!(organization = %org_name(&org_id), brand = %saved.brand, "payment card updated");
    Ok(UpdatePaymentCardResponse { payment_card: Some(card_to_proto(&saved, now)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_names_parse() {
        assert_eq!(parse_card_name("name", "organizations/o-1/paymentCard").unwrap(), "o-1");
        assert!(parse_card_name("name", "organizations/o-1").is_err());
        assert!(parse_card_name("name", "organizations/o-1/administrators/a/paymentCard").is_err());
    }
}
