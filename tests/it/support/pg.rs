//! PostgreSQL for the sink's tests: a unique schema per test in the run's database
//! (`DATABASE_URL`, as `scripts/test.sh` sets it), applied with warren's own migrations and
//! dropped when the test ends; a throwaway server (`scripts/pg-node.sh`) for tests that restart
//! the database.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use warren::postgres::{DbSettings, schema};

/// A password the URLs carry so tests can assert it is never printed (trust auth ignores it).
pub const CANARY: &str = "pg-s3cr3t-canary";

/// The run's database, with the canary password.
pub fn database_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    with_canary(&url)
}

/// `url` with [`CANARY`] as its password (when it has a user and no password).
pub fn with_canary(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((user, host)) if !user.contains(':') => {
                format!("{scheme}://{user}:{CANARY}@{host}")
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// A schema of its own for one test, applied; dropped (with its tables) on drop.
pub struct TestDb {
    pub url: String,
    pub schema: String,
}

impl TestDb {
    /// A fresh schema in the run's database, with warren's tables.
    pub async fn new(test: &str) -> Self {
        Self::at(&database_url(), test).await
    }

    /// A fresh schema in the database at `url`, with warren's tables.
    pub async fn at(url: &str, test: &str) -> Self {
        let db = Self::unapplied(url, test);
        let settings = db.settings();
        let pool = settings.pool(1).expect("pool");
        schema::apply(&settings, &pool).await.expect("db apply");
        db
    }

    /// A schema name only: nothing created yet.
    pub fn unapplied(url: &str, test: &str) -> Self {
        let id = ulid::Ulid::generate().to_string().to_lowercase();
        let mut name = format!("t_{test}_{id}");
        name.truncate(63);
        Self {
            url: url.to_string(),
            schema: name,
        }
    }

    /// Settings for the library.
    pub fn settings(&self) -> DbSettings {
        DbSettings::parse(&self.url, &self.schema).expect("test database settings")
    }

    /// `--database-url … --db-schema …`, for the binary.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--database-url".into(),
            self.url.clone(),
            "--db-schema".into(),
            self.schema.clone(),
        ]
    }

    /// A client of its own.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(conn);
        client
    }

    /// Rows of one of warren's tables.
    pub async fn count(&self, table: &str) -> i64 {
        self.client()
            .await
            .query_one(
                &format!("SELECT count(*) FROM {}.{table}", self.schema),
                &[],
            )
            .await
            .expect("count")
            .get(0)
    }

    /// Every eventId in `events`.
    pub async fn event_ids(&self) -> BTreeSet<String> {
        self.client()
            .await
            .query(&format!("SELECT event_id FROM {}.events", self.schema), &[])
            .await
            .expect("event ids")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Every table's rows.
    pub async fn counts(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for table in schema::TABLES {
            out.insert(table.to_string(), self.count(table).await);
        }
        out
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.url.clone();
        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        // Drop runs inside the test's runtime: do the clean-up on a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

/// A PostgreSQL server this test started (`scripts/pg-node.sh`), stopped and removed on drop.
pub struct PgNode {
    dir: tempfile::TempDir,
    pub url: String,
}

fn script() -> Command {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-node.sh"))
}

impl PgNode {
    /// Starts a server on a free port.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("warren-test-pg-")
            .tempdir()
            .expect("tempdir");
        // The server runs as the postgres user, which must reach its directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let out = script()
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .expect("run scripts/pg-node.sh");
        assert!(
            out.status.success(),
            "scripts/pg-node.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Self {
            dir,
            url: with_canary(&url),
        }
    }

    /// Fast shutdown, down for `down_secs`, started again.
    pub fn restart(&self, down_secs: u32) {
        let out = script()
            .arg("restart")
            .arg(self.dir.path().join("pg"))
            .args(["--down", &down_secs.to_string()])
            .output()
            .expect("run scripts/pg-node.sh");
        assert!(
            out.status.success(),
            "scripts/pg-node.sh restart failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        let _ = script()
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .status();
    }
}
