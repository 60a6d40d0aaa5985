//! `scheme://user:PASSWORD@host`: the password part, named after the scheme (`postgres_url`, `mysql_url`,
//! `mongodb_url`, `redis_url`, else `password_url`; `scheme+driver://` and `redis://:PASSWORD@host` too).

use std::sync::LazyLock;

use regex::Regex;

use super::super::SecretKind;
use super::super::engine::{Cand, Detector, compile, push};

static URL: LazyLock<Regex> = LazyLock::new(|| {
    compile(
        r#"(?i)(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<user>[^\s:/?#@"'<>\[\]]*):(?P<pass>[^\s/?#"'<>]+)@"#,
    )
});

fn url_kind(scheme: &str) -> SecretKind {
    let base = scheme
        .split('+')
        .next()
        .unwrap_or(scheme)
        .to_ascii_lowercase();
    match base.as_str() {
        "postgres" | "postgresql" | "pgsql" => SecretKind::PostgresUrl,
        "mysql" | "mysqlx" | "mariadb" => SecretKind::MysqlUrl,
        "mongodb" => SecretKind::MongodbUrl,
        "redis" | "rediss" => SecretKind::RedisUrl,
        _ => SecretKind::PasswordUrl,
    }
}

fn scan(text: &str, out: &mut Vec<Cand>) {
    for c in URL.captures_iter(text) {
        if let (Some(scheme), Some(pass)) = (c.name("scheme"), c.name("pass")) {
            push(out, pass.start(), pass.end(), url_kind(scheme.as_str()));
        }
    }
}

pub(crate) const DETECTOR: Detector = Detector {
    name: "url-userinfo",
    kinds: &[
        SecretKind::PasswordUrl,
        SecretKind::PostgresUrl,
        SecretKind::MysqlUrl,
        SecretKind::MongodbUrl,
        SecretKind::RedisUrl,
    ],
    scan,
    tps: &[
        "amqp://guest:«guest»@rabbitmq:5672/vhost",
        "GET https://admin:«Pa55w0rd»@registry.example.com/v2/ failed",
        "postgres://app:«postgres_url:s3cr3t»@db:5432/x",
        "dsn=postgresql+psycopg2://svc:«postgres_url:p@ss»@pg.internal/app?sslmode=require",
        "mysql://root:«mysql_url:pw»@mysql:3306/db",
        "jdbc:mysql://app:«mysql_url:Secr3t!»@10.0.0.5:3306/orders",
        "mongodb+srv://u:«mongodb_url:p4ss»@cluster0.x.net/db",
        "MONGO_URL=mongodb://admin:«mongodb_url:hunter2»@mongo-0,mongo-1/admin",
        "redis://:«redis_url:redispass»@redis:6379/0",
        "rediss://default:«redis_url:tls-pass»@cache.example.com:6380",
    ],
    fps: &[
        "https://grafana.example.com/d/abc?orgId=1",
        "http://host:8080?next=a@b.com",
        "postgres://db.internal:5432/app",
        "postgresql://app@db/x",
        "mysql://mysql.db.svc:3306/orders",
        "mongodb://mongo-0.mongo:27017/?replicaSet=rs0",
        "redis://redis-master:6379/0",
        "connecting to redis://redis-master.cache.svc:6379/0",
        "git@github.com:org/repo.git",
        "postgres://app:${DB_PASSWORD}@db:5432/app",
    ],
};
