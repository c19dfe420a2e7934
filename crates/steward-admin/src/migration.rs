//! Schema of the admin service, written with portable sea-orm-migration statements (SQLite and
//! PostgreSQL).

use sea_orm_migration::prelude::*;

use crate::effects::OUTBOX;

/// `admin_idempotency`, read for one release after [`adopt_idempotency`]: keyed by (organization
/// id or `-platform`, request id).
pub const LEGACY_IDEMPOTENCY: steward_storage::idempotency::Legacy =
    steward_storage::idempotency::Legacy {
        table: "admin_idempotency",
        answer: "resource",
        lookup: |key| {
            let organization = match key.operation() {
                "create_organization" => "-platform",
                "create_administrator" => key.scope().strip_prefix("organizations/")?,
                _ => return None,
            };
            Some(vec![
                ("organization_id", organization.to_string()),
                ("request_id", key.request().to_string()),
            ])
        },
    };

/// Copies `admin_idempotency` (organization id, request id → resource) into
/// [`IDEMPOTENCY`](crate::IDEMPOTENCY), keyed by operation and scope.
pub fn adopt_idempotency() -> steward_storage::idempotency::Adopt {
    steward_storage::idempotency::Adopt {
        name: "m20261130_000001_admin_idempotency_keys",
        into: crate::IDEMPOTENCY,
        from: "admin_idempotency",
        copy: "SELECT CASE WHEN organization_id = '-platform' \
               THEN 'create_organization|platform|' || request_id \
               ELSE 'create_administrator|organizations/' || organization_id || '|' || request_id \
               END, resource, created_at FROM admin_idempotency WHERE true",
    }
}

/// Creates every `admin_*` table.
pub struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m20250101_000001_admin_tables"
    }
}

fn id(name: &str) -> Alias {
    Alias::new(name)
}

fn text(name: &str) -> ColumnDef {
    ColumnDef::new(id(name)).string().not_null().to_owned()
}

fn time(name: &str) -> ColumnDef {
    ColumnDef::new(id(name)).timestamp_with_time_zone().not_null().to_owned()
}

fn flag(name: &str) -> ColumnDef {
    ColumnDef::new(id(name)).boolean().not_null().default(false).to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(id("admin_organizations"))
                    .if_not_exists()
                    .col(text("id").primary_key())
                    .col(text("display_name"))
                    .col(ColumnDef::new(id("revision")).big_integer().not_null().default(0))
                    .col(time("created_at"))
                    .col(time("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(id("admin_administrators"))
                    .if_not_exists()
                    .col(text("id").primary_key())
                    .col(text("organization_id"))
                    .col(text("email"))
                    .col(text("email_lower"))
                    .col(text("role"))
                    .col(flag("billing"))
                    .col(flag("mfa_required"))
                    .col(flag("mfa_enrolled"))
                    .col(flag("whats_new"))
                    .col(text("state"))
                    .col(text("invited_by"))
                    .col(ColumnDef::new(id("revision")).big_integer().not_null().default(0))
                    .col(time("created_at"))
                    .col(time("updated_at"))
                    .col(ColumnDef::new(id("activated_at")).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("admin_administrators_org_email")
                    .table(id("admin_administrators"))
                    .col(id("organization_id"))
                    .col(id("email_lower"))
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(id("admin_idempotency"))
                    .if_not_exists()
                    .col(text("organization_id"))
                    .col(text("request_id"))
                    .col(text("resource"))
                    .col(time("created_at"))
                    .primary_key(Index::create().col(id("organization_id")).col(id("request_id")))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(id("admin_payment_cards"))
                    .if_not_exists()
                    .col(text("organization_id").primary_key())
                    .col(text("brand"))
                    .col(text("last4"))
                    .col(ColumnDef::new(id("exp_month")).integer().not_null())
                    .col(ColumnDef::new(id("exp_year")).integer().not_null())
                    .col(text("cardholder_name"))
                    .col(text("updated_by"))
                    .col(ColumnDef::new(id("revision")).big_integer().not_null().default(0))
                    .col(time("created_at"))
                    .col(time("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(id("admin_audit_events"))
                    .if_not_exists()
                    .col(text("name").primary_key())
                    .col(text("organization_id"))
                    .col(text("actor"))
                    .col(text("action"))
                    .col(text("target"))
                    .col(text("result"))
                    .col(ColumnDef::new(id("status_code")).integer().not_null())
                    .col(ColumnDef::new(id("reason")).text().not_null())
                    .col(text("request_id"))
                    .col(text("client_address"))
                    .col(time("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("admin_audit_events_org_time")
                    .table(id("admin_audit_events"))
                    .col(id("organization_id"))
                    .col(id("created_at"))
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager.create_table(OUTBOX.create_table()).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "admin_outbox",
            "admin_audit_events",
            "admin_payment_cards",
            "admin_idempotency",
            "admin_idempotency_keys",
            "admin_administrators",
            "admin_organizations",
        ] {
            manager.drop_table(Table::drop().table(id(table)).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Creates `admin_roles`, an organization's own roles (expand only: no existing table changes;
/// administrators' `role` column takes the role's name).
pub struct CreateRoles;

impl MigrationName for CreateRoles {
    fn name(&self) -> &str {
        "m20261201_000001_admin_roles"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateRoles {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(id("admin_roles"))
                    .if_not_exists()
                    .col(text("name").primary_key())
                    .col(text("organization_id"))
                    .col(text("display_name"))
                    .col(ColumnDef::new(id("description")).text().not_null())
                    .col(ColumnDef::new(id("permissions")).text().not_null())
                    .col(ColumnDef::new(id("revision")).big_integer().not_null().default(1))
                    .col(time("created_at"))
                    .col(time("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("admin_roles_org")
                    .table(id("admin_roles"))
                    .col(id("organization_id"))
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(id("admin_roles")).if_exists().to_owned()).await
    }
}

/// Creates `admin_service_accounts` and `admin_service_account_keys` (expand only).
pub struct CreateServiceAccounts;

impl MigrationName for CreateServiceAccounts {
    fn name(&self) -> &str {
        "m20261201_000002_admin_service_accounts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateServiceAccounts {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(id("admin_service_accounts"))
                    .if_not_exists()
                    .col(text("name").primary_key())
                    .col(text("organization_id"))
                    .col(text("display_name"))
                    .col(text("role"))
                    .col(flag("billing"))
                    .col(text("creator"))
                    .col(time("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("admin_service_accounts_org")
                    .table(id("admin_service_accounts"))
                    .col(id("organization_id"))
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(id("admin_service_account_keys"))
                    .if_not_exists()
                    .col(text("name").primary_key())
                    .col(text("key_id").unique_key())
                    .col(text("service_account"))
                    .col(text("digest"))
                    .col(time("expires_at"))
                    .col(time("created_at"))
                    .col(ColumnDef::new(id("last_used_at")).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("admin_service_account_keys_account")
                    .table(id("admin_service_account_keys"))
                    .col(id("service_account"))
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["admin_service_account_keys", "admin_service_accounts"] {
            manager.drop_table(Table::drop().table(id(table)).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
