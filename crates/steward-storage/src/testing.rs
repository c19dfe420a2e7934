//! Fresh databases for tests: a SQLite file in a temporary directory, and, when
//! `STEWARD_TEST_POSTGRES_URL` is set, a PostgreSQL database created for the test and dropped
//! afterwards. Tests loop over [`backends`] so every storage test runs on both.

use std::path::PathBuf;

use sea_orm::{ConnectionTrait, Database};

/// Names the PostgreSQL server used by tests (a maintenance database URL, trust auth in CI).
pub const POSTGRES_ENV: &str = "STEWARD_TEST_POSTGRES_URL";

/// Which engine a test database runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A file under a temporary directory.
    Sqlite,
    /// A database on the server named by [`POSTGRES_ENV`].
    Postgres,
}

/// The backends available to this test run: SQLite always, PostgreSQL when configured.
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    if std::env::var(POSTGRES_ENV).is_ok_and(|v| !v.is_empty()) {
        all.push(Backend::Postgres);
    }
    all
}

/// A database that exists for one test. Dropping it removes the SQLite files or drops the
/// PostgreSQL database.
#[derive(Debug)]
pub struct TestDatabase {
    backend: Backend,
    dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// Creates a fresh, empty database on `backend`.
    pub async fn create(backend: Backend) -> Result<Self, sea_orm::DbErr> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
                Ok(Self { backend, dir: Some(dir), postgres: None })
            }
            Backend::Postgres => {
                let admin_url = std::env::var(POSTGRES_ENV)
                    .map_err(|_| sea_orm::DbErr::Custom(format!("{POSTGRES_ENV} is not set")))?;
                let name = format!("steward_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url).await?;
                admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await?;
                admin.close().await?;
                let mut url = url::Url::parse(&admin_url)
                    .map_err(|e| sea_orm::DbErr::Custom(e.to_string()))?;
                url.set_path(&format!("/{name}"));
                Ok(Self { backend, dir: None, postgres: Some((admin_url, url.to_string())) })
            }
        }
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL `service` should use: its own SQLite file, or the shared PostgreSQL database
    /// (services keep to their own tables there, as in production).
    pub fn url(&self, service: &str) -> String {
        match (&self.dir, &self.postgres) {
            (Some(dir), _) => {
                format!("sqlite://{}?mode=rwc", dir.path().join(format!("{service}.db")).display())
            }
            (_, Some((_, url))) => url.clone(),
            _ => String::new(),
        }
    }

    /// A scratch directory living as long as the database (SQLite only).
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.path().to_path_buf())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, url)) = self.postgres.take() else { return };
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        // Drop runs inside an async test; a separate thread gets its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(admin) = Database::connect(&admin_url).await {
                    let _ = admin
                        .execute_unprepared(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}
