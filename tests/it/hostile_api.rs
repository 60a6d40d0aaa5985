//! The query API against hostile clients, on the real operator, PostgreSQL and kube-apiserver: what one client can
//! make the port hold (sockets, tasks, buffers, database connections) is bounded, and every answer is bounded and
//! safe to print. Raw TCP where the behaviour is below HTTP clients (half-sent heads, withheld bodies).
//!
//! The assertions are on mechanisms (a connection is closed, a status is answered), never on how fast: the waits
//! are generous bounds on a shared machine, several times the configured timeouts.

use std::time::Duration;

use chrono::Utc;
use datastorage::audit::{AuditMeta, SanitizeConfig, prepare};
use datastorage::crd::{AuditOutcome, AuditPhase, RemediationAuditSpec};
use datastorage::http::Limits;
use datastorage::runtime::StoreRuntime;
use datastorage::store::{AuditWrite, WriteOutcome};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::api::{
    Http, RAUDIT, assert_problem, at, ids, insert, reader_in, run_plugin, runtime, service_account,
    wait_can_i,
};
use crate::support::kube::{EnvOptions, TestEnv, eventually, kubectl};

/// How long a connection that should be closed by a deadline may take, at most (generous: the deadlines of
/// [`HASTY`] are 2 s).
const CLOSE_BOUND: Duration = Duration::from_secs(40);

fn addr(env: &TestEnv) -> String {
    env.api_url().trim_start_matches("http://").to_string()
}

/// Sends `request` on a new connection and reads the whole answer (the request says `connection: close`).
async fn raw(addr: &str, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_answer(&mut s).await
}

async fn read_answer(s: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Whether the server closed `s` within `bound` (reading until EOF or a reset, discarding what arrives).
async fn closed_within(s: &mut TcpStream, bound: Duration) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(bound, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A search whose headers are sent and whose body is withheld: the server authenticates it, takes the caller's
/// permits, and waits for the body (until the body deadline).
async fn withheld_search(addr: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/audits/search HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// `n` requests of one caller held in progress (searches with withheld bodies). The server admits requests of
/// different connections in no set order, so a request sent after the holds may overtake one of them and take its
/// permit, and that hold is then refused (429/503, answered at once): [`Holds::replace_refused`] finds those by
/// their answer and sends new ones, so that the server ends up holding all `n`.
struct Holds {
    addr: String,
    token: String,
    conns: Vec<TcpStream>,
    /// The last refusal seen, for failure messages.
    last_refusal: String,
}

impl Holds {
    async fn open(addr: &str, token: &str, n: usize) -> Self {
        let mut conns = Vec::new();
        for _ in 0..n {
            conns.push(withheld_search(addr, token).await);
        }
        Self {
            addr: addr.into(),
            token: token.into(),
            conns,
            last_refusal: String::new(),
        }
    }

    /// Replaces every hold the server has answered (refused) by a new one.
    async fn replace_refused(&mut self) {
        for c in &mut self.conns {
            let mut buf = [0u8; 2048];
            match c.try_read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Ok(n) => self.last_refusal = String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) => self.last_refusal = e.to_string(),
            }
            *c = withheld_search(&self.addr, &self.token).await;
        }
    }
}

/// Sends `probe` until it is answered `want`, replacing refused holds in between (see [`Holds`]); the answer.
async fn answered_while_held(addr: &str, probe: &[u8], want: u16, holds: &mut [Holds]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = raw(addr, probe).await;
        if status == want {
            return text;
        }
        for h in holds.iter_mut() {
            h.replace_refused().await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered {want} while the requests were held; last answer {status}: {text}; last refused \
             hold: {}",
            holds
                .iter()
                .map(|h| h.last_refusal.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The port's limits with deadlines far beyond the test, so that what the test holds stays held until the test
/// lets it go (the deadlines themselves are [`the_api_port_closes_what_clients_leave_hanging`]'s subject), and
/// small counts, so that holding them takes a few dozen sockets.
const HOLDING: Limits = Limits {
    header_read_timeout: Duration::from_secs(600),
    body_timeout: Duration::from_secs(600),
    request_timeout: Duration::from_secs(600),
    max_connections: 64,
    max_concurrency: 16,
    ..Limits::API
};

/// The port's limits with short deadlines (the production ones are 5–30 s), so that closing takes seconds.
const HASTY: Limits = Limits {
    header_read_timeout: Duration::from_secs(2),
    body_timeout: Duration::from_secs(2),
    request_timeout: Duration::from_secs(5),
    ..Limits::API
};

async fn env_with(prefix: &str, api_limits: Limits) -> TestEnv {
    TestEnv::with(
        prefix,
        EnvOptions {
            api_limits,
            ..EnvOptions::default()
        },
    )
    .await
}

/// Body and header caps, the per-caller limit (429), the port's concurrency limit (503) and its connection limit
/// (503, closed). Failed on the old code (no limits: no 413/429/503). Used to time out on a loaded machine: the
/// probe of a limit could overtake the last hold and take its permit (the hold was refused and the limit was
/// never reached again) and the holds themselves expired with the production 10 s deadlines; the holds are now
/// checked and replaced, and held with deadlines beyond the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_port_bounds_what_one_client_can_hold() {
    let env = env_with("hostile-port", HOLDING).await;
    let ns = env.ns.clone();
    let addr = addr(&env);
    let rt = runtime(&env).await;
    insert(&rt, &ns, "a-1", at(10), "OOM").await;
    let token = service_account(&ns, "caller");

    // A body larger than the port accepts: 413 from Content-Length alone, before authentication (no token is
    // sent, and the body never is).
    let (status, text) = raw(
        &addr,
        b"POST /api/v1/audits/search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 10000000\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    // Within the port's limit but over the search's own: authenticated first, then refused while reading.
    let big = json!({ "query": "x".repeat(20_000) }).to_string();
    let (status, text) = raw(
        &addr,
        format!(
            "POST /api/v1/audits/search HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    // Headers too large: 431, as problem JSON.
    let (status, text) = raw(
        &addr,
        format!(
            "GET /openapi.json HTTP/1.1\r\nhost: x\r\nx-junk: {}\r\nconnection: close\r\n\r\n",
            "j".repeat(Limits::API.max_header_bytes + 1)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status, 431, "{text}");

    // One caller: at most PER_CALLER_CONCURRENCY requests in progress; the next is 429 with Retry-After.
    let mut held = vec![Holds::open(&addr, &token, datastorage::api::PER_CALLER_CONCURRENCY).await];
    let probe = format!(
        "GET /api/v1/audits?namespace={ns} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         connection: close\r\n\r\n"
    );
    let text = answered_while_held(&addr, probe.as_bytes(), 429, &mut held).await;
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("application/problem+json"), "{text}");
    drop(held);
    // Released with the connections.
    let (status, _) = eventually(
        Duration::from_secs(60),
        "the caller served again",
        || async {
            let (status, text) = raw(&addr, probe.as_bytes()).await;
            (status != 429).then_some((status, text))
        },
    )
    .await;
    assert_eq!(
        status, 403,
        "the caller has no RBAC: 403 once it is served again"
    );

    // Every caller together: at most max_concurrency requests; the next is 503 with Retry-After.
    let callers = HOLDING.max_concurrency / datastorage::api::PER_CALLER_CONCURRENCY;
    let mut held = Vec::new();
    for i in 0..callers {
        let t = service_account(&ns, &format!("crowd-{i}"));
        held.push(Holds::open(&addr, &t, datastorage::api::PER_CALLER_CONCURRENCY).await);
    }
    let open = b"GET /openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    let text = answered_while_held(&addr, open, 503, &mut held).await;
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
    drop(held);
    eventually(Duration::from_secs(60), "served again", || async {
        (raw(&addr, open).await.0 == 200).then_some(())
    })
    .await;

    // Connections: past max_connections a new one is answered 503 and closed at once. The server accepts in
    // the order the connections were made, so the probe made after max_connections is over the limit.
    let mut conns = Vec::new();
    for _ in 0..HOLDING.max_connections {
        conns.push(TcpStream::connect(&addr).await.unwrap());
    }
    let (status, text) = raw(&addr, open).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("too many connections"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    drop(conns);
    eventually(
        Duration::from_secs(60),
        "served after the flood",
        || async { (raw(&addr, open).await.0 == 200).then_some(()) },
    )
    .await;
}

/// What a client leaves hanging is closed by the port's deadlines: a head sent byte by byte (slowloris), a
/// connection that never sends anything, a kept-alive connection idle after its answer, a withheld body (408),
/// and a crowd of idle connections. Failed on the old code (axum's serve ran hyper without a timer: none of these
/// was ever closed). The bounds are generous (20 times the 2 s deadlines): they are there to end the test, the
/// assertion is that the server closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_port_closes_what_clients_leave_hanging() {
    let env = env_with("hostile-hang", HASTY).await;
    let ns = env.ns.clone();
    let addr = addr(&env);
    let token = service_account(&ns, "caller");

    let slow_addr = addr.clone();
    let slowloris = tokio::spawn(async move {
        let mut s = TcpStream::connect(&slow_addr).await.unwrap();
        s.write_all(b"GET /api/v1/audits HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        // One header byte every 500 ms, forever: never a complete head.
        let started = std::time::Instant::now();
        let mut buf = [0u8; 512];
        loop {
            if started.elapsed() > CLOSE_BOUND {
                return false;
            }
            if s.write_all(b"x").await.is_err() {
                return true;
            }
            match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
    });
    let idle_addr = addr.clone();
    let idle = tokio::spawn(async move {
        let mut s = TcpStream::connect(&idle_addr).await.unwrap();
        closed_within(&mut s, CLOSE_BOUND).await
    });
    let keepalive_addr = addr.clone();
    let idle_after_request = tokio::spawn(async move {
        let mut s = TcpStream::connect(&keepalive_addr).await.unwrap();
        s.write_all(b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The answer arrives, then the kept-alive connection idles until the server closes it.
        closed_within(&mut s, CLOSE_BOUND).await
    });

    // A withheld body: 408 as problem JSON once the body deadline passes.
    let mut s = withheld_search(&addr, &token).await;
    let (status, text) = read_answer(&mut s).await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("application/problem+json"), "{text}");

    // A crowd of idle connections: every one closed.
    let mut conns = Vec::new();
    for _ in 0..64 {
        conns.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut closed = 0;
    for c in &mut conns {
        if closed_within(c, CLOSE_BOUND).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed,
        conns.len(),
        "idle connections are closed by the header timeout"
    );
    let open = b"GET /openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    assert_eq!(raw(&addr, open).await.0, 200, "served after the crowd");

    assert!(slowloris.await.unwrap(), "a slowloris connection is closed");
    assert!(idle.await.unwrap(), "an idle connection is closed");
    assert!(
        idle_after_request.await.unwrap(),
        "an idle kept-alive connection is closed"
    );
}

/// One audit with `details` of about `detail_bytes` bytes and generations 1..=`generations` (each a new error
/// message), written through the store as the controller writes them; returns its id.
async fn insert_generations(
    rt: &StoreRuntime,
    ns: &str,
    name: &str,
    detail_bytes: usize,
    generations: i64,
    error: &str,
) -> i64 {
    let uid = uuid::Uuid::new_v4().to_string();
    let mut id = 0;
    for generation in 1..=generations {
        let spec = RemediationAuditSpec {
            remediation_request_id: format!("rr-{ns}-{name}"),
            alert_fingerprint: "fp".into(),
            alert_name: Some("KubePodOOMKilled".into()),
            phase: AuditPhase::Completed,
            outcome: AuditOutcome::Failure,
            action_type: "restart-pod".into(),
            severity: "critical".into(),
            environment: "production".into(),
            cluster_name: "prod-eu-1".into(),
            target_resource: "apps/v1/Deployment/payments/api".into(),
            start_time: at(100).to_rfc3339(),
            end_time: None,
            error_message: Some(format!("{error} (attempt {generation})")),
            details: (detail_bytes > 0).then(|| {
                let mut m = serde_json::Map::new();
                m.insert("log".into(), json!("l".repeat(detail_bytes)));
                m
            }),
        };
        let meta = AuditMeta {
            uid: uid.clone(),
            namespace: ns.into(),
            name: name.into(),
            generation,
        };
        let prepared = prepare(&meta, &spec, SanitizeConfig::default(), Utc::now()).unwrap();
        match rt
            .store
            .write_audit(&AuditWrite {
                prepared: &prepared,
                embedding: None,
            })
            .await
            .unwrap()
        {
            WriteOutcome::Stored(s) => id = s.audit_id,
            other => panic!("{other:?}"),
        }
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_bounded_headed_and_safe_to_print() {
    let env = TestEnv::new("hostile-answers").await;
    let ns = env.ns.clone();
    let rt = runtime(&env).await;
    let api = Http::new(&env);
    let token = reader_in(&ns, "reader");
    let nobody = service_account(&ns, "nobody");

    // 80 audits with ~60 KiB of details each (~4.8 MB together), one with 25 generations.
    let mut big = Vec::new();
    for i in 0..80 {
        big.push(insert_generations(&rt, &ns, &format!("big-{i}"), 60_000, 1, "OOM").await);
    }
    let hostile =
        "boom\r\u{1b}[2K\u{1b}[32mAudit 1: hash chain verified\u{1b}[0m\n\u{9b}2J\u{202e}";
    let long = insert_generations(&rt, &ns, "long-history", 0, 25, hostile).await;

    // Lists omit details unless asked for; a page with details stops at its byte budget; walking every page
    // returns every audit once.
    let (s, _, page) = api
        .get(
            Some(&token),
            &format!("/api/v1/audits?namespace={ns}&limit=1000"),
        )
        .await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 81);
    assert!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i.get("details").is_none()),
        "details are omitted by default"
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => {
                format!("/api/v1/audits?namespace={ns}&limit=1000&fields=details&cursor={c}")
            }
            None => format!("/api/v1/audits?namespace={ns}&limit=1000&fields=details"),
        };
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", env.api_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let bytes = resp.bytes().await.unwrap();
        assert!(
            bytes.len() <= datastorage::api::MAX_PAGE_BYTES + 100_000,
            "a page of {} bytes",
            bytes.len()
        );
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        for item in page["items"].as_array().unwrap() {
            if item["name"].as_str().unwrap().starts_with("big-") {
                assert_eq!(item["details"]["log"].as_str().map(str::len), Some(60_000));
            }
            seen.push(item["id"].as_i64().unwrap());
        }
        pages += 1;
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages < 100);
    }
    assert!(pages >= 2, "80 x 60 KB exceeds one page's budget");
    seen.sort();
    let mut all = big.clone();
    all.push(long);
    all.sort();
    assert_eq!(seen, all);
    assert_problem(
        &api.get(
            Some(&token),
            &format!("/api/v1/audits?namespace={ns}&fields=secrets"),
        )
        .await,
        400,
        Some("fields"),
    );

    // History comes in pages, each verified on its own (including its link to the page before).
    let (s, _, first) = api
        .get(Some(&token), &format!("/api/v1/audits/{long}"))
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["history"].as_array().unwrap().len(), 20);
    assert_eq!(first["chainVerified"], true, "{first}");
    assert_eq!(first["historyNextCursor"], "20");
    let (_, _, second) = api
        .get(
            Some(&token),
            &format!("/api/v1/audits/{long}?historyCursor=20&historyLimit=100"),
        )
        .await;
    let gens: Vec<i64> = second["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["generation"].as_i64().unwrap())
        .collect();
    assert_eq!(gens, (21..=25).collect::<Vec<_>>());
    assert_eq!(second["chainVerified"], true, "{second}");
    assert!(second["historyNextCursor"].is_null());
    assert_problem(
        &api.get(
            Some(&token),
            &format!("/api/v1/audits/{long}?historyLimit=0"),
        )
        .await,
        400,
        Some("historyLimit"),
    );

    // The CLI walks every page to verify, and prints nothing a tenant could use to drive the terminal.
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-audit"));
    let dir = bin.parent().unwrap().to_str().unwrap().to_string();
    let server = env.api_url();
    let long_s = long.to_string();
    let common = [
        "-n",
        ns.as_str(),
        "--server",
        server.as_str(),
        "--token",
        token.as_str(),
    ];
    for verb in [
        vec!["audit", "verify", long_s.as_str()],
        vec!["audit", "get", long_s.as_str()],
        vec!["audit", "list"],
        vec!["audit", "get", long_s.as_str(), "-o", "json"],
        vec!["audit", "get", long_s.as_str(), "-o", "yaml"],
    ] {
        let mut args = verb.clone();
        args.extend_from_slice(&common);
        let out = run_plugin(&args, &dir);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{verb:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for c in stdout.chars() {
            assert!(
                c == '\n'
                    || !(c.is_control() || datastorage::audit::validate::is_invisible_format(c)),
                "{verb:?} printed U+{:04X}: {stdout:?}",
                c as u32
            );
        }
        if verb[1] == "verify" {
            assert!(stdout.contains("verified (25 generations)"), "{stdout}");
        }
        if verb[1] == "get" && verb.len() == 3 {
            // The forged verdict stays inside the Error line.
            assert_eq!(
                stdout
                    .lines()
                    .filter(|l| l.contains("hash chain verified"))
                    .count(),
                2,
                "the Error line and the real verdict: {stdout}"
            );
        }
    }

    // Headers on audit data and on problems; the scheme is case-insensitive.
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/audits?namespace={ns}", env.api_url()))
        .header("authorization", format!("BEARER {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    // Request ids: a plain caller id is echoed, anything else is replaced by a new UUID.
    for (sent, echoed) in [
        (Some("trace-42.a_b"), Some("trace-42.a_b")),
        (Some("forged id=\"x\" user=admin"), None),
        (None, None),
    ] {
        let mut req = reqwest::Client::new()
            .get(format!("{}/api/v1/audits?namespace={ns}", env.api_url()))
            .bearer_auth(&token);
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let resp = req.send().await.unwrap();
        let got = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        match echoed {
            Some(e) => assert_eq!(got, e),
            None => assert!(uuid::Uuid::parse_str(&got).is_ok(), "{sent:?} -> {got}"),
        }
    }
    let resp = reqwest::get(format!("{}/api/v1/audits", env.api_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");

    // 405 and unknown routes answer problem JSON.
    for (method, path, status) in [
        (reqwest::Method::DELETE, "/api/v1/audits", 405),
        (reqwest::Method::PUT, "/api/v1/audits/search", 405),
        (reqwest::Method::GET, "/api/v1/nope", 404),
    ] {
        let resp = reqwest::Client::new()
            .request(method.clone(), format!("{}{path}", env.api_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        if status == 405 {
            assert!(resp.headers().contains_key("allow"), "{method} {path}");
        }
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], status, "{body}");
    }

    // A crafted cursor with a year PostgreSQL cannot hold: 400 naming the cursor, not a 500.
    use base64::Engine;
    let crafted = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("-6000000000000000000.5");
    assert_problem(
        &api.get(
            Some(&token),
            &format!("/api/v1/audits?namespace={ns}&cursor={crafted}"),
        )
        .await,
        400,
        Some("cursor"),
    );

    // A caller allowed nowhere: no results, and the model never runs for it.
    let metrics = &env.operator.as_ref().unwrap().context.metrics;
    let embeds = || {
        let text = metrics.render();
        metric_sum(&text, "datastorage_cache_hits_total")
            + metric_sum(&text, "datastorage_cache_misses_total")
    };
    let before = embeds();
    let (s, _, found) = api
        .search(&nobody, json!({"query": "a query nobody may run"}))
        .await;
    assert_eq!((s, ids(&found["results"])), (200, vec![]));
    assert_eq!(
        embeds(),
        before,
        "the model ran for a caller allowed nowhere"
    );
    // ... while an allowed caller's search does run it (the counters move).
    let (s, _, _) = api.search(&token, json!({"query": "another query"})).await;
    assert_eq!(s, 200);
    assert!(embeds() > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_large_lists_do_not_push_new_audits_into_retrying() {
    let env = TestEnv::new("hostile-reads").await;
    let ns = env.ns.clone();
    let rt = runtime(&env).await;
    let token = service_account(&ns, "lister");
    kubectl(
        &[
            "-n",
            &ns,
            "create",
            "role",
            "lister",
            "--verb=list",
            &format!("--resource={RAUDIT}"),
        ],
        None,
    );
    kubectl(
        &[
            "-n",
            &ns,
            "create",
            "rolebinding",
            "lister",
            "--role=lister",
            &format!("--serviceaccount={ns}:lister"),
        ],
        None,
    );
    wait_can_i(&ns, "lister", &["-n", &ns], true);
    for i in 0..150 {
        insert_generations(&rt, &ns, &format!("big-{i}"), 60_000, 1, "OOM").await;
    }

    // 50 clients listing 1000 audits with details, in a loop, for the whole test; each list is capped at
    // PER_CALLER_CONCURRENCY in flight per caller, so five callers.
    let tokens: Vec<String> = (0..5)
        .map(|i| {
            let sa = format!("flood-{i}");
            let t = service_account(&ns, &sa);
            kubectl(
                &[
                    "-n",
                    &ns,
                    "create",
                    "rolebinding",
                    &sa,
                    "--role=lister",
                    &format!("--serviceaccount={ns}:{sa}"),
                ],
                None,
            );
            wait_can_i(&ns, &sa, &["-n", &ns], true);
            t
        })
        .chain(std::iter::once(token.clone()))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::BTreeMap::<u16, u32>::new(),
    ));
    let mut flood = Vec::new();
    for i in 0..50 {
        let (stop, statuses) = (stop.clone(), statuses.clone());
        let url = format!(
            "{}/api/v1/audits?namespace={ns}&limit=1000&fields=details",
            env.api_url()
        );
        let t = tokens[i % tokens.len()].clone();
        flood.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = match http.get(&url).bearer_auth(&t).send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0,
                };
                *statuses.lock().unwrap().entry(status).or_default() += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let metrics = env.operator.as_ref().unwrap().context.metrics.clone();
    let failures = || {
        metrics
            .write_total
            .with_label_values(&["audits", "failure"])
            .get()
    };
    let before = failures();
    let manifests: String = (0..30)
        .map(|i| {
            crate::support::kube::audit_yaml(&format!("new-{i}"), &format!("rr-{ns}-new-{i}"), "")
                + "\n---\n"
        })
        .collect();
    env.kubectl(&["apply", "-f", "-"], Some(&manifests));
    for i in 0..30 {
        env.wait_state(&format!("new-{i}"), "Persisted", Duration::from_secs(120))
            .await;
    }
    let written_during_flood = failures() - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let statuses = statuses.lock().unwrap().clone();
    eprintln!("large-list flood answers by status: {statuses:?}");
    assert_eq!(
        written_during_flood, 0,
        "writes failed (audits went Retrying) during the list flood"
    );
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(
        statuses.keys().all(|s| [200, 429, 503].contains(s)),
        "only answers, throttling or overload: {statuses:?}"
    );
}

/// Pages with `details` are the API's heaviest reads: one at a time API-wide, at most 4 a second
/// (`DETAIL_PAGES_IN_PROGRESS`, `DETAIL_PAGE_INTERVAL`); a page waits up to `DETAIL_PAGE_WAIT` (1 s) for its turn,
/// so of 8 at once at most 5 can be served and the rest are told to retry (429 + Retry-After); lists without
/// details are not limited, and a client paging one page after another is only slowed (the walk in
/// `answers_are_bounded_headed_and_safe_to_print`). The flood test's large-list phase measured write p95 at 236×
/// idle without this (`tests/it/flood.rs`, docs/security.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_with_details_are_rate_limited_api_wide_and_plain_pages_are_not() {
    let env = TestEnv::new("detail-pages").await;
    let rt = runtime(&env).await;
    for i in 0..3 {
        insert_generations(&rt, &env.ns, &format!("big-{i}"), 10_000, 1, "OOM").await;
    }
    let (token, binding) = env.cluster_admin_token("pager");
    wait_can_i(&env.ns, "pager", &["-n", &env.ns], true);
    let http = reqwest::Client::new();
    let burst = |details: bool| {
        let url = format!(
            "{}/api/v1/audits?namespace={}{}",
            env.api_url(),
            env.ns,
            if details { "&fields=details" } else { "" }
        );
        let (http, token) = (http.clone(), token.clone());
        async move {
            let requests = (0..datastorage::api::PER_CALLER_CONCURRENCY).map(|_| {
                let (http, url, token) = (http.clone(), url.clone(), token.clone());
                async move {
                    let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                    let retry_after = r.headers().get("retry-after").cloned();
                    (r.status().as_u16(), retry_after, r.text().await.unwrap())
                }
            });
            futures::future::join_all(requests).await
        }
    };
    let plain = burst(false).await;
    assert!(plain.iter().all(|(s, _, _)| *s == 200), "{plain:?}");
    let detailed = burst(true).await;
    let ok = detailed.iter().filter(|(s, _, _)| *s == 200).count();
    let throttled: Vec<_> = detailed.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(ok >= 1, "{detailed:?}");
    assert!(
        throttled.len() >= 3,
        "8 pages with details at once: at most 5 fit in the 1 s wait: {detailed:?}"
    );
    assert_eq!(
        ok + throttled.len(),
        datastorage::api::PER_CALLER_CONCURRENCY,
        "{detailed:?}"
    );
    for (_, retry_after, body) in &throttled {
        assert!(retry_after.is_some(), "429 without Retry-After");
        assert!(body.contains("fields=details"), "{body}");
    }
    // Once the interval has passed, a page with details is served again.
    tokio::time::sleep(datastorage::api::DETAIL_PAGE_INTERVAL + Duration::from_millis(100)).await;
    let again = http
        .get(format!(
            "{}/api/v1/audits?namespace={}&fields=details",
            env.api_url(),
            env.ns
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let page: Value = again.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3, "{page}");
    kubectl(&["delete", "clusterrolebinding", &binding], None);
}
