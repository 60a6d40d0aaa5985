//! The client of the query API shared by `kubectl audit …` (the `kubectl-audit` plugin) and `datastorage query …`.
//!
//! Two ways to reach the API:
//! - **production**: through the kube-apiserver's service proxy,
//!   `/api/v1/namespaces/<ns>/services/https:<svc>:<port>/proxy/api/v1/…` (the API serves HTTPS in the chart's
//!   default), with the kubeconfig's cluster and credentials. The apiserver authenticates the proxy request and
//!   strips its `Authorization` header, so the caller's token is sent again in `X-Datastorage-Authorization`, which
//!   the API verifies with a TokenReview like any bearer token;
//! - **direct**: `--server https://host:port` (port-forward, in-cluster, tests), token in `Authorization`.
//!
//! The API accepts only tokens minted for its audience (`datastorage` by default): `--service-account SA` mints
//! one (TokenRequest, 10 minutes) with the kubeconfig's credentials; else the token is `--token`, else the
//! kubeconfig user's `token` / `tokenFile` (accepted only where the API is configured for the API server's own
//! audience).
//!
//! Answers are read into the API's own wire types ([`crate::api::types`]); everything printed comes through
//! [`output`], which escapes what a tenant could use to drive the terminal (control characters, bidi overrides).

pub mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::Utc;
use clap::{Args, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::auth::FORWARDED_TOKEN_HEADER;
use crate::api::problem::Problem;
use crate::api::types::{
    ChainCheck, FilterFields, GetResponse, HistoryPurged, InsightRequest, InsightResponse,
    ListResponse, SearchRequest, SearchResponse,
};
use crate::checkpoint::Anchors;
use output::escape;

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
    /// Scheme the API server's proxy speaks to the Service (service-proxy mode): https, the chart's default
    /// (`api.tls.enabled`), or http.
    #[arg(
        long,
        global = true,
        env = "DATASTORAGE_SERVICE_SCHEME",
        default_value = "https",
        value_parser = ["https", "http"]
    )]
    pub service_scheme: String,
    /// Mint a short-lived token (10 min) for this ServiceAccount (`NAME` in the kubeconfig's namespace, or
    /// `NAMESPACE/NAME`) with the kubeconfig's credentials, for --token-audience, and send it instead of --token
    /// (needs `create serviceaccounts/token` on it).
    #[arg(long, global = true, conflicts_with = "token")]
    pub service_account: Option<String>,
    /// The audience of a token minted with --service-account: the API's (`--api-token-audiences`, default
    /// datastorage).
    #[arg(
        long,
        global = true,
        env = "DATASTORAGE_TOKEN_AUDIENCE",
        default_value = crate::api::auth::DEFAULT_AUDIENCE
    )]
    pub token_audience: String,
    /// PEM file of the CA that signed the API's certificate (direct https access; the chart's self-managed CA is
    /// `ca.crt` of Secret <release>-datastorage-operator-tls).
    #[arg(long, global = true, env = "DATASTORAGE_CA_FILE")]
    pub certificate_authority: Option<PathBuf>,
    /// Do not verify the API's certificate (direct https access; e.g. through `kubectl port-forward`, where the
    /// host name is not the certificate's).
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
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

impl FilterArgs {
    /// The body fields of these filters in `namespace` (`None`: every namespace the caller may list).
    fn fields(self, namespace: Option<String>) -> FilterFields {
        FilterFields {
            namespace,
            phase: self.phase,
            outcome: self.outcome,
            severity: self.severity,
            cluster: self.cluster,
            action_type: self.action_type,
            since: self.since,
            until: self.until,
        }
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
        /// Include each audit's details (up to 64 KiB each; omitted by default).
        #[arg(long)]
        details: bool,
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
    /// Which actions worked for incidents like this one: the similar past audits, counted per action type and
    /// ranked by the Wilson lower bound of their success rate.
    Insights {
        /// The incident, in words (e.g. "pod keeps getting OOM killed").
        query: Option<String>,
        /// Incidents like this audit id.
        #[arg(long, conflicts_with = "query")]
        similar_to: Option<i64>,
        /// Incidents of this alert (exact match, no embedding).
        #[arg(long, conflicts_with_all = ["query", "similar_to"])]
        alert_name: Option<String>,
        /// With --alert-name: only targets of this kind (e.g. Deployment).
        #[arg(long, requires = "alert_name")]
        target_kind: Option<String>,
        #[command(flatten)]
        filters: FilterArgs,
        /// Similar audits considered (1–1000).
        #[arg(long, default_value_t = 200)]
        limit: i64,
        /// Only neighbours with at least this cosine similarity (-1..1).
        #[arg(long)]
        min_similarity: Option<f64>,
        /// The window in days, ending now (default 180 on the server; not with --since).
        #[arg(long, conflicts_with = "since")]
        window_days: Option<i64>,
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
        let default_namespace = config
            .as_ref()
            .map(|cfg| cfg.default_namespace.clone())
            .unwrap_or_else(|| "default".into());
        let token = match &c.service_account {
            Some(sa) => {
                let Some(config) = config.clone() else {
                    anyhow::bail!(
                        "--service-account needs a kubeconfig (set KUBECONFIG or pass --kubeconfig)"
                    );
                };
                Some(mint_token(config, sa, &default_namespace, &c.token_audience).await?)
            }
            None => c.token.clone().or(kube_token).filter(|t| !t.is_empty()),
        };
        let target = match &c.server {
            Some(server) => Target::Direct {
                base: reqwest::Url::parse(server)
                    .map_err(|e| anyhow::anyhow!("invalid --server {server:?}: {e}"))?,
                http: direct_client(c)?,
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
                         cannot be forwarded through the apiserver's proxy); pass --service-account <serviceaccount> \
                         or --token \"$(kubectl create token <serviceaccount> --audience datastorage)\""
                    );
                }
                Target::Proxy {
                    client: kube::Client::try_from(config)?,
                    prefix: format!(
                        "/api/v1/namespaces/{}/services/{}:{}:{}/proxy",
                        c.service_namespace, c.service_scheme, c.service_name, c.service_port
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
}

/// The HTTP client of direct access: the platform's roots plus --certificate-authority, or no verification.
fn direct_client(c: &Connection) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
    if let Some(path) = &c.certificate_authority {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--certificate-authority {}: {e}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("--certificate-authority {}: {e}", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    if c.insecure_skip_tls_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder.build()?)
}

/// A token for ServiceAccount `sa` (`NAME` or `NAMESPACE/NAME`) valid 10 minutes (the API server's minimum) for
/// `audience`, from the TokenRequest API with the kubeconfig's credentials.
async fn mint_token(
    config: kube::Config,
    sa: &str,
    default_namespace: &str,
    audience: &str,
) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let (namespace, name) = sa.split_once('/').unwrap_or((default_namespace, sa));
    anyhow::ensure!(
        !namespace.is_empty() && !name.is_empty() && !name.contains('/'),
        "--service-account {sa:?}: expected NAME or NAMESPACE/NAME"
    );
    let api: kube::Api<ServiceAccount> =
        kube::Api::namespaced(kube::Client::try_from(config)?, namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_string()]),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let minted = api
        .create_token_request(name, &kube::api::PostParams::default(), &request)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot mint a token for the ServiceAccount {namespace}/{name}: {e}")
        })?;
    minted
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the TokenRequest for {namespace}/{name} returned no token"))
}

impl ApiClient {
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
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
        match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) => Err(ClientError::Problem {
                status,
                title: p.title,
                detail: p.detail,
                parameter: p.parameter,
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

    pub async fn list(&self, query: &[(&str, String)]) -> Result<ListResponse, ClientError> {
        self.call("GET", "/api/v1/audits", query, None::<&()>).await
    }

    /// One audit with one page of its history (after generation `history_cursor`).
    pub async fn get(
        &self,
        id: i64,
        history_cursor: Option<&str>,
    ) -> Result<GetResponse, ClientError> {
        let query: Vec<(&str, String)> = history_cursor
            .map(|c| ("historyCursor", c.to_string()))
            .into_iter()
            .collect();
        self.call("GET", &format!("/api/v1/audits/{id}"), &query, None::<&()>)
            .await
    }

    pub async fn search(&self, body: &SearchRequest) -> Result<SearchResponse, ClientError> {
        self.call("POST", "/api/v1/audits/search", &[], Some(body))
            .await
    }

    pub async fn insights(&self, body: &InsightRequest) -> Result<InsightResponse, ClientError> {
        self.call("POST", "/api/v1/audits/insights", &[], Some(body))
            .await
    }

    /// Verifies every page of an audit's history: each page verifies on its own and links to the page before.
    pub async fn verify(&self, id: i64) -> Result<VerifyReport, ClientError> {
        let first = self.get(id, None).await?;
        let mut report = VerifyReport {
            id,
            chain_verified: first.chain_verified,
            chain_head_matches: first.chain_head_matches,
            chain_checks: first.chain_checks.clone(),
            row_mismatches: first.row_mismatches.clone(),
            anchors: Some(first.anchors.clone()),
            problems: first.problems.clone(),
            hashes: first
                .history
                .iter()
                .map(|h| (h.generation, h.content_hash.clone(), h.chain_hash.clone()))
                .collect(),
            namespace: first.audit.namespace.clone(),
            name: first.audit.name.clone(),
            history_purged: first.history_purged.clone(),
        };
        let mut next = first.history_next_cursor;
        // Each page holds at least one generation, so the walk ends; the bound only guards against a server
        // that keeps answering the same cursor.
        let mut pages = 1;
        while let Some(cursor) = next {
            let page = self.get(id, Some(&cursor)).await?;
            report.chain_verified &= page.chain_verified;
            report.chain_head_matches &= page.chain_head_matches;
            report.chain_checks.extend(page.chain_checks);
            // The head and anchor findings repeat on every page; each is reported once.
            for p in page.problems {
                if !report.problems.contains(&p) {
                    report.problems.push(p);
                }
            }
            for m in page.row_mismatches {
                if !report.row_mismatches.contains(&m) {
                    report.row_mismatches.push(m);
                }
            }
            report.hashes.extend(
                page.history
                    .iter()
                    .map(|h| (h.generation, h.content_hash.clone(), h.chain_hash.clone())),
            );
            next = page.history_next_cursor;
            pages += 1;
            if pages > 1_000_000 {
                return Err(ClientError::Transport(
                    "the history does not end (the server repeats a page)".into(),
                ));
            }
        }
        report.chain_verified &= !report.chain_checks.is_empty();
        Ok(report)
    }
}

/// What `verify` found over every page of a history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub id: i64,
    pub chain_verified: bool,
    pub chain_head_matches: bool,
    pub chain_checks: Vec<ChainCheck>,
    /// Fields in which the current row differs from the head record.
    pub row_mismatches: Vec<String>,
    /// The RemediationAudit's status.chainHash and the latest signed checkpoint (`None`: the audit is missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchors: Option<Anchors>,
    /// What failed, one line each.
    pub problems: Vec<String>,
    #[serde(skip)]
    pub namespace: String,
    #[serde(skip)]
    pub name: String,
    /// (generation, content hash, chain hash) per generation, for the table.
    #[serde(skip)]
    pub hashes: Vec<(i64, String, String)>,
    /// The generations retention dropped before the first one stored (the chain is verified from there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_purged: Option<HistoryPurged>,
}

impl VerifyReport {
    /// The report on an audit the API answers 404 for: it does not verify, for the reason the API gives.
    pub fn missing(id: i64, detail: String) -> Self {
        VerifyReport {
            id,
            chain_verified: false,
            chain_head_matches: false,
            chain_checks: vec![],
            row_mismatches: vec![],
            anchors: None,
            problems: vec![detail],
            namespace: String::new(),
            name: String::new(),
            hashes: vec![],
            history_purged: None,
        }
    }
}

/// Runs one `kubectl audit` / `datastorage query` command; prints to stdout, errors to stderr (escaped: an error
/// may quote the server's words).
pub async fn run(conn: &Connection, cmd: &QueryCommand) -> ExitCode {
    match execute(conn, cmd).await {
        Ok((out, code)) => {
            print!("{out}");
            code
        }
        Err(e) => {
            eprintln!("error: {}", escape(&format!("{e:#}")));
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
            details,
        } => {
            let mut query = filters.pairs();
            if let Some(ns) = &namespace {
                query.push(("namespace", ns.clone()));
            }
            query.push(("limit", limit.to_string()));
            if let Some(c) = cursor {
                query.push(("cursor", c.clone()));
            }
            if *details {
                query.push(("fields", "details".into()));
            }
            let page = client.list(&query).await?;
            if conn.output == Output::Table {
                if let Some(next) = &page.next_cursor {
                    eprintln!("(more audits: add --cursor {})", escape(next));
                }
                return Ok((output::list_table(&page.items, now), ExitCode::SUCCESS));
            }
            Ok((output::format(&page, conn.output)?, ExitCode::SUCCESS))
        }
        QueryCommand::Get { id } => {
            let detail = client.get(*id, None).await?;
            let out = match conn.output {
                Output::Table => output::get_text(&detail, now),
                other => output::format(&detail, other)?,
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
            let mut body = SearchRequest::default();
            match (query, similar_to) {
                (Some(q), _) => body.query = Some(q.clone()),
                (None, Some(id)) => body.similar_to_id = Some(*id),
                (None, None) => anyhow::bail!("give a QUERY text or --similar-to ID"),
            };
            body.filters = filters.clone().fields(namespace.clone());
            body.limit = Some(*limit);
            body.min_similarity = *min_similarity;
            let res = client.search(&body).await?;
            let out = match conn.output {
                Output::Table => output::search_table(&res.results, now),
                other => output::format(&res, other)?,
            };
            Ok((out, ExitCode::SUCCESS))
        }
        QueryCommand::Insights {
            query,
            similar_to,
            alert_name,
            target_kind,
            filters,
            limit,
            min_similarity,
            window_days,
        } => {
            let mut body = InsightRequest::default();
            match (query, similar_to, alert_name) {
                (Some(q), _, _) => body.query = Some(q.clone()),
                (None, Some(id), _) => body.similar_to_id = Some(*id),
                (None, None, Some(a)) => {
                    body.alert_name = Some(a.clone());
                    body.target_kind = target_kind.clone();
                }
                (None, None, None) => {
                    anyhow::bail!("give a QUERY text, --similar-to ID or --alert-name NAME")
                }
            };
            body.filters = filters.clone().fields(namespace.clone());
            body.limit = Some(*limit);
            body.min_similarity = *min_similarity;
            body.window_days = *window_days;
            let res = client.insights(&body).await?;
            let out = match conn.output {
                Output::Table => output::insights_table(&res, now),
                other => output::format(&res, other)?,
            };
            Ok((out, ExitCode::SUCCESS))
        }
        QueryCommand::Verify { id } => {
            let report = match client.verify(*id).await {
                Ok(r) => r,
                // A missing audit does not verify (the API says when the signed checkpoint lists it).
                Err(ClientError::Problem {
                    status: 404,
                    detail,
                    ..
                }) => VerifyReport::missing(*id, detail),
                Err(e) => return Err(e.into()),
            };
            let ok = report.chain_verified;
            let out = match conn.output {
                Output::Table => output::verify_text(&report),
                other => output::format(&report, other)?,
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
