//! `steward billing ...` and `steward audit ...`.

use serde_json::Value;
use steward_proto::audit::v1::ListAuditEventsRequest;
use steward_proto::billing::v1::{GetPaymentCardRequest, PaymentCard, UpdatePaymentCardRequest};

use crate::cli::{AuditCommand, BillingCommand};
use crate::context::Context;
use crate::error::{CliError, Result};
use crate::output::{Column, Show};
use crate::{convert, input, output};

const AUDIT_COLUMNS: &[Column] = &[
    Column::new("TIME", "create_time", Show::Time),
    Column::new("ACTOR", "actor", Show::Ref),
    Column::new("ACTION", "", Show::Derived(action)),
    Column::new("TARGET", "target", Show::Relative),
    Column::new("RESULT", "result", Show::Enum("RESULT_")),
    Column::new("REASON", "reason", Show::Text),
];

/// `/steward.admin.v1.AdminService/GetProfile` -> `GetProfile` (method names are unique
/// across the services; `--output json` has the full one).
fn action(item: &Value) -> String {
    let action = item.get("action").and_then(Value::as_str).unwrap_or_default();
    action.rsplit('/').next().unwrap_or(action).to_string()
}

/// Runs a `billing` subcommand. The card number and CVC come from stdin only.
pub async fn billing(ctx: &mut Context, cmd: BillingCommand) -> Result<u8> {
    let name = format!("{}/paymentCard", ctx.organization()?);
    let card = match cmd {
        BillingCommand::Get => {
            ctx.call(move |s| {
                let name = name.clone();
                async move { s.billing().get_payment_card(GetPaymentCardRequest { name }).await }
            })
            .await?
            .payment_card
        }
        BillingCommand::Set { number_stdin, exp, name: holder } => {
            let mut card = PaymentCard { name, ..Default::default() };
            let mut paths = Vec::new();
            if number_stdin {
                if exp.is_none() {
                    return Err(CliError::Usage("a new card number needs --exp MM/YYYY".into()));
                }
                let mut lines = input::stdin_lines(2, "the card number and the CVC")?.into_iter();
                card.card_number = lines.next().unwrap_or_default();
                card.cvc = lines.next().unwrap_or_default();
                paths.extend(["card_number", "cvc"]);
            }
            if let Some(exp) = exp {
                let (month, year) = input::expiry(&exp)?;
                card.exp_month = month;
                card.exp_year = year;
                paths.extend(["exp_month", "exp_year"]);
            }
            if let Some(holder) = holder {
                card.cardholder_name = holder;
                paths.push("cardholder_name");
            }
            if paths.is_empty() {
                return Err(CliError::Usage(
                    "nothing to change: give --number-stdin, --exp or --name".into(),
                ));
            }
            let request = UpdatePaymentCardRequest {
                payment_card: Some(card),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.into_iter().map(str::to_string).collect(),
                }),
            };
            ctx.call(move |s| {
                let request = request.clone();
                async move { s.billing().update_payment_card(request).await }
            })
            .await?
            .payment_card
        }
    };
    let card = card.ok_or(CliError::Protocol("no payment card in the answer"))?;
    output::object(ctx.format, &convert::payment_card(&card))?;
    Ok(0)
}

/// Runs an `audit` subcommand.
pub async fn audit(ctx: &mut Context, cmd: AuditCommand) -> Result<u8> {
    let AuditCommand::List { filter, limit } = cmd;
    let parent = ctx.organization()?;
    let mut items = Vec::new();
    let mut page_token = String::new();
    while items.len() < limit {
        let request = ListAuditEventsRequest {
            parent: parent.clone(),
            page_size: i32::try_from(limit - items.len()).unwrap_or(1000).min(1000),
            page_token,
            filter: filter.clone().unwrap_or_default(),
        };
        let page = ctx
            .call(move |s| {
                let request = request.clone();
                async move { s.audit().list_audit_events(request).await }
            })
            .await?;
        items.extend(page.audit_events.iter().map(convert::audit_event));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    items.truncate(limit);
    output::list(ctx.format, &items, AUDIT_COLUMNS)?;
    Ok(0)
}
