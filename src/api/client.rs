//! The client of the query API shared by `kubectl audit …` (the `kubectl-audit` plugin) and `datastorage query …`.
//!
//! Two ways to reach the API:
//! - **production**: through the kube-apiserver's service proxy,
//!   `/api/v1/namespaces/<ns>/services/<svc>:<port>/proxy/api/v1/…`, with the kubeconfig's cluster and credentials.
//!   The apiserver authenticates the proxy request and strips its `Authorization` header, so the caller's token is
//!   sent again in `X-Datastorage-Authorization`, which the API verifies with a TokenReview like any bearer token;
//! - **direct**: `--server http://host:port` (port-forward, in-cluster, tests), token in `Authorization`.
//!
//! The token is `--token`, else the kubeconfig user's `token` / `tokenFile`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::auth::FORWARDED_TOKEN_HEADER;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// How to reach the API; global flags of `kubectl audit` and `datastorage query`.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Namespace to query (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Query every namespace you may list.
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// The API's base URL (direct access, e.g. through `kubectl port-forward`); default: the apiserver's service proxy.
    #[arg(long, global = true, env = "DATASTORAGE_API_SERVER")]
    pub server: Option<String>,
    /// Bearer token (default: the kubeconfig user's token).
    #[arg(long, global = true, env = "DATASTORAGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Path of the kubeconfig (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the operator's Service (service-proxy mode).
    #[arg(
        long,
        global = true,
        env = "DATASTORAGE_SERVICE_NAMESPACE",
        default_value = "datastorage-system"
    )]
    pub service_namespace: String,
    /// Name of the operator's Service (service-proxy mode).
    #[arg(
        long,
        global = true,
        env = "DATASTORAGE_SERVICE_NAME",
        default_value = "datastorage-operator"
    )]
    pub service_name: String,
    /// Port (name or number) of the Service's query API (service-proxy mode).
    #[arg(
        long,
        global = true,
        env = "DATASTORAGE_SERVICE_PORT",
        default_value = "8080"
    )]
    pub service_port: String,
}

/// Filters shared by list and search.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    #[arg(long)]
    pub phase: Option<String>,
    #[arg(long)]
    pub outcome: Option<String>,
    #[arg(long)]
    pub severity: Option<String>,
    #[arg(long)]
    pub cluster: Option<String>,
    #[arg(long)]
    pub action_type: Option<String>,
    /// Only audits that started at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only audits that started before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
}

impl FilterArgs {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        [
            ("phase", &self.phase),
            ("outcome", &self.outcome),
            ("severity", &self.severity),
            ("cluster", &self.cluster),
            ("actionType", &self.action_type),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum QueryCommand {
    /// List audits, newest first.
    List {
        #[command(flatten)]
        filters: FilterArgs,
        /// Page size (1–1000).
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Continue after a previous page (its nextCursor).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one audit with its history and hash-chain verification.
    Get { id: i64 },
    /// Semantic search by free text, or for audits similar to another one (--similar-to).
    Search {
        /// What happened, in words (e.g. "pod keeps getting OOM killed").
        query: Option<String>,
        /// Audits similar to this audit id.
        #[arg(long, conflicts_with = "query")]
        similar_to: Option<i64>,
        #[command(flatten)]
        filters: FilterArgs,
        #[arg(long, default_value_t = 10)]
        limit: i64,
        /// Only results with at least this cosine similarity (-1..1).
        #[arg(long)]
        min_similarity: Option<f64>,
    },
    /// Verify an audit's hash chain; exit code 1 when it does not verify.
    Verify { id: i64 },
}

/// An error answer of the API (RFC 7807), or a transport failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {title}: {detail}{}", parameter.as_ref().map(|p| format!(" (parameter {p})")).unwrap_or_default())]
    Problem {
        status: u16,
        title: String,
        detail: String,
        parameter: Option<String>,
    },
    #[error("{0}")]
    Transport(String),
}

enum Target {
    Direct {
        base: reqwest::Url,
        http: reqwest::Client,
    },
    Proxy {
        client: kube::Client,
        prefix: String,
    },
}

/// A connected client.
pub struct ApiClient {
    target: Target,
    token: Option<String>,
    /// The kubeconfig context's namespace (or "default").
    pub default_namespace: String,
}

impl ApiClient {
    pub async fn connect(c: &Connection) -> anyhow::Result<Self> {
        let kubeconfig = match &c.kubeconfig {
            Some(path) => Some(Kubeconfig::read_from(path)?),
            None => Kubeconfig::read().ok(),
        };
        let options = KubeConfigOptions {
            context: c.context.clone(),
            ..Default::default()
        };
        let config = match kubeconfig {
            Some(kc) => Some(kube::Config::from_custom_kubeconfig(kc, &options).await?),
            None => None,
        };
        let kube_token = config.as_ref().and_then(|cfg| {
            cfg.auth_info
                .token
                .as_ref()
                .map(|t| t.expose_secret().to_string())
                .or_else(|| {
                    cfg.auth_info
                        .token_file
                        .as_ref()
                        .and_then(|f| std::fs::read_to_string(f).ok())
                        .map(|t| t.trim().to_string())
                })
        });
        let token = c.token.clone().or(kube_token).filter(|t| !t.is_empty());
        let default_namespace = config
            .as_ref()
            .map(|cfg| cfg.default_namespace.clone())
            .unwrap_or_else(|| "default".into());
        let target = match &c.server {
            Some(server) => Target::Direct {
                base: reqwest::Url::parse(server)
                    .map_err(|e| anyhow::anyhow!("invalid --server {server:?}: {e}"))?,
                http: reqwest::Client::builder()
                    .timeout(std::time::Duration::from_secs(60))
                    .build()?,
            },
            None => {
                let Some(config) = config else {
                    anyhow::bail!(
                        "no kubeconfig found: set KUBECONFIG, pass --kubeconfig, or reach the API directly with --server"
                    );
                };
                if token.is_none() {
                    anyhow::bail!(
                        "the kubeconfig user has no bearer token to forward to the query API (client certificates \
                         cannot be forwarded through the apiserver's proxy); pass --token, e.g. \
                         --token \"$(kubectl create token <serviceaccount>)\""
                    );
                }
                Target::Proxy {
                    client: kube::Client::try_from(config)?,
                    prefix: format!(
                        "/api/v1/namespaces/{}/services/{}:{}/proxy",
                        c.service_namespace, c.service_name, c.service_port
                    ),
                }
            }
        };
        Ok(Self {
            target,
            token,
            default_namespace,
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let transport = |e: &dyn std::fmt::Display| ClientError::Transport(e.to_string());
        let body_bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| transport(&e))?;
        let (status, bytes) = match &self.target {
            Target::Direct { base, http } => {
                let mut url = base
                    .join(path.trim_start_matches('/'))
                    .map_err(|e| transport(&e))?;
                if !query.is_empty() {
                    url.query_pairs_mut()
                        .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
                }
                let method =
                    reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| transport(&e))?;
                let mut req = http
                    .request(method, url)
                    .header("accept", "application/json");
                if let Some(t) = &self.token {
                    req = req.bearer_auth(t);
                }
                if let Some(b) = body_bytes {
                    req = req.header("content-type", "application/json").body(b);
                }
                let resp = req.send().await.map_err(|e| {
                    ClientError::Transport(format!("cannot reach the query API: {e}"))
                })?;
                let status = resp.status().as_u16();
                (
                    status,
                    resp.bytes().await.map_err(|e| transport(&e))?.to_vec(),
                )
            }
            Target::Proxy { client, prefix } => {
                let mut url =
                    reqwest::Url::parse("http://proxy.invalid/").map_err(|e| transport(&e))?;
                url.set_path(&format!("{prefix}{path}"));
                if !query.is_empty() {
                    url.query_pairs_mut()
                        .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
                }
                let uri = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_string(),
                };
                let mut builder = axum::http::Request::builder()
                    .method(method)
                    .uri(uri)
                    .header("accept", "application/json");
                if let Some(t) = &self.token {
                    builder = builder.header(FORWARDED_TOKEN_HEADER, format!("Bearer {t}"));
                }
                if body_bytes.is_some() {
                    builder = builder.header("content-type", "application/json");
                }
                let req = builder
                    .body(kube::client::Body::from(body_bytes.unwrap_or_default()))
                    .map_err(|e| transport(&e))?;
                let resp = client.send(req).await.map_err(|e| {
                    ClientError::Transport(format!(
                        "cannot reach the query API through the apiserver: {e}"
                    ))
                })?;
                let status = resp.status().as_u16();
                let bytes = resp
                    .into_body()
                    .collect_bytes()
                    .await
                    .map_err(|e| transport(&e))?;
                (status, bytes.to_vec())
            }
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Transport(format!("the API answered {status} with invalid JSON: {e}"))
            });
        }
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(p) if p.get("title").is_some() => Err(ClientError::Problem {
                status,
                title: p["title"].as_str().unwrap_or_default().to_string(),
                detail: p["detail"].as_str().unwrap_or_default().to_string(),
                parameter: p["parameter"].as_str().map(str::to_string),
            }),
            _ => Err(ClientError::Transport(format!(
                "the API answered {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(500)
                    .collect::<String>()
            ))),
        }
    }

    pub async fn list(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        self.call("GET", "/api/v1/audits", query, None).await
    }

    pub async fn get(&self, id: i64) -> Result<Value, ClientError> {
        self.call("GET", &format!("/api/v1/audits/{id}"), &[], None)
            .await
    }

    pub async fn search(&self, body: &Value) -> Result<Value, ClientError> {
        self.call("POST", "/api/v1/audits/search", &[], Some(body))
            .await
    }
}

/// Runs one `kubectl audit` / `datastorage query` command; prints to stdout, errors to stderr.
pub async fn run(conn: &Connection, cmd: &QueryCommand) -> ExitCode {
    match execute(conn, cmd).await {
        Ok((out, code)) => {
            print!("{out}");
            code
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn execute(conn: &Connection, cmd: &QueryCommand) -> anyhow::Result<(String, ExitCode)> {
    let client = ApiClient::connect(conn).await?;
    let namespace = if conn.all_namespaces {
        None
    } else {
        Some(
            conn.namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace.clone()),
        )
    };
    let now = Utc::now();
    match cmd {
        QueryCommand::List {
            filters,
            limit,
            cursor,
        } => {
            let mut query = filters.pairs();
            if let Some(ns) = &namespace {
                query.push(("namespace", ns.clone()));
            }
            query.push(("limit", limit.to_string()));
            if let Some(c) = cursor {
                query.push(("cursor", c.clone()));
            }
            let page = client.list(&query).await?;
            if conn.output == Output::Table {
                if let Some(next) = page["nextCursor"].as_str() {
                    eprintln!("(more audits: add --cursor {next})");
                }
                return Ok((list_table(&page["items"], now, false), ExitCode::SUCCESS));
            }
            Ok((format_value(&page, conn.output)?, ExitCode::SUCCESS))
        }
        QueryCommand::Get { id } => {
            let detail = client.get(*id).await?;
            let out = match conn.output {
                Output::Table => get_text(&detail, now),
                other => format_value(&detail, other)?,
            };
            Ok((out, ExitCode::SUCCESS))
        }
        QueryCommand::Search {
            query,
            similar_to,
            filters,
            limit,
            min_similarity,
        } => {
            let mut body = serde_json::Map::new();
            match (query, similar_to) {
                (Some(q), _) => body.insert("query".into(), json!(q)),
                (None, Some(id)) => body.insert("similarToId".into(), json!(id)),
                (None, None) => anyhow::bail!("give a QUERY text or --similar-to ID"),
            };
            for (k, v) in filters.pairs() {
                body.insert(k.into(), json!(v));
            }
            if let Some(ns) = &namespace {
                body.insert("namespace".into(), json!(ns));
            }
            body.insert("limit".into(), json!(limit));
            if let Some(m) = min_similarity {
                body.insert("minSimilarity".into(), json!(m));
            }
            let res = client.search(&Value::Object(body)).await?;
            let out = match conn.output {
                Output::Table => list_table(&res["results"], now, true),
                other => format_value(&res, other)?,
            };
            Ok((out, ExitCode::SUCCESS))
        }
        QueryCommand::Verify { id } => {
            let detail = match client.get(*id).await {
                Ok(d) => d,
                // A missing audit does not verify (the API says when the signed checkpoint lists it).
                Err(ClientError::Problem {
                    status: 404,
                    detail,
                    ..
                }) => {
                    let out = match conn.output {
                        Output::Table => format!("Audit {id}: NOT VERIFIED: {detail}\n"),
                        other => format_value(
                            &json!({ "id": id, "chainVerified": false, "problems": [detail] }),
                            other,
                        )?,
                    };
                    return Ok((out, ExitCode::from(1)));
                }
                Err(e) => return Err(e.into()),
            };
            let (text, ok) = verify_text(&detail);
            let out = match conn.output {
                Output::Table => text,
                other => format_value(
                    &json!({
                        "id": id,
                        "chainVerified": ok,
                        "chainHeadMatches": detail["chainHeadMatches"],
                        "chainChecks": detail["chainChecks"],
                        "rowMismatches": detail["rowMismatches"],
                        "anchors": detail["anchors"],
                        "problems": detail["problems"],
                    }),
                    other,
                )?,
            };
            Ok((
                out,
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                },
            ))
        }
    }
}

fn format_value(v: &Value, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Yaml => serde_saphyr::to_string(v)?,
        _ => format!("{}\n", serde_json::to_string_pretty(v)?),
    })
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".into(),
        other => other.to_string(),
    }
}

/// Kubernetes-style age: 42s, 7m, 5h, 3d.
pub fn age(start: &str, now: DateTime<Utc>) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(start) else {
        return "<unknown>".into();
    };
    let secs = (now - t.with_timezone(&Utc)).num_seconds().max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Left-aligned columns separated by three spaces, like kubectl.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}   ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn list_table(items: &Value, now: DateTime<Utc>, similarity: bool) -> String {
    let items = items.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "No audits found.\n".into();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let mut r = vec![
                s(&i["id"]),
                s(&i["namespace"]),
                s(&i["name"]),
                s(&i["actionType"]),
                s(&i["outcome"]),
                s(&i["severity"]),
            ];
            if similarity {
                r.push(format!("{:.3}", i["similarity"].as_f64().unwrap_or(0.0)));
            }
            r.push(age(i["startTime"].as_str().unwrap_or_default(), now));
            r
        })
        .collect();
    let mut header = vec!["ID", "NAMESPACE", "NAME", "ACTION", "OUTCOME", "SEVERITY"];
    if similarity {
        header.push("SIMILARITY");
    }
    header.push("AGE");
    table(&header, &rows)
}

fn get_text(d: &Value, now: DateTime<Utc>) -> String {
    let a = &d["audit"];
    let mut out = String::new();
    for (label, key) in [
        ("ID", "id"),
        ("Namespace", "namespace"),
        ("Name", "name"),
        ("Remediation request", "remediationRequestId"),
        ("Alert", "alertName"),
        ("Alert fingerprint", "alertFingerprint"),
        ("Action", "actionType"),
        ("Phase", "phase"),
        ("Outcome", "outcome"),
        ("Severity", "severity"),
        ("Environment", "environment"),
        ("Cluster", "clusterName"),
        ("Target", "targetResource"),
        ("Start", "startTime"),
        ("End", "endTime"),
        ("Duration (ms)", "durationMs"),
        ("Error", "errorMessage"),
        ("Generation", "generation"),
        ("Deleted", "deletedAt"),
    ] {
        let _ = writeln!(out, "{:<21}{}", format!("{label}:"), s(&a[key]));
    }
    let _ = writeln!(
        out,
        "{:<21}{}",
        "Age:",
        age(a["startTime"].as_str().unwrap_or_default(), now)
    );
    if let Some(details) = a.get("details").filter(|v| !v.is_null()) {
        let _ = writeln!(out, "{:<21}{details}", "Details:");
    }
    let (verify, _) = verify_text(d);
    out.push_str(&verify);
    out
}

fn verify_text(d: &Value) -> (String, bool) {
    let ok = d["chainVerified"].as_bool().unwrap_or(false);
    let a = &d["audit"];
    let checks = d["chainChecks"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "Audit {} ({}/{}): hash chain {} ({} generation{})\n",
        s(&a["id"]),
        s(&a["namespace"]),
        s(&a["name"]),
        if ok { "verified" } else { "NOT VERIFIED" },
        checks.len(),
        if checks.len() == 1 { "" } else { "s" }
    );
    let history = d["history"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            let g = c["generation"].as_i64();
            let h = history.iter().find(|h| h["generation"].as_i64() == g);
            let short = |k: &str| {
                h.and_then(|h| h[k].as_str())
                    .map(|x| x.chars().take(16).collect())
                    .unwrap_or_default()
            };
            vec![
                s(&c["generation"]),
                short("contentHash"),
                short("chainHash"),
                if c["ok"].as_bool() == Some(true) {
                    "ok".into()
                } else {
                    c["problem"].as_str().unwrap_or("failed").to_string()
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(
            &["GENERATION", "CONTENT-HASH", "CHAIN-HASH", "CHECK"],
            &rows,
        ));
    }
    match d["problems"].as_array() {
        // Every failure named: the chain, the current row, the resource's chainHash, the signed checkpoint.
        Some(problems) => {
            for p in problems.iter().filter_map(Value::as_str) {
                let _ = writeln!(out, "FAILED: {p}");
            }
        }
        None if d["chainHeadMatches"].as_bool() == Some(false) => {
            out.push_str("the audit's current chainHash does not match its latest history entry\n");
        }
        None => {}
    }
    if let Some(at) = d["anchors"]["checkpoint"]["at"].as_str()
        && d["anchors"]["checkpoint"]["verified"].as_bool() == Some(true)
    {
        let covered = d["anchors"]["checkpoint"]["covered"].as_bool() == Some(true);
        let _ = writeln!(
            out,
            "signed checkpoint of {at}: {}",
            if covered {
                "proves this audit"
            } else {
                "does not cover this audit yet"
            }
        );
    }
    (out, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_tables_read_like_kubectl() {
        let now = DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(age("2026-01-10T11:59:30Z", now), "30s");
        assert_eq!(age("2026-01-10T11:00:00Z", now), "60m");
        assert_eq!(age("2026-01-10T02:00:00Z", now), "10h");
        assert_eq!(age("2026-01-01T12:00:00Z", now), "9d");
        let t = table(
            &["ID", "NAME"],
            &[
                vec!["1".into(), "a".into()],
                vec!["12345".into(), "b".into()],
            ],
        );
        assert_eq!(t, "ID      NAME\n1       a\n12345   b\n");
    }

    #[test]
    fn verify_reports_broken_chains() {
        let d = json!({"audit": {"id": 1, "namespace": "a", "name": "x"}, "chainVerified": false,
            "chainHeadMatches": true, "chainChecks": [{"generation": 1, "ok": false, "problem": "record does not match content_hash"}],
            "history": []});
        let (text, ok) = verify_text(&d);
        assert!(!ok);
        assert!(
            text.contains("NOT VERIFIED") && text.contains("record does not match"),
            "{text}"
        );
    }
}
