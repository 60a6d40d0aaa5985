//! The "Remediation effectiveness" Grafana dashboard (config/grafana/remediation-effectiveness-dashboard.json): SQL on
//! Grafana's PostgreSQL data source, reading only the view `audit_outcomes` as a member of the read-only group role
//! `<schema>_reader` (migrations/0004_effectiveness_reader.sql).
//!
//! Every panel's query and every template variable's query is expanded the way Grafana expands it (template
//! variables in the frontend, then the PostgreSQL macro engine of the backend: `expand` below) and run on the real
//! PostgreSQL, over a seeded history, as a login role set up exactly as docs/operations.md tells a DBA to; the columns
//! and their types are what each panel type needs, the numbers are the seeded ones, and the role reads the view and
//! nothing else. Also: the migration never fails for lack of CREATEROLE, and the SQL is static (no string built
//! from a variable other than the lists of literals Grafana quotes itself).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use datastorage::audit::{AuditMeta, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec};
use datastorage::store::{AuditWrite, Store, StoreConfig, WriteOutcome};
use regex::Regex;
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{
    AssertSqlSafe, Column, Connection, Executor, PgConnection, Row, SqlSafeStr, Statement, TypeInfo,
};

use crate::support::TestDb;
use crate::support::chart::repo_path;

const DASHBOARD: &str = "config/grafana/remediation-effectiveness-dashboard.json";
/// The schema `TestDb::store` migrates, and the group role migration 0004 makes for it.
const SCHEMA: &str = "datastorage";
const READER: &str = "datastorage_reader";
const DATASOURCE_TYPE: &str = "grafana-postgresql-datasource";
/// The only relation the dashboard reads.
const VIEW: &str = "audit_outcomes";

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path(DASHBOARD)).unwrap()).unwrap()
}

fn panels(d: &Value) -> &Vec<Value> {
    d["panels"].as_array().unwrap()
}

fn panel<'a>(d: &'a Value, title: &str) -> &'a Value {
    panels(d)
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"))
}

fn raw_sql(p: &Value) -> &str {
    let targets = p["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "{}: one query per panel", p["title"]);
    targets[0]["rawSql"].as_str().unwrap()
}

/// The template variables that are SQL queries (all but the data source), in dashboard order.
fn query_variables(d: &Value) -> Vec<&Value> {
    d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "query")
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Grafana's expansion of a query.
// ---------------------------------------------------------------------------------------------------------------

/// Template variables and their selected values, in dashboard order.
type Vars = Vec<(String, Vec<String>)>;

/// One row of "Top failing actions": action, attempts, failures, failure rate, clusters.
type FailingRow = (String, i64, i64, Option<f64>, i64);

/// What Grafana knows when it sends a query: the dashboard's time range, the panel's `$__interval`, and the values
/// of the template variables (for "All": every value the variable's query returned).
struct Ctx<'a> {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    interval: &'a str,
    vars: &'a [(String, Vec<String>)],
}

/// `time.RFC3339Nano` of Go in UTC, as the macro engine formats the range: fraction without trailing zeros, `Z`.
fn rfc3339_nano(t: DateTime<Utc>) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.timestamp_subsec_nanos();
    if nanos > 0 {
        s.push('.');
        s.push_str(format!("{nanos:09}").trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Seconds of a Grafana interval (`gtime.ParseInterval`), whole seconds only: `30s`, `5m`, `1h`, `1d`, `1w`.
fn interval_seconds(interval: &str) -> i64 {
    let re = Regex::new(r"^([0-9]+)(s|m|h|d|w)$").unwrap();
    let c = re
        .captures(interval.trim_matches('\''))
        .unwrap_or_else(|| panic!("unsupported interval {interval:?}"));
    let n: i64 = c[1].parse().unwrap();
    n * match &c[2] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 7 * 86_400,
    }
}

/// Go's `%v` of a float64 holding whole seconds (what `$__timeGroup` prints): `3600`, `86400`, and from 10^6 on the
/// shortest `%e` form (`2.592e+06`).
fn go_float(n: i64) -> String {
    if n < 1_000_000 {
        return n.to_string();
    }
    let digits = n.to_string();
    let exponent = digits.len() - 1;
    let significant = digits.trim_end_matches('0');
    let mantissa = match &significant[1..] {
        "" => significant[..1].to_string(),
        rest => format!("{}.{rest}", &significant[..1]),
    };
    format!("{mantissa}e+{exponent:02}")
}

/// Grafana's SQL interpolation of a multi-value / include-All variable (`SqlDatasource.interpolateVariable`, and the
/// `sqlstring` format): every value in single quotes with quotes doubled, comma-separated; no value: empty.
fn sql_list(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("'{}'", v.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Expands one query the way Grafana does before PostgreSQL sees it:
/// 1. the frontend: `$var`, `${var}`, `${var:sqlstring}` → `sql_list` of the selected values (All: every value of
///    the variable's query); `$__interval_ms` → milliseconds, `$__interval` → the interval (`1h`);
/// 2. the backend (`sqleng.Interpolate`): `$__unixEpochFrom()`, `$__unixEpochTo()` → epoch seconds;
/// 3. the PostgreSQL macro engine (`pkg/tsdb/grafana-postgresql-datasource/macros.go`), on `$name(args)` with the
///    arguments split at commas and trimmed:
///    `$__time(c)` → `c AS "time"`; `$__timeEpoch(c)` → `extract(epoch from c) as "time"`;
///    `$__timeFilter(c)` → `c BETWEEN '<from>' AND '<to>'` (RFC 3339 UTC, nanoseconds without trailing zeros);
///    `$__timeFrom()` / `$__timeTo()` → `'<from>'` / `'<to>'`;
///    `$__timeGroup(c, 1h)` → `floor(extract(epoch from c)/3600)*3600` (epoch seconds, a NUMERIC);
///    `$__timeGroupAlias(c, 1h)` → the same `AS "time"`;
///    `$__unixEpochFilter(c)` → `c >= <from> AND c <= <to>` (epoch seconds).
///
/// Anything else (an unknown variable, a raw format, a fill mode, another macro) fails the test, and so does a `$`
/// left over.
fn expand(sql: &str, ctx: &Ctx) -> String {
    let var = Regex::new(
        r"\$\{([A-Za-z0-9_]+)(?::([A-Za-z]+))?\}|\[\[([A-Za-z0-9_]+)\]\]|\$([A-Za-z0-9_]+)",
    )
    .unwrap();
    let interval_ms = (interval_seconds(ctx.interval) * 1000).to_string();
    let out = var.replace_all(sql, |c: &regex::Captures| -> String {
        if c.get(3).is_some() {
            panic!("deprecated [[var]] syntax in {sql}");
        }
        let name = c.get(1).or_else(|| c.get(4)).unwrap().as_str();
        match name {
            "__interval_ms" => return interval_ms.clone(),
            "__interval" => return ctx.interval.to_string(),
            // The backend's macros and built-ins, expanded below.
            n if n.starts_with("__") => return c[0].to_string(),
            _ => {}
        }
        match c.get(2).map(|f| f.as_str()) {
            None | Some("sqlstring") => {}
            Some(other) => panic!("format :{other} of ${name} is not quoted by Grafana: {sql}"),
        }
        let values = ctx
            .vars
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("unknown variable ${name} in {sql}"));
        sql_list(&values.1)
    });
    let out = out
        .replace("$__unixEpochFrom()", &ctx.from.timestamp().to_string())
        .replace("$__unixEpochTo()", &ctx.to.timestamp().to_string());
    let (from, to) = (rfc3339_nano(ctx.from), rfc3339_nano(ctx.to));
    let macro_re = Regex::new(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)").unwrap();
    let out = macro_re.replace_all(&out, |c: &regex::Captures| -> String {
        let args: Vec<&str> = c[2].split(',').map(str::trim).collect();
        let group = |args: &[&str]| {
            assert_eq!(args.len(), 2, "no fill mode expected: {}", &c[0]);
            let secs = go_float(interval_seconds(args[1]));
            format!("floor(extract(epoch from {})/{secs})*{secs}", args[0])
        };
        match &c[1] {
            "__time" => format!("{} AS \"time\"", args[0]),
            "__timeEpoch" => format!("extract(epoch from {}) as \"time\"", args[0]),
            "__timeFilter" => format!("{} BETWEEN '{from}' AND '{to}'", args[0]),
            "__timeFrom" => format!("'{from}'"),
            "__timeTo" => format!("'{to}'"),
            "__timeGroup" => group(&args),
            "__timeGroupAlias" => format!("{} AS \"time\"", group(&args)),
            "__unixEpochFilter" => format!(
                "{c0} >= {} AND {c0} <= {}",
                ctx.from.timestamp(),
                ctx.to.timestamp(),
                c0 = args[0]
            ),
            other => panic!("macro ${other} not expanded by this test: {sql}"),
        }
    });
    assert!(!out.contains('$'), "unexpanded in {out}");
    out.into_owned()
}

#[test]
fn expansion_matches_grafana() {
    let from = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let to = DateTime::parse_from_rfc3339("2026-03-02T10:00:00.250Z")
        .unwrap()
        .with_timezone(&Utc);
    let vars = [
        (
            "cluster".to_string(),
            vec!["o'hare-dc".to_string(), "prod".to_string()],
        ),
        ("namespace".to_string(), vec![]),
    ];
    let ctx = Ctx {
        from,
        to,
        interval: "1h",
        vars: &vars,
    };
    assert_eq!(
        expand(
            "SELECT $__timeGroupAlias(start_time, $__interval), $__interval_ms FROM t WHERE $__timeFilter(start_time) \
             AND c = ANY(ARRAY[$cluster]::text[]) AND d = ANY(ARRAY[${cluster:sqlstring}]::text[]) \
             AND n = ANY(ARRAY[${namespace}]::text[]) AND $__timeFrom() < $__timeTo()",
            &ctx
        ),
        "SELECT floor(extract(epoch from start_time)/3600)*3600 AS \"time\", 3600000 FROM t WHERE start_time \
         BETWEEN '2026-03-01T10:00:00Z' AND '2026-03-02T10:00:00.25Z' AND c = ANY(ARRAY['o''hare-dc','prod']::text[]) \
         AND d = ANY(ARRAY['o''hare-dc','prod']::text[]) AND n = ANY(ARRAY[]::text[]) AND \
         '2026-03-01T10:00:00Z' < '2026-03-02T10:00:00.25Z'"
    );
    assert_eq!(go_float(86_400), "86400");
    assert_eq!(go_float(30 * 86_400), "2.592e+06");
    assert_eq!(go_float(1_000_000), "1e+06");
}

// ---------------------------------------------------------------------------------------------------------------
// The dashboard itself, statically.
// ---------------------------------------------------------------------------------------------------------------

/// The references to template variables a query may hold: lists of literals Grafana quotes itself, compared with
/// `= ANY(...)` (which, unlike `IN (...)`, stays valid SQL when a variable has no value at all).
const SCOPE_CLUSTER: &str = "cluster_name = ANY(ARRAY[$cluster]::text[])";
const SCOPE_NAMESPACE: &str = "namespace = ANY(ARRAY[$namespace]::text[])";
const MACROS: [&str; 3] = [
    "$__timeFilter(start_time)",
    "$__timeGroupAlias(start_time, $__interval)",
    "$__interval",
];

#[test]
fn dashboard_is_sql_on_the_postgresql_datasource_scoped_by_cluster_and_namespace() {
    let d = dashboard();
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("config/grafana/datastorage-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(d["uid"], "datastorage-remediation");
    assert_eq!(d["title"], "Remediation effectiveness");
    assert_eq!(d["schemaVersion"], metrics["schemaVersion"]);
    assert_eq!(d["time"], json!({"from": "now-30d", "to": "now"}));

    let vars = d["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["datasource", "cluster", "namespace"]);
    assert_eq!(vars[0]["type"], "datasource");
    assert_eq!(vars[0]["query"], DATASOURCE_TYPE);
    let ds = json!({"type": DATASOURCE_TYPE, "uid": "${datasource}"});
    for v in query_variables(&d) {
        let name = v["name"].as_str().unwrap();
        assert_eq!(v["datasource"], ds, "{name}");
        assert_eq!(v["multi"], true, "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
        // Without allValue, All is the quoted list of every value; an allValue would be inserted unquoted.
        assert!(v.get("allValue").is_none_or(Value::is_null), "{name}");
        assert_eq!(v["refresh"], 2, "{name}: refreshed with the time range");
        assert_eq!(v["definition"], v["query"], "{name}");
        assert!(
            v["query"]
                .as_str()
                .unwrap()
                .contains("$__timeFilter(start_time)"),
            "{name}"
        );
    }
    assert!(
        query_variables(&d)[1]["query"]
            .as_str()
            .unwrap()
            .contains(SCOPE_CLUSTER),
        "namespaces of the selected clusters"
    );

    for (title, kind) in [
        ("Success rate by action type", "timeseries"),
        ("Top failing actions", "table"),
        ("Top recurring alert families", "table"),
        ("Mean time to remediate", "stat"),
        ("Time to remediate", "timeseries"),
    ] {
        assert_eq!(panel(&d, title)["type"], kind, "{title}");
    }
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_i64().unwrap()), "unique panel ids");
        assert_eq!(p["datasource"], ds, "{title}");
        let t = &p["targets"][0];
        assert_eq!(t["datasource"], ds, "{title}");
        assert_eq!(t["rawQuery"], true, "{title}");
        let want = if p["type"] == "timeseries" {
            "time_series"
        } else {
            "table"
        };
        assert_eq!(t["format"], want, "{title}");
        let sql = raw_sql(p);
        for scope in ["$__timeFilter(start_time)", SCOPE_CLUSTER, SCOPE_NAMESPACE] {
            assert!(sql.contains(scope), "{title} lacks {scope}: {sql}");
        }
        if p["type"] == "timeseries" {
            assert!(
                sql.starts_with("SELECT $__timeGroupAlias(start_time, $__interval),"),
                "{title}"
            );
            assert!(
                sql.contains("\nORDER BY 1"),
                "{title}: a time series is sorted by time"
            );
        }
        // The choice about deleted RemediationAudits is stated where the numbers are shown.
        assert!(
            p["description"]
                .as_str()
                .unwrap()
                .contains("deleted_at set) still count"),
            "{title}"
        );
    }
    assert!(panels(&d).len() >= 8);
}

/// Every query of the dashboard with where it comes from.
fn every_query(d: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = query_variables(d)
        .into_iter()
        .map(|v| {
            (
                format!("variable {}", v["name"]),
                v["query"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for p in panels(d) {
        out.push((format!("panel {}", p["title"]), raw_sql(p).to_string()));
    }
    out
}

#[test]
fn dashboard_sql_is_static() {
    let d = dashboard();
    let from = Regex::new(r#"(?i)\bFROM\s+(\(|[A-Za-z_."]+)"#).unwrap();
    let reference = Regex::new(r"\$|\[\[").unwrap();
    for (what, sql) in every_query(&d) {
        // One statement; nothing that builds SQL or text at run time.
        for bad in [
            ";", "||", "--", "/*", "format(", "execute", "quote_", "concat", "'$", "\\",
        ] {
            assert!(
                !sql.to_lowercase().contains(bad),
                "{what} contains {bad:?}: {sql}"
            );
        }
        // Template variables only as lists of literals Grafana quoted; only the macros in MACROS.
        let mut rest = sql
            .replace("ARRAY[$cluster]::text[]", "")
            .replace("ARRAY[$namespace]::text[]", "");
        for m in MACROS {
            rest = rest.replace(m, "");
        }
        assert!(
            !reference.is_match(&rest),
            "{what}: a variable or macro outside the allowed forms: {rest}"
        );
        // Reads the view only.
        for c in from.captures_iter(&sql) {
            let read = c.get(1).unwrap().as_str();
            assert!(read == "(" || read == VIEW, "{what} reads {read}");
        }
        assert!(sql.contains(&format!("FROM {VIEW}")), "{what}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The seeded history and what each panel must show of it.
// ---------------------------------------------------------------------------------------------------------------

/// One seeded audit, as the dashboard should count it.
#[derive(Debug, Clone)]
struct Seed {
    cluster: &'static str,
    namespace: &'static str,
    alert: Option<&'static str>,
    action: &'static str,
    phase: AuditPhase,
    outcome: AuditOutcome,
    start: DateTime<Utc>,
    duration_ms: Option<i64>,
    deleted: bool,
}

impl Seed {
    fn decided(&self) -> bool {
        matches!(self.outcome, AuditOutcome::Success | AuditOutcome::Failure)
    }
    fn succeeded(&self) -> bool {
        self.outcome == AuditOutcome::Success
    }
    fn failed(&self) -> bool {
        self.outcome == AuditOutcome::Failure
    }
    /// What "time to remediate" is made of: Completed with outcome Success, with an end time.
    fn remediated_in(&self) -> Option<i64> {
        (self.phase == AuditPhase::Completed && self.succeeded())
            .then_some(self.duration_ms)
            .flatten()
    }
}

const CLUSTERS: [&str; 3] = ["prod-eu-1", "o'hare-dc", "staging-us"];

/// 48 audits, 5 h apart, starting 11 days before `now`: three clusters (one with a quote in its name), two
/// namespaces, three alert families and audits without alertName plus one alert seen once, restart-pod mostly
/// working, drain-node mostly failing, scale-deployment half and half, some still running, some with their
/// RemediationAudit deleted, and failures in both phases (Failed, and Completed with outcome Failure).
fn history(now: DateTime<Utc>) -> Vec<Seed> {
    let base = DateTime::from_timestamp((now.timestamp() / 3600) * 3600 - 11 * 86_400, 0).unwrap();
    (0..48_i64)
        .map(|i| {
            let u = i as usize;
            let action = ["restart-pod", "scale-deployment", "drain-node"][(u / 2) % 3];
            let outcome = if i % 11 == 5 {
                AuditOutcome::Running
            } else {
                let works = match action {
                    "restart-pod" => i % 5 != 0,
                    "scale-deployment" => i % 2 == 0,
                    _ => i % 4 == 0,
                };
                if works {
                    AuditOutcome::Success
                } else {
                    AuditOutcome::Failure
                }
            };
            let phase = match outcome {
                AuditOutcome::Running => AuditPhase::Processing,
                AuditOutcome::Failure if i % 2 == 0 => AuditPhase::Failed,
                _ => AuditPhase::Completed,
            };
            let alert = if i == 0 {
                Some("EtcdHighFsyncDurations")
            } else {
                [
                    Some("KubePodOOMKilled"),
                    Some("KubeDeploymentReplicasMismatch"),
                    Some("NodeNotReady"),
                    None,
                ][u % 4]
            };
            Seed {
                cluster: CLUSTERS[u % 3],
                namespace: ["payments", "checkout"][(u / 3) % 2],
                alert,
                action,
                phase,
                outcome,
                start: base
                    + chrono::Duration::hours(5 * i)
                    + chrono::Duration::minutes(i * 7 % 60),
                duration_ms: (outcome != AuditOutcome::Running)
                    .then_some(30_000 + (i * 13 % 600) * 1000),
                deleted: i % 10 == 3,
            }
        })
        .collect()
}

/// Writes the history through the store's write path (validation, sanitization, hash chain), then marks the
/// deleted ones as the controller does when a RemediationAudit goes away.
async fn seed(store: &Store, seeds: &[Seed]) {
    for (i, s) in seeds.iter().enumerate() {
        let uid = uuid::Uuid::new_v4().to_string();
        let spec = RemediationAuditSpec {
            remediation_request_id: format!("rr-eff-{i}"),
            alert_fingerprint: format!("fp-{}", i % 6),
            alert_name: s.alert.map(String::from),
            phase: s.phase,
            outcome: s.outcome,
            action_type: s.action.into(),
            severity: "critical".into(),
            environment: "production".into(),
            cluster_name: s.cluster.into(),
            target_resource: format!("apps/v1/Deployment/{}/api", s.namespace),
            start_time: s.start.to_rfc3339_opts(SecondsFormat::Secs, true),
            end_time: s.duration_ms.map(|d| {
                (s.start + chrono::Duration::milliseconds(d))
                    .to_rfc3339_opts(SecondsFormat::Secs, true)
            }),
            error_message: s
                .failed()
                .then(|| "the pod was OOM killed again".to_string()),
            details: Some(serde_json::Map::from_iter([(
                "attempt".to_string(),
                json!(i),
            )])),
        };
        let meta = AuditMeta {
            uid: uid.clone(),
            namespace: s.namespace.into(),
            name: format!("eff-{i}"),
            generation: 1,
        };
        let prepared = prepare(&meta, &spec, SanitizeConfig::default(), Utc::now())
            .unwrap_or_else(|e| panic!("seed {i}: {e:?}"));
        let out = store
            .write_audit(&AuditWrite {
                prepared: &prepared,
                embedding: None,
            })
            .await
            .unwrap();
        assert!(matches!(out, WriteOutcome::Stored(_)), "seed {i}: {out:?}");
        if s.deleted {
            assert!(store.mark_deleted(&uid).await.unwrap());
        }
    }
}

fn rate(part: usize, whole: usize) -> Option<f64> {
    if whole == 0 {
        return None;
    }
    Some(part as f64 / whole as f64)
}

fn mean(xs: &[i64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<i64>() as f64 / xs.len() as f64)
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        _ => false,
    }
}

fn bucket(t: DateTime<Utc>, secs: i64) -> i64 {
    t.timestamp().div_euclid(secs) * secs
}

// ---------------------------------------------------------------------------------------------------------------
// Running the queries as Grafana's login role.
// ---------------------------------------------------------------------------------------------------------------

/// The columns (name, PostgreSQL type) and rows of one query.
struct Answer {
    columns: Vec<(String, String)>,
    rows: Vec<PgRow>,
}

impl Answer {
    fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|(n, _)| n.as_str()).collect()
    }
}

async fn run(conn: &mut PgConnection, sql: &str) -> Result<Answer, sqlx::Error> {
    let stmt = Executor::prepare(&mut *conn, AssertSqlSafe(sql.to_string()).into_sql_str()).await?;
    let columns = stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_info().name().to_string()))
        .collect();
    let rows = sqlx::query(AssertSqlSafe(sql.to_string()))
        .fetch_all(&mut *conn)
        .await?;
    Ok(Answer { columns, rows })
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_else(|| format!("not a database error: {e}"))
}

fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// The options of `db` for another user (trust authentication on the test cluster's loopback).
fn as_user(db: &TestDb, user: &str) -> PgConnectOptions {
    PgConnectOptions::from_str(&db.url).unwrap().username(user)
}

fn url_as(db: &TestDb, user: &str) -> String {
    let o = as_user(db, user);
    format!(
        "postgres://{user}@{}:{}/{}",
        o.get_host(),
        o.get_port(),
        db.name
    )
}

const NUMERIC: [&str; 6] = ["INT2", "INT4", "INT8", "FLOAT4", "FLOAT8", "NUMERIC"];

/// The shape Grafana needs of a panel's answer, by panel type.
fn check_shape(p: &Value, a: &Answer) {
    let title = p["title"].as_str().unwrap();
    let cols = &a.columns;
    let numeric = |t: &str| NUMERIC.contains(&t);
    match p["type"].as_str().unwrap() {
        "timeseries" => {
            // A `time` column (what $__timeGroupAlias gives: epoch seconds, which Grafana converts; or a
            // timestamp), optionally one text `metric` naming the series, and numeric values.
            assert_eq!(cols[0].0, "time", "{title}: {cols:?}");
            assert!(
                numeric(cols[0].1.as_str()) || cols[0].1 == "TIMESTAMPTZ",
                "{title}: time is {}",
                cols[0].1
            );
            let mut values = 0;
            for (name, ty) in &cols[1..] {
                if name == "metric" {
                    assert_eq!(ty, "TEXT", "{title}");
                } else {
                    assert!(numeric(ty.as_str()), "{title}: {name} is {ty}");
                    values += 1;
                }
            }
            assert!(values >= 1, "{title}: no value column: {cols:?}");
            assert!(
                cols.iter().filter(|(n, _)| n == "metric").count() <= 1,
                "{title}"
            );
        }
        "stat" => {
            assert_eq!(cols.len(), 1, "{title}: {cols:?}");
            assert!(numeric(cols[0].1.as_str()), "{title}: {cols:?}");
            assert_eq!(a.rows.len(), 1, "{title}: an aggregate has exactly one row");
        }
        "table" => {
            // Exactly the columns the panel's overrides name (display names, units), in that order; the label
            // first; times where the override shows a time, rates as floating point, counts numeric.
            let overrides = p["fieldConfig"]["overrides"].as_array().unwrap();
            let named: Vec<&str> = overrides
                .iter()
                .map(|o| {
                    assert_eq!(o["matcher"]["id"], "byName", "{title}");
                    o["matcher"]["options"].as_str().unwrap()
                })
                .collect();
            assert_eq!(a.names(), named, "{title}");
            assert_eq!(cols[0].1, "TEXT", "{title}: label column");
            for (o, (name, ty)) in overrides.iter().zip(cols).skip(1) {
                let unit = o["properties"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["id"] == "unit")
                    .map(|x| x["value"].as_str().unwrap());
                match unit {
                    Some("dateTimeFromNow") => assert_eq!(ty, "TIMESTAMPTZ", "{title}: {name}"),
                    Some("percentunit") => assert_eq!(ty, "FLOAT8", "{title}: {name}"),
                    _ => assert!(numeric(ty.as_str()), "{title}: {name} is {ty}"),
                }
            }
        }
        "bargauge" => {
            // One bar per row: a text label and the value the panel's field regex picks.
            let fields = p["options"]["reduceOptions"]["fields"].as_str().unwrap();
            assert_eq!(p["options"]["reduceOptions"]["values"], true, "{title}");
            let re = Regex::new(fields.trim_matches('/')).unwrap();
            assert_eq!(cols.len(), 2, "{title}: {cols:?}");
            assert_eq!(cols[0].1, "TEXT", "{title}");
            assert!(
                re.is_match(&cols[1].0) && numeric(cols[1].1.as_str()),
                "{title}: {cols:?}"
            );
        }
        other => panic!("{title}: panel type {other} not checked"),
    }
}

/// Resolves the template variables as Grafana does on load: each query variable's query expanded with the
/// variables before it, run, its values read from the one text column; then the selection (`None`: All, which
/// Grafana expands to every value). Returns (name, selected values), in dashboard order.
async fn resolve(
    conn: &mut PgConnection,
    d: &Value,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    pick: &[(&str, Option<Vec<String>>)],
) -> (Vars, BTreeMap<String, Vec<String>>) {
    let mut selected: Vars = Vec::new();
    let mut options = BTreeMap::new();
    for v in query_variables(d) {
        let name = v["name"].as_str().unwrap().to_string();
        let sql = expand(
            v["query"].as_str().unwrap(),
            &Ctx {
                from,
                to,
                interval: "1h",
                vars: &selected,
            },
        );
        let a = run(conn, &sql)
            .await
            .unwrap_or_else(|e| panic!("variable {name}: {e}\n{sql}"));
        assert_eq!(a.columns.len(), 1, "variable {name}: {:?}", a.columns);
        assert_eq!(a.columns[0].1, "TEXT", "variable {name}");
        let values: Vec<String> = a.rows.iter().map(|r| r.get::<String, _>(0)).collect();
        let choice = pick
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, c)| c.clone());
        let chosen = match choice {
            Some(c) => {
                for x in &c {
                    assert!(
                        values.contains(x),
                        "variable {name}: {x:?} not among {values:?}"
                    );
                }
                c
            }
            None => values.clone(),
        };
        options.insert(name.clone(), values);
        selected.push((name, chosen));
    }
    (selected, options)
}

/// Every panel's query, expanded for this range and selection with the panel's minimum interval (and again with one
/// day, another bucket width Grafana may choose), run as Grafana; each answer checked against its panel type.
/// Returns the answers at the minimum interval, by title.
async fn run_panels(
    conn: &mut PgConnection,
    d: &Value,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    vars: &[(String, Vec<String>)],
) -> BTreeMap<String, Answer> {
    let mut out = BTreeMap::new();
    for p in panels(d) {
        let title = p["title"].as_str().unwrap().to_string();
        let min_interval = p["interval"].as_str().unwrap_or("1h");
        for interval in [min_interval, "1d"] {
            let sql = expand(
                raw_sql(p),
                &Ctx {
                    from,
                    to,
                    interval,
                    vars,
                },
            );
            let a = run(conn, &sql)
                .await
                .unwrap_or_else(|e| panic!("{title} ({interval}): {e}\n{sql}"));
            check_shape(p, &a);
            if interval == min_interval {
                out.insert(title.clone(), a);
            }
        }
    }
    out
}

/// The expanded query of a panel, for reading its answer back in another shape (a wrapping SELECT).
fn expanded(d: &Value, title: &str, ctx: &Ctx) -> String {
    expand(raw_sql(panel(d, title)), ctx)
}

#[tokio::test]
async fn every_panel_runs_as_the_read_only_role_and_shows_the_seeded_history() {
    let db = TestDb::new().await;
    let store = db.store().await;
    let now = Utc::now();
    let seeds = history(now);
    seed(&store, &seeds).await;
    let d = dashboard();

    // The group role of migration 0004: no login, no attributes; in this schema it may SELECT the view and
    // nothing else, and may not create anything.
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let attrs = sqlx::query(
        "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(READER)
    .fetch_one(&mut admin)
    .await
    .unwrap_or_else(|e| panic!("migration 0004 made no role {READER}: {e}"));
    for i in 0..6_usize {
        assert!(!attrs.get::<bool, _>(i), "{READER}: attribute {i} set");
    }
    let grants: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text,
                has_table_privilege($1, c.oid, 'SELECT'),
                has_table_privilege($1, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
    )
    .bind(READER)
    .bind(SCHEMA)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(grants.len() >= 8, "{grants:?}");
    let readable: Vec<&str> = grants
        .iter()
        .filter(|g| g.1)
        .map(|g| g.0.as_str())
        .collect();
    assert_eq!(readable, [VIEW], "{READER} reads exactly the view");
    assert!(
        grants.iter().all(|g| !g.2),
        "{READER} writes nothing: {grants:?}"
    );
    let can_create: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, $2, 'CREATE')")
        .bind(READER)
        .bind(SCHEMA)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!can_create);
    // The view leaves the free text and the hashes out.
    let view_columns: BTreeSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT column_name::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
    )
    .bind(SCHEMA)
    .bind(VIEW)
    .fetch_all(&mut admin)
    .await
    .unwrap()
    .into_iter()
    .collect();
    for hidden in [
        "details",
        "error_message",
        "embedding_text",
        "content_hash",
        "chain_hash",
        "cr_uid",
        "name",
    ] {
        assert!(!view_columns.contains(hidden), "{VIEW} shows {hidden}");
    }
    for shown in [
        "action_type",
        "outcome",
        "phase",
        "duration_ms",
        "start_time",
        "cluster_name",
        "namespace",
        "deleted_at",
    ] {
        assert!(view_columns.contains(shown), "{VIEW} lacks {shown}");
    }

    // Grafana's login role, made exactly as docs/operations.md says (without a password: the test cluster trusts
    // loopback).
    let login = format!("t_grafana_{}", unique_suffix());
    exec(
        &mut admin,
        &format!(
            "CREATE ROLE {login} LOGIN IN ROLE {READER};
             ALTER ROLE {login} SET search_path = {SCHEMA};
             ALTER ROLE {login} SET default_transaction_read_only = on;
             ALTER ROLE {login} SET statement_timeout = '30s';"
        ),
    )
    .await;
    let mut grafana = PgConnection::connect_with(&as_user(&db, &login))
        .await
        .unwrap();

    // It reads the view, and is refused everything else the schema holds (and writes, even to the view).
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_outcomes")
        .fetch_one(&mut grafana)
        .await
        .unwrap();
    assert_eq!(
        n,
        seeds.len() as i64,
        "deleted audits are rows of the view too"
    );
    for refused in [
        "SELECT 1 FROM audits LIMIT 1",
        "SELECT 1 FROM audit_history LIMIT 1",
        "SELECT 1 FROM audit_history_default LIMIT 1",
        "SELECT 1 FROM audit_embeddings LIMIT 1",
        "SELECT 1 FROM audit_history_all LIMIT 1",
        "SELECT 1 FROM audit_history_legal_hold LIMIT 1",
        "SELECT 1 FROM retention_runs LIMIT 1",
        "SELECT 1 FROM _sqlx_migrations LIMIT 1",
        "SELECT * FROM verify_audit_chain(1)",
        "SELECT checkpoint_instant()",
    ] {
        let e = run(&mut grafana, refused)
            .await
            .err()
            .unwrap_or_else(|| panic!("{login} may run {refused}"));
        assert_eq!(sqlstate(&e), "42501", "{refused}: {e}");
    }
    let e = run(&mut grafana, "SELECT details FROM audit_outcomes")
        .await
        .err()
        .unwrap();
    assert_eq!(sqlstate(&e), "42703", "{e}");
    for write in [
        "UPDATE audit_outcomes SET phase = 'Completed'",
        "DELETE FROM audit_outcomes",
        "CREATE TABLE audit_outcomes_copy (id bigint)",
    ] {
        assert!(
            run(&mut grafana, write).await.is_err(),
            "{login} may run {write}"
        );
    }

    // The dashboard's default range (now-30d .. now, at Grafana's millisecond precision), every variable All.
    assert_eq!(d["time"]["from"], "now-30d");
    let to = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let from = to - chrono::Duration::days(30);
    let (vars, options) = resolve(&mut grafana, &d, from, to, &[]).await;
    let clusters: BTreeSet<&str> = seeds.iter().map(|s| s.cluster).collect();
    let namespaces: BTreeSet<&str> = seeds.iter().map(|s| s.namespace).collect();
    assert_eq!(
        options["cluster"]
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        clusters
    );
    assert_eq!(
        options["namespace"]
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        namespaces
    );
    let answers = run_panels(&mut grafana, &d, from, to, &vars).await;
    for (title, a) in &answers {
        assert!(!a.rows.is_empty(), "{title}: no row for the seeded history");
    }
    let ctx = Ctx {
        from,
        to,
        interval: "1h",
        vars: &vars,
    };

    // The stats.
    let stat_f64 = |title: &str| -> Option<f64> { answers[title].rows[0].get::<Option<f64>, _>(0) };
    let count = answers["Remediations"].rows[0].get::<i64, _>(0);
    assert_eq!(
        count,
        seeds.len() as i64,
        "every audit counts, deleted or not"
    );
    let decided = seeds.iter().filter(|s| s.decided()).count();
    let succeeded = seeds.iter().filter(|s| s.succeeded()).count();
    assert!(close(stat_f64("Success rate"), rate(succeeded, decided)));
    let remediated: Vec<i64> = seeds.iter().filter_map(Seed::remediated_in).collect();
    assert!(close(stat_f64("Mean time to remediate"), mean(&remediated)));
    let mut families: BTreeMap<&str, Vec<&Seed>> = BTreeMap::new();
    for s in &seeds {
        if let Some(a) = s.alert {
            families.entry(a).or_default().push(s);
        }
    }
    let recurring = families.values().filter(|v| v.len() > 1).count();
    assert_eq!(recurring, 3);
    assert_eq!(
        answers["Recurring alert families"].rows[0].get::<i64, _>(0),
        recurring as i64
    );

    // Success rate by action type: per bucket and action, Success over Success + Failure, at 1 h and at 1 d.
    for interval in ["1h", "1d"] {
        let secs = interval_seconds(interval);
        let mut want: BTreeMap<(i64, String), (usize, usize)> = BTreeMap::new();
        for s in seeds.iter().filter(|s| s.decided()) {
            let e = want
                .entry((bucket(s.start, secs), s.action.to_string()))
                .or_default();
            e.0 += usize::from(s.succeeded());
            e.1 += 1;
        }
        let sql = expanded(&d, "Success rate by action type", &Ctx { interval, ..ctx });
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT \"time\"::float8 AS t, metric, success_rate FROM ({sql}) AS panel"
        )))
        .fetch_all(&mut grafana)
        .await
        .unwrap();
        let got: BTreeMap<(i64, String), f64> = rows
            .iter()
            .map(|r| {
                (
                    (r.get::<f64, _>("t") as i64, r.get("metric")),
                    r.get("success_rate"),
                )
            })
            .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{interval}: buckets"
        );
        for (k, (ok, all)) in &want {
            assert!(
                close(Some(got[k]), rate(*ok, *all)),
                "{interval} {k:?}: {} vs {ok}/{all}",
                got[k]
            );
        }
        // The semantic check named in the issue: one action's rate equals its seeded succeeded / attempts.
        let k = want.keys().find(|k| k.1 == "scale-deployment").unwrap();
        let (ok, all) = want[k];
        assert!(close(Some(got[k]), Some(ok as f64 / all as f64)));
    }

    // Top failing actions: every action with a failure, most failures first; attempts count every audit.
    let mut want: Vec<FailingRow> = Vec::new();
    for action in ["restart-pod", "scale-deployment", "drain-node"] {
        let of: Vec<&Seed> = seeds.iter().filter(|s| s.action == action).collect();
        let failures = of.iter().filter(|s| s.failed()).count();
        let decided = of.iter().filter(|s| s.decided()).count();
        let clusters = of.iter().map(|s| s.cluster).collect::<BTreeSet<_>>().len();
        if failures > 0 {
            want.push((
                action.into(),
                of.len() as i64,
                failures as i64,
                rate(failures, decided),
                clusters as i64,
            ));
        }
    }
    want.sort_by(|a, b| {
        b.2.cmp(&a.2)
            .then(b.3.partial_cmp(&a.3).unwrap())
            .then(a.0.cmp(&b.0))
    });
    let got: Vec<FailingRow> = answers["Top failing actions"]
        .rows
        .iter()
        .map(|r| {
            (
                r.get("action_type"),
                r.get("attempts"),
                r.get("failures"),
                r.get("failure_rate"),
                r.get("clusters"),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.0, g.1, g.2, g.4),
            (&w.0, w.1, w.2, w.4),
            "{got:?} vs {want:?}"
        );
        assert!(close(g.3, w.3), "{g:?} vs {w:?}");
    }
    assert_eq!(
        got[0].0, "drain-node",
        "the action that mostly fails comes first"
    );

    // Top recurring alert families: the families seen more than once, never the one seen once nor the audits
    // without alertName; counts and distinct clusters as seeded.
    let rows = &answers["Top recurring alert families"].rows;
    let got: BTreeMap<String, (i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r.get("alert_name"),
                (r.get("audits"), r.get("clusters"), r.get("namespaces")),
            )
        })
        .collect();
    let want: BTreeMap<String, (i64, i64, i64)> = families
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, v)| {
            let clusters = v.iter().map(|s| s.cluster).collect::<BTreeSet<_>>().len() as i64;
            let namespaces = v.iter().map(|s| s.namespace).collect::<BTreeSet<_>>().len() as i64;
            (k.to_string(), (v.len() as i64, clusters, namespaces))
        })
        .collect();
    assert_eq!(got, want);
    assert!(!got.contains_key("EtcdHighFsyncDurations"));

    // Time to remediate: per bucket, the mean of the remediated durations.
    let mut want: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for s in &seeds {
        if let Some(ms) = s.remediated_in() {
            want.entry(bucket(s.start, 3600)).or_default().push(ms);
        }
    }
    let sql = expanded(&d, "Time to remediate", &ctx);
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT \"time\"::float8 AS t, mean FROM ({sql}) AS panel"
    )))
    .fetch_all(&mut grafana)
    .await
    .unwrap();
    assert_eq!(rows.len(), want.len());
    for r in &rows {
        let t = r.get::<f64, _>("t") as i64;
        assert!(close(Some(r.get("mean")), mean(&want[&t])), "bucket {t}");
    }

    // Mean time to remediate by action type.
    for r in &answers["Mean time to remediate by action type"].rows {
        let action: String = r.get("action_type");
        let of: Vec<i64> = seeds
            .iter()
            .filter(|s| s.action == action)
            .filter_map(Seed::remediated_in)
            .collect();
        assert!(
            close(Some(r.get("mean_time_to_remediate")), mean(&of)),
            "{action}"
        );
    }

    // Remediations by outcome: every audit in one bucket of one outcome.
    let total: i64 = answers["Remediations by outcome"]
        .rows
        .iter()
        .map(|r| r.get::<i64, _>("remediations"))
        .sum();
    assert_eq!(total, seeds.len() as i64);

    // One cluster selected (the one whose name holds a quote: Grafana doubles it), namespaces All within it.
    let one = "o'hare-dc".to_string();
    let (vars, options) = resolve(
        &mut grafana,
        &d,
        from,
        to,
        &[("cluster", Some(vec![one.clone()]))],
    )
    .await;
    let in_cluster: Vec<&Seed> = seeds.iter().filter(|s| s.cluster == one).collect();
    assert_eq!(
        options["namespace"]
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        in_cluster
            .iter()
            .map(|s| s.namespace)
            .collect::<BTreeSet<_>>()
    );
    let answers = run_panels(&mut grafana, &d, from, to, &vars).await;
    assert_eq!(
        answers["Remediations"].rows[0].get::<i64, _>(0),
        in_cluster.len() as i64
    );
    // And one namespace of it.
    let (vars, _) = resolve(
        &mut grafana,
        &d,
        from,
        to,
        &[
            ("cluster", Some(vec![one.clone()])),
            ("namespace", Some(vec!["payments".into()])),
        ],
    )
    .await;
    let answers = run_panels(&mut grafana, &d, from, to, &vars).await;
    let want = in_cluster
        .iter()
        .filter(|s| s.namespace == "payments")
        .count();
    assert!(want > 0);
    assert_eq!(
        answers["Remediations"].rows[0].get::<i64, _>(0),
        want as i64
    );

    // A range without audits: the variables have no value at all, and every query is still valid SQL (no
    // `IN ()`), answering nothing (the aggregates: 0 or NULL).
    let from = DateTime::parse_from_rfc3339("2001-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let to = DateTime::parse_from_rfc3339("2001-02-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let (vars, options) = resolve(&mut grafana, &d, from, to, &[]).await;
    assert!(options.values().all(Vec::is_empty), "{options:?}");
    let answers = run_panels(&mut grafana, &d, from, to, &vars).await;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap();
        if p["type"] != "stat" {
            assert!(answers[title].rows.is_empty(), "{title}");
        }
    }
    assert_eq!(answers["Remediations"].rows[0].get::<i64, _>(0), 0);
    assert_eq!(
        answers["Success rate"].rows[0].get::<Option<f64>, _>(0),
        None
    );

    grafana.close().await.unwrap();
    exec(&mut admin, &format!("DROP ROLE {login}")).await;
}

#[tokio::test]
async fn the_role_is_skipped_without_createrole_granted_to_when_it_exists_and_fits_63_bytes() {
    let db = TestDb::new().await;
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let suffix = unique_suffix();
    // An operator user without CREATEROLE that may create schemas in this database.
    let owner = format!("t_owner_{suffix}");
    exec(
        &mut admin,
        &format!(
            "CREATE ROLE {owner} LOGIN NOSUPERUSER NOCREATEROLE; GRANT CREATE ON DATABASE {} TO {owner};",
            db.name
        ),
    )
    .await;
    let migrate = |schema: String, user: String| {
        let url = url_as(&db, &user);
        async move {
            let store = Store::connect_lazy(&StoreConfig::new(&url, &schema).unwrap()).unwrap();
            let v = store
                .migrate()
                .await
                .unwrap_or_else(|e| panic!("migrations as {user} in {schema}: {e}"));
            assert!(v >= 4, "{v}");
            store.pool().close().await;
        }
    };
    let role_exists = |name: String| {
        let url = db.url.clone();
        async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            )
            .bind(name)
            .fetch_one(&mut c)
            .await
            .unwrap()
        }
    };
    let may_read = |role: String, schema: String| {
        let url = db.url.clone();
        async move {
            let mut c = PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, bool>(
                "SELECT has_schema_privilege($1, $2, 'USAGE')
                        AND has_table_privilege($1, format('%I.audit_outcomes', $2), 'SELECT')",
            )
            .bind(role)
            .bind(schema)
            .fetch_one(&mut c)
            .await
            .unwrap()
        }
    };

    // 1. No role of that name and no CREATEROLE: the migrations succeed (a NOTICE says what was skipped), the
    //    view is there, no role is.
    let plain = format!("t_eff_{suffix}");
    migrate(plain.clone(), owner.clone()).await;
    assert!(!role_exists(format!("{plain}_reader")).await);
    let views: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_views WHERE schemaname = $1 AND viewname = 'audit_outcomes'",
    )
    .bind(&plain)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(views, 1);

    // 2. The role made by a DBA beforehand: the same user, still without CREATEROLE, grants to it.
    let pre = format!("t_pre_{suffix}");
    let pre_reader = format!("{pre}_reader");
    exec(&mut admin, &format!("CREATE ROLE {pre_reader} NOLOGIN")).await;
    migrate(pre.clone(), owner.clone()).await;
    assert!(may_read(pre_reader.clone(), pre.clone()).await);
    // ... and leaves the DBA's role alone (no search_path set on it).
    let settings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = $1",
    )
    .bind(&pre_reader)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(settings, 0);

    // 3. A superuser and the longest schema name (63 bytes): the role name is its first 56 bytes + "_reader".
    let long = format!("t_long_{suffix}_{}", "x".repeat(63 - 8 - suffix.len()));
    assert_eq!(long.len(), 63);
    let long_reader = format!("{}_reader", &long[..56]);
    let superuser = PgConnectOptions::from_str(&db.url)
        .unwrap()
        .get_username()
        .to_string();
    migrate(long.clone(), superuser).await;
    assert!(role_exists(long_reader.clone()).await);
    assert!(may_read(long_reader.clone(), long.clone()).await);
    let path: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
         WHERE r.rolname = $1",
    )
    .bind(&long_reader)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(path, [format!("search_path={long}")]);

    // The roles are the cluster's, not this database's: remove them.
    exec(
        &mut admin,
        &format!(
            "DROP SCHEMA {plain} CASCADE; DROP SCHEMA {pre} CASCADE; DROP SCHEMA {long} CASCADE;
             DROP OWNED BY {owner}, {pre_reader}, {long_reader};
             DROP ROLE {pre_reader}; DROP ROLE {long_reader}; DROP ROLE {owner};"
        ),
    )
    .await;
}
