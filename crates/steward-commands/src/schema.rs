//! The service's migrations (portable schema statements for SQLite and PostgreSQL).

use sea_orm_migration::prelude::*;

use crate::OUTBOX;

/// Creates every table of the service.
#[derive(Debug)]
pub struct Initial;

impl MigrationName for Initial {
    fn name(&self) -> &str {
        "m0001_commands_initial"
    }
}

fn a(name: &str) -> Alias {
    Alias::new(name)
}

fn string(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).string().not_null().to_owned()
}

fn text(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).text().not_null().to_owned()
}

fn time(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).timestamp_with_time_zone().not_null().to_owned()
}

fn time_null(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).timestamp_with_time_zone().null().to_owned()
}

fn int(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).integer().not_null().to_owned()
}

fn big(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).big_integer().not_null().to_owned()
}

fn boolean(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).boolean().not_null().to_owned()
}

fn key(name: &str) -> ColumnDef {
    ColumnDef::new(a(name)).string().not_null().primary_key().to_owned()
}

fn index(table: &str, name: &str, columns: &[&str], unique: bool) -> IndexCreateStatement {
    let mut statement = Index::create();
    statement.name(name).table(a(table)).if_not_exists();
    for column in columns {
        statement.col(a(column));
    }
    if unique {
        statement.unique();
    }
    statement.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let tables = [
            Table::create()
                .table(a("commands_commands"))
                .if_not_exists()
                .col(key("name"))
                .col(string("organization"))
                .col(string("display_name"))
                .col(text("description"))
                .col(text("script"))
                .col(int("interpreter"))
                .col(string("run_as_user"))
                .col(big("timeout_secs"))
                .col(int("timeout_nanos"))
                .col(big("revision"))
                .col(string("etag"))
                .col(time("create_time"))
                .col(time("update_time"))
                .to_owned(),
            Table::create()
                .table(a("commands_command_targets"))
                .if_not_exists()
                .col(string("command"))
                .col(string("system"))
                .col(int("position"))
                .primary_key(Index::create().col(a("command")).col(a("system")))
                .to_owned(),
            Table::create()
                .table(a("commands_grants"))
                .if_not_exists()
                .col(key("name"))
                .col(string("organization"))
                .col(string("command"))
                .col(string("grantee"))
                .col(string("grantor"))
                .col(time("create_time"))
                .to_owned(),
            Table::create()
                .table(a("commands_idempotency"))
                .if_not_exists()
                .col(key("key"))
                .col(string("organization"))
                .col(string("resource"))
                .col(time("create_time"))
                .to_owned(),
            Table::create()
                .table(a("commands_runs"))
                .if_not_exists()
                .col(key("name"))
                .col(string("organization"))
                .col(string("command"))
                .col(string("command_revision"))
                .col(text("script"))
                .col(int("interpreter"))
                .col(string("run_as_user"))
                .col(big("timeout_secs"))
                .col(int("timeout_nanos"))
                .col(string("runner"))
                .col(int("state"))
                .col(boolean("cancelled"))
                .col(time("create_time"))
                .col(time_null("start_time"))
                .col(time_null("end_time"))
                .to_owned(),
            Table::create()
                .table(a("commands_run_results"))
                .if_not_exists()
                .col(string("run"))
                .col(string("system"))
                .col(int("position"))
                .col(int("state"))
                .col(int("exit_code"))
                .col(ColumnDef::new(a("stdout")).binary().not_null())
                .col(ColumnDef::new(a("stderr")).binary().not_null())
                .col(boolean("stdout_truncated"))
                .col(boolean("stderr_truncated"))
                .col(time_null("start_time"))
                .col(time_null("end_time"))
                .col(text("error_message"))
                .col(ColumnDef::new(a("claimed_by")).string().null())
                .col(time_null("cancel_time"))
                .col(boolean("cancel_sent"))
                .primary_key(Index::create().col(a("run")).col(a("system")))
                .to_owned(),
            Table::create()
                .table(a("commands_systems"))
                .if_not_exists()
                .col(key("name"))
                .col(string("organization"))
                .col(string("display_name"))
                .col(string("hostname"))
                .col(string("os"))
                .col(string("agent_version"))
                .col(string("credential_hash"))
                .col(string("connect_key"))
                .col(ColumnDef::new(a("stream_id")).string().null())
                .col(time_null("last_seen_time"))
                .col(time("create_time"))
                .col(string("etag"))
                .to_owned(),
            Table::create()
                .table(a("commands_connect_keys"))
                .if_not_exists()
                .col(key("name"))
                .col(string("organization"))
                .col(string("display_name"))
                .col(string("key_hash"))
                .col(ColumnDef::new(a("key_salt")).string().null())
                .col(time_null("expire_time"))
                .col(boolean("revoked"))
                .col(time("create_time"))
                .col(string("creator"))
                .to_owned(),
            OUTBOX.create_table(),
        ];
        for table in tables {
            manager.create_table(table).await?;
        }
        let indexes = [
            index(
                "commands_commands",
                "commands_commands_org",
                &["organization", "display_name"],
                false,
            ),
            index("commands_command_targets", "commands_targets_system", &["system"], false),
            index(
                "commands_grants",
                "commands_grants_command_grantee",
                &["command", "grantee"],
                true,
            ),
            index("commands_grants", "commands_grants_grantee", &["grantee"], false),
            index(
                "commands_runs",
                "commands_runs_org_time",
                &["organization", "create_time"],
                false,
            ),
            index(
                "commands_run_results",
                "commands_results_system_state",
                &["system", "state"],
                false,
            ),
            index("commands_systems", "commands_systems_credential", &["credential_hash"], true),
            index(
                "commands_systems",
                "commands_systems_org",
                &["organization", "display_name"],
                false,
            ),
            index("commands_connect_keys", "commands_connect_keys_hash", &["key_hash"], true),
            index(
                "commands_connect_keys",
                "commands_connect_keys_org",
                &["organization", "create_time"],
                false,
            ),
        ];
        for statement in indexes {
            manager.create_index(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "commands_outbox",
            "commands_connect_keys",
            "commands_systems",
            "commands_run_results",
            "commands_runs",
            "commands_idempotency",
            "commands_idempotency_keys",
            "commands_grants",
            "commands_command_targets",
            "commands_commands",
        ] {
            manager.drop_table(Table::drop().table(a(table)).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}

/// Adds `replay_key` to connect keys: the key sealed under the creating request's `request_id`
/// for the replay window (see `systems::REPLAY_WINDOW_SECS`).
#[derive(Debug)]
pub struct ConnectKeyReplay;

impl MigrationName for ConnectKeyReplay {
    fn name(&self) -> &str {
        "m0002_commands_connect_key_replay"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ConnectKeyReplay {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(a("commands_connect_keys"))
                    .add_column(ColumnDef::new(a("replay_key")).text().null())
                    .to_owned(),
            )
            .await?;
        // Keys of earlier versions could be derived again from their salt and the service
        // credential; forgetting the salts ends that (the keys keep working: their hashes stay).
        let forget = Query::update()
            .table(a("commands_connect_keys"))
            .value(a("key_salt"), Option::<String>::None)
            .to_owned();
        manager.exec_stmt(forget).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(a("commands_connect_keys"))
                    .drop_column(a("replay_key"))
                    .to_owned(),
            )
            .await
    }
}

/// Creates `commands_run_output`: run output stored append-only, one row per chunk an agent
/// reported, instead of rewriting a growing blob per chunk.
#[derive(Debug)]
pub struct RunOutput;

impl MigrationName for RunOutput {
    fn name(&self) -> &str {
        "m0003_commands_run_output"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for RunOutput {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(a("commands_run_output"))
                    .if_not_exists()
                    .col(string("run"))
                    .col(string("system"))
                    .col(int("stream"))
                    .col(big("offset"))
                    .col(big("end_offset"))
                    .col(ColumnDef::new(a("data")).binary().not_null())
                    .primary_key(
                        Index::create()
                            .col(a("run"))
                            .col(a("system"))
                            .col(a("stream"))
                            .col(a("offset")),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(a("commands_run_output")).if_exists().to_owned())
            .await
    }
}

/// `commands_idempotency`, read for one release after [`adopt_idempotency`]: the same keys.
pub const LEGACY_IDEMPOTENCY: steward_storage::idempotency::Legacy =
    steward_storage::idempotency::Legacy {
        table: "commands_idempotency",
        answer: "resource",
        lookup: |key| Some(vec![("key", key.as_str().to_string())]),
    };

/// Copies `commands_idempotency` (whose keys already follow the `{operation}|{scope}|{request}`
/// scheme) into [`IDEMPOTENCY`](crate::IDEMPOTENCY).
pub fn adopt_idempotency() -> steward_storage::idempotency::Adopt {
    steward_storage::idempotency::Adopt {
        name: "m20261130_000001_commands_idempotency_keys",
        into: crate::IDEMPOTENCY,
        from: "commands_idempotency",
        copy: "SELECT \"key\", resource, create_time FROM commands_idempotency WHERE true",
    }
}

/// Indexes for event-driven dispatch: results by state (the dispatch sweep looks only at
/// queued and running results) and systems by stream (each replica touches its connected
/// systems in batches).
#[derive(Debug)]
pub struct DispatchIndexes;

impl MigrationName for DispatchIndexes {
    fn name(&self) -> &str {
        "m0005_commands_dispatch_indexes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for DispatchIndexes {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(index(
                "commands_run_results",
                "commands_results_state",
                &["state"],
                false,
            ))
            .await?;
        manager
            .create_index(index(
                "commands_systems",
                "commands_systems_stream",
                &["stream_id"],
                false,
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, name) in [
            ("commands_run_results", "commands_results_state"),
            ("commands_systems", "commands_systems_stream"),
        ] {
            manager
                .drop_index(Index::drop().name(name).table(a(table)).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
