//! Upgrades keep what earlier schemas stored: a database migrated to an earlier version, holding
//! rows in the shape of that version, is migrated to the current one and the rows still answer,
//! including rows the previous version writes during a rolling deploy.

use chrono::Utc;
use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use steward_storage::idempotency::{Idempotency, Key};
use steward_storage::sea_orm_migration::MigratorTrait;
use steward_storage::testing::{Backend, TestDatabase};

/// Inserts `rows` into `table` with the current time in `time_column`.
async fn insert(
    db: &DatabaseConnection,
    table: &str,
    columns: &[&str],
    time_column: &str,
    rows: &[&[&str]],
) {
    for row in rows {
        let mut values: Vec<sea_orm::sea_query::SimpleExpr> =
            row.iter().map(|v| (*v).into()).collect();
        values.push(Utc::now().into());
        let mut names: Vec<Alias> = columns.iter().map(|c| Alias::new(*c)).collect();
        names.push(Alias::new(time_column));
        let statement = Query::insert()
            .into_table(Alias::new(table))
            .columns(names)
            .values_panic(values)
            .to_owned();
        db.execute(db.get_database_backend().build(&statement)).await.unwrap();
    }
}

async fn answers(db: &DatabaseConnection, keys: Idempotency, expected: &[(Key, &str)]) {
    for (key, answer) in expected {
        assert_eq!(
            keys.recall(db, Some(key)).await.unwrap().as_deref(),
            Some(*answer),
            "{}",
            key.as_str()
        );
    }
}

fn key(operation: &str, scope: &str, request: &str) -> Key {
    Key::new(operation, scope, request).unwrap()
}

async fn earlier_idempotency_records_survive_the_upgrade(backend: Backend) {
    let database = TestDatabase::create(backend).await.unwrap();

    let admin = steward_storage::connect(&database.url("admin"), 2).await.unwrap();
    steward_admin::Migrator::up(&admin, Some(1)).await.unwrap();
    insert(
        &admin,
        "admin_idempotency",
        &["organization_id", "request_id", "resource"],
        "created_at",
        &[
            &["o1", "r1", "organizations/o1/administrators/a1"],
            &["-platform", "r2", "organizations/o2"],
        ],
    )
    .await;
    steward_admin::Migrator::up(&admin, None).await.unwrap();
    answers(
        &admin,
        steward_admin::IDEMPOTENCY,
        &[
            (
                key("create_administrator", "organizations/o1", "r1"),
                "organizations/o1/administrators/a1",
            ),
            (key("create_organization", "platform", "r2"), "organizations/o2"),
        ],
    )
    .await;

    let auth = steward_storage::connect(&database.url("auth"), 2).await.unwrap();
    steward_auth::Migrator::up(&auth, Some(3)).await.unwrap();
    insert(
        &auth,
        "auth_processed_keys",
        &["key", "response"],
        "created_at",
        &[
            &["issue_invite:k1", "1700000000"],
            &["revoke_sessions:k2", "2"],
            &["delete_credentials:k3", "true"],
        ],
    )
    .await;
    steward_auth::Migrator::up(&auth, None).await.unwrap();
    answers(
        &auth,
        steward_auth::IDEMPOTENCY,
        &[
            (key("issue_invite", "internal", "k1"), "1700000000"),
            (key("revoke_sessions", "internal", "k2"), "2"),
            (key("delete_credentials", "internal", "k3"), "true"),
        ],
    )
    .await;

    let commands = steward_storage::connect(&database.url("commands"), 2).await.unwrap();
    steward_commands::Migrator::up(&commands, Some(3)).await.unwrap();
    insert(
        &commands,
        "commands_idempotency",
        &["key", "organization", "resource"],
        "create_time",
        &[&[
            "create_grant|organizations/o1/administrators/a1|r3",
            "organizations/o1",
            "organizations/o1/commands/c/grants/g",
        ]],
    )
    .await;
    steward_commands::Migrator::up(&commands, None).await.unwrap();
    answers(
        &commands,
        steward_commands::IDEMPOTENCY,
        &[(
            key("create_grant", "organizations/o1/administrators/a1", "r3"),
            "organizations/o1/commands/c/grants/g",
        )],
    )
    .await;

    // The earlier tables stay for the previous version's pods during a rolling deploy: what they
    // record there after the copy is still replayed by the current version.
    insert(
        &admin,
        "admin_idempotency",
        &["organization_id", "request_id", "resource"],
        "created_at",
        &[&["o1", "late", "organizations/o1/administrators/a2"]],
    )
    .await;
    insert(
        &auth,
        "auth_processed_keys",
        &["key", "response"],
        "created_at",
        &[&["revoke_sessions:late", "5"]],
    )
    .await;
    insert(
        &commands,
        "commands_idempotency",
        &["key", "organization", "resource"],
        "create_time",
        &[&[
            "run_command|organizations/o1/administrators/a1|late",
            "organizations/o1",
            "organizations/o1/runs/r",
        ]],
    )
    .await;
    answers(
        &admin,
        steward_admin::IDEMPOTENCY,
        &[(
            key("create_administrator", "organizations/o1", "late"),
            "organizations/o1/administrators/a2",
        )],
    )
    .await;
    answers(&auth, steward_auth::IDEMPOTENCY, &[(key("revoke_sessions", "internal", "late"), "5")])
        .await;
    answers(
        &commands,
        steward_commands::IDEMPOTENCY,
        &[(
            key("run_command", "organizations/o1/administrators/a1", "late"),
            "organizations/o1/runs/r",
        )],
    )
    .await;
    // Unknown keys stay unknown on both tables.
    let unknown = key("create_organization", "platform", "never");
    assert_eq!(steward_admin::IDEMPOTENCY.recall(&admin, Some(&unknown)).await.unwrap(), None);

    // The copy can run again (an interrupted migration on SQLite completes on the next start)
    // without failing on the rows it copied before.
    for (db, adopt) in [
        (&admin, steward_admin::migration::adopt_idempotency()),
        (&auth, steward_auth::migration::adopt_idempotency()),
        (&commands, steward_commands::schema::adopt_idempotency()),
    ] {
        let manager = steward_storage::sea_orm_migration::SchemaManager::new(db);
        steward_storage::sea_orm_migration::MigrationTrait::up(&adopt, &manager).await.unwrap();
    }
    answers(
        &admin,
        steward_admin::IDEMPOTENCY,
        &[(key("create_organization", "platform", "r2"), "organizations/o2")],
    )
    .await;
}

mod earlier_idempotency_records_survive_the_upgrade {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        earlier_idempotency_records_survive_the_upgrade(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        if crate::harness::postgres_available() {
            earlier_idempotency_records_survive_the_upgrade(Backend::Postgres).await;
        }
    }
}
