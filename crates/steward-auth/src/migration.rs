//! Schema of the auth service's tables (portable to SQLite and PostgreSQL).

use sea_orm_migration::prelude::*;

/// Creates every `auth_*` table.
#[derive(Debug)]
pub struct CreateTables;

impl MigrationName for CreateTables {
    fn name(&self) -> &str {
        "m20260101_000001_auth_create_tables"
    }
}

fn a(name: &str) -> Alias {
    Alias::new(name)
}

fn text(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).string().not_null().to_owned()
}

fn text_null(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).string().null().to_owned()
}

fn time(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).timestamp_with_time_zone().not_null().to_owned()
}

fn time_null(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).timestamp_with_time_zone().null().to_owned()
}

fn key(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).string().not_null().primary_key().to_owned()
}

fn table(name: &str, columns: Vec<ColumnDef>) -> TableCreateStatement {
    let mut statement = Table::create();
    statement.table(a(name)).if_not_exists();
    for mut column in columns {
        statement.col(&mut column);
    }
    statement.to_owned()
}

fn index(table: &str, name: &str, columns: &[&str]) -> IndexCreateStatement {
    let mut statement = Index::create();
    statement.name(name).table(a(table)).if_not_exists();
    for column in columns {
        statement.col(a(column));
    }
    statement.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for CreateTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = [
            table(
                "auth_credentials",
                vec![
                    key("administrator"),
                    text("organization"),
                    text("organization_display_name"),
                    text("email"),
                    ColumnDef::new(a("password_hash")).text().null().to_owned(),
                    time_null("activated_at"),
                    text_null("mfa_secret"),
                    ColumnDef::new(a("mfa_enrolled"))
                        .boolean()
                        .not_null()
                        .default(false)
                        .to_owned(),
                    text_null("mfa_pending_secret"),
                    time_null("mfa_pending_expires_at"),
                    ColumnDef::new(a("mfa_last_step")).big_integer().null().to_owned(),
                    time("created_at"),
                    time("updated_at"),
                ],
            ),
            table(
                "auth_link_tokens",
                vec![
                    key("token_hash"),
                    text("administrator"),
                    text("organization"),
                    text("kind"),
                    time("expires_at"),
                    time_null("used_at"),
                    time("created_at"),
                ],
            ),
            table(
                "auth_sessions",
                vec![
                    key("id"),
                    text("administrator"),
                    text("organization"),
                    text("amr"),
                    text("scope"),
                    time("created_at"),
                    time("expires_at"),
                    time_null("revoked_at"),
                ],
            ),
            table(
                "auth_refresh_tokens",
                vec![
                    key("token_hash"),
                    text("session_id"),
                    time_null("used_at"),
                    time("created_at"),
                ],
            ),
            table(
                "auth_mfa_challenges",
                vec![
                    key("challenge_hash"),
                    text("administrator"),
                    text("organization"),
                    ColumnDef::new(a("attempts")).integer().not_null().default(0).to_owned(),
                    time("expires_at"),
                    time_null("used_at"),
                ],
            ),
            table(
                "auth_recovery_codes",
                vec![
                    key("code_hash"),
                    text("administrator"),
                    time_null("used_at"),
                    time("created_at"),
                ],
            ),
            table(
                "auth_throttle",
                vec![
                    key("key"),
                    ColumnDef::new(a("failures")).integer().not_null().default(0).to_owned(),
                    time_null("locked_until"),
                    time("updated_at"),
                ],
            ),
            table(
                "auth_processed_keys",
                vec![
                    key("key"),
                    ColumnDef::new(a("response")).text().not_null().to_owned(),
                    time("created_at"),
                ],
            ),
        ];
        for statement in tables {
            manager.create_table(statement).await?;
        }
        let indexes = [
            index("auth_credentials", "auth_credentials_email", &["email"]),
            index("auth_link_tokens", "auth_link_tokens_administrator", &["administrator"]),
            index("auth_sessions", "auth_sessions_administrator", &["administrator"]),
            index("auth_refresh_tokens", "auth_refresh_tokens_session", &["session_id"]),
            index("auth_mfa_challenges", "auth_mfa_challenges_administrator", &["administrator"]),
            index("auth_recovery_codes", "auth_recovery_codes_administrator", &["administrator"]),
        ];
        for statement in indexes {
            manager.create_index(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [
            "auth_idempotency_keys",
            "auth_processed_keys",
            "auth_throttle",
            "auth_recovery_codes",
            "auth_mfa_challenges",
            "auth_refresh_tokens",
            "auth_sessions",
            "auth_link_tokens",
            "auth_credentials",
        ] {
            manager.drop_table(Table::drop().table(a(name)).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Creates the `auth_outbox` table (audit events on their way to the admin service).
#[derive(Debug)]
pub struct CreateOutbox;

impl MigrationName for CreateOutbox {
    fn name(&self) -> &str {
        "m20260101_000002_auth_create_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateOutbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_table(crate::audit::OUTBOX.create_table()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(a("auth_outbox")).if_exists().to_owned()).await
    }
}

/// Creates the `auth_mail_outbox` table (invite and reset emails waiting to be sent).
#[derive(Debug)]
pub struct CreateMailOutbox;

impl MigrationName for CreateMailOutbox {
    fn name(&self) -> &str {
        "m20260101_000003_auth_create_mail_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateMailOutbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_table(crate::mail_queue::OUTBOX.create_table()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(a("auth_mail_outbox")).if_exists().to_owned()).await
    }
}

/// `auth_processed_keys`, read for one release after [`adopt_idempotency`]: keyed
/// `{rpc}:{idempotency_key}`.
pub const LEGACY_IDEMPOTENCY: steward_storage::idempotency::Legacy =
    steward_storage::idempotency::Legacy {
        table: "auth_processed_keys",
        answer: "response",
        lookup: |key| Some(vec![("key", format!("{}:{}", key.operation(), key.request()))]),
    };

/// Copies `auth_processed_keys` (`{rpc}:{idempotency_key}` → JSON answer) into
/// [`IDEMPOTENCY`](crate::IDEMPOTENCY), keyed `{rpc}|internal|{idempotency_key}`.
pub fn adopt_idempotency() -> steward_storage::idempotency::Adopt {
    steward_storage::idempotency::Adopt {
        name: "m20261130_000001_auth_idempotency_keys",
        into: crate::IDEMPOTENCY,
        from: "auth_processed_keys",
        copy: "SELECT CASE \
               WHEN \"key\" LIKE 'issue_invite:%' THEN 'issue_invite|internal|' || substr(\"key\", 14) \
               WHEN \"key\" LIKE 'revoke_sessions:%' THEN 'revoke_sessions|internal|' || substr(\"key\", 17) \
               WHEN \"key\" LIKE 'delete_credentials:%' \
               THEN 'delete_credentials|internal|' || substr(\"key\", 20) \
               ELSE \"key\" END, response, created_at FROM auth_processed_keys WHERE true",
    }
}

/// Adds refresh families to `auth_sessions`: `refresh_family` (the digest of the random part of
/// each refresh token before its `.`, uniquely indexed) and `refresh_hash` (the digest of the
/// session's current token). Expand only: `auth_refresh_tokens` stays, for the tokens issued
/// before this change and by the previous release's pods during a rollout
/// ([`crate::rotation`]).
#[derive(Debug)]
pub struct AddRefreshFamilies;

impl MigrationName for AddRefreshFamilies {
    fn name(&self) -> &str {
        "m20261202_000001_auth_refresh_families"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddRefreshFamilies {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement (SQLite adds one at a time), each only if missing: on
        // SQLite a migration is not one transaction, so a run stopped between them resumes.
        for column in ["refresh_family", "refresh_hash"] {
            if manager.has_column("auth_sessions", column).await? {
                continue;
            }
            let add =
                Table::alter().table(a("auth_sessions")).add_column(text_null(column)).to_owned();
            manager.alter_table(add).await?;
        }
        let mut unique =
            index("auth_sessions", "auth_sessions_refresh_family", &["refresh_family"]);
        manager.create_index(unique.unique().to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let drop = Index::drop()
            .name("auth_sessions_refresh_family")
            .table(a("auth_sessions"))
            .if_exists()
            .to_owned();
        manager.drop_index(drop).await?;
        for column in ["refresh_hash", "refresh_family"] {
            let remove = Table::alter().table(a("auth_sessions")).drop_column(a(column)).to_owned();
            manager.alter_table(remove).await?;
        }
        Ok(())
    }
}
