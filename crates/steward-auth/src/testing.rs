//! What the unit tests of several modules share.

use sea_orm::DatabaseConnection;
use steward_storage::testing::{backends, TestDatabase};

/// A fresh, migrated auth database on each backend the tests run on (SQLite, and PostgreSQL
/// when one is configured), each with a pool of 16 connections.
#[allow(clippy::unwrap_used)]
pub async fn databases() -> Vec<(TestDatabase, DatabaseConnection)> {
    let mut out = Vec::new();
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let conn = steward_storage::connect(&db.url("auth"), 16).await.unwrap();
        <crate::Migrator as sea_orm_migration::MigratorTrait>::up(&conn, None).await.unwrap();
        out.push((db, conn));
    }
    out
}
