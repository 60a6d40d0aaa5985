//! Shared test harness: a fresh PostgreSQL database per test on the real PostgreSQL 18 + pgvector started by
//! `hack/pg.sh up` (the Makefile's `test` target does it and exports DATASTORAGE_TEST_DATABASE_URL).

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use datastorage::store::{Store, StoreConfig};

pub mod chart;
pub mod faults;
pub mod kube;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

/// The server URL of the test cluster; panics with the command that starts one when unset.
pub fn server_url() -> String {
    std::env::var("DATASTORAGE_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATASTORAGE_TEST_DATABASE_URL is not set. Start the real PostgreSQL + pgvector with \
             `eval \"$(hack/pg.sh up >/dev/null; cat ${{TMPDIR:-/tmp}}/datastorage-pg/env)\"` and \
             `export DATASTORAGE_TEST_DATABASE_URL=$DATABASE_URL`, or run `make test`."
        )
    })
}

/// A database that exists for one test and is dropped (with its connections) when the guard goes.
pub struct TestDb {
    pub name: String,
    pub url: String,
    server: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub async fn new() -> Self {
        let server = server_url();
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap()
        );
        let mut conn = PgConnection::connect(&server).await.unwrap_or_else(|e| {
            panic!("cannot connect to {server}: {e} (is `hack/pg.sh up` running?)")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE template1"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        let opts = PgConnectOptions::from_str(&server).unwrap().database(&name);
        let url = format!(
            "postgres://{}@{}:{}/{}",
            opts.get_username(),
            opts.get_host(),
            opts.get_port(),
            name
        );
        Self { name, url, server }
    }

    /// A store on this database with the schema migrated.
    pub async fn store(&self) -> Store {
        let store =
            Store::connect_lazy(&StoreConfig::new(&self.url, "datastorage").unwrap()).unwrap();
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs outside any async context guarantee: use a private runtime on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&server).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A private throwaway service started with one of the project's scripts (`hack/pg.sh`, `hack/redis.sh`), for
/// tests that stop and start it without disturbing the shared one. Brought down (and its directory removed) on drop.
pub struct Service {
    script: &'static str,
    dir_var: &'static str,
    dir: tempfile::TempDir,
    /// The URL printed by `up`.
    pub url: String,
}

impl Service {
    /// A private PostgreSQL 18 + pgvector cluster.
    pub fn postgres() -> Self {
        Self::up("hack/pg.sh", "PG_DIR")
    }

    /// A private Redis.
    pub fn redis() -> Self {
        Self::up("hack/redis.sh", "REDIS_DIR")
    }

    fn up(script: &'static str, dir_var: &'static str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ds-svc-")
            .tempdir()
            .unwrap();
        let mut svc = Self {
            script,
            dir_var,
            dir,
            url: String::new(),
        };
        svc.url = svc.run("up");
        svc
    }

    /// Runs `script cmd` for this instance (`cmd` split at spaces, e.g. "stop immediate"); returns the last line
    /// it printed.
    pub fn run(&self, cmd: &str) -> String {
        let out =
            std::process::Command::new(format!("{}/{}", env!("CARGO_MANIFEST_DIR"), self.script))
                .args(cmd.split_whitespace())
                .env(self.dir_var, self.dir.path().join("svc"))
                .output()
                .unwrap();
        assert!(
            out.status.success(),
            "{} {cmd}: {}",
            self.script,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(format!("{}/{}", env!("CARGO_MANIFEST_DIR"), self.script))
                .arg("down")
                .env(self.dir_var, self.dir.path().join("svc"))
                .output();
    }
}
