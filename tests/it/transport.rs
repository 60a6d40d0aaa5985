//! The query API's transport (issue 19): tokens only for its audience, HTTPS only when TLS is on, and a graceful
//! shutdown that finishes the requests in progress. Against the test control plane, the operator in-process.

use std::process::Command;
use std::time::{Duration, Instant};

use datastorage::api::auth::DEFAULT_AUDIENCE;
use datastorage::tls::{ServingTls, certs};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::kube::{EnvOptions, TestEnv, eventually, kubeconfig, kubectl};

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_datastorage"))
        .args(args)
        .env_remove("DATASTORAGE_API_SERVER")
        .env_remove("DATASTORAGE_TOKEN")
        .output()
        .unwrap()
}

/// `datastorage query list -o json -n NS --server SERVER` + `extra`.
fn query_list(ns: &str, server: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["query", "list", "-o", "json", "-n", ns, "--server", server];
    args.extend_from_slice(extra);
    cli(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_accepts_only_tokens_minted_for_its_audience() {
    let env = TestEnv::new("aud").await;
    let (api_token, binding) = env.cluster_admin_token("aud-reader");
    // The same ServiceAccount's token for the API server's own audience (what a kubeconfig or a pod holds).
    let server_token = env
        .kubectl(&["create", "token", "aud-reader"], None)
        .trim()
        .to_string();
    let list = format!("{}/api/v1/audits?namespace={}", env.api_url(), env.ns);
    let http = reqwest::Client::new();

    let refused = http
        .get(&list)
        .bearer_auth(&server_token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let problem: Value = refused.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("audience datastorage") && detail.contains("--audience datastorage"),
        "{problem}"
    );
    let ok = http
        .get(&list)
        .bearer_auth(&api_token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());

    // ... and the API's token cannot be replayed against the API server (its TokenReview for its own audiences).
    let review = Api::<TokenReview>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token: api_token.clone(),
                    audiences: None,
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(
        review.status.and_then(|s| s.authenticated),
        Some(true),
        "the API server accepted a token minted for {DEFAULT_AUDIENCE}"
    );

    // The CLI: a forwarded API-server token is refused with the way out; --service-account mints one for the
    // audience with the kubeconfig's credentials (TokenRequest) and is let in.
    let kc = kubeconfig();
    let server = env.api_url();
    let out = query_list(
        &env.ns,
        &server,
        &["--kubeconfig", &kc, "--token", &server_token],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--audience datastorage"), "{stderr}");
    let sa = format!("{}/aud-reader", env.ns);
    let out = query_list(
        &env.ns,
        &server,
        &["--kubeconfig", &kc, "--service-account", &sa],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(page["items"].is_array(), "{page}");
    kubectl(&["delete", "clusterrolebinding", &binding], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_on_the_query_api_answers_only_https_with_its_certificate() {
    let bundle = certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    let env = TestEnv::with(
        "apitls",
        EnvOptions {
            api_tls: Some(ServingTls::Pem(bundle.serving.clone())),
            ..EnvOptions::default()
        },
    )
    .await;
    let (token, binding) = env.cluster_admin_token("tls-reader");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &bundle.ca_pem).unwrap();
    let running = env.operator.as_ref().unwrap();
    let addr = running.api_addr;
    let https = format!("https://localhost:{}", addr.port());
    let list = format!("{https}/api/v1/audits?namespace={}", env.ns);
    let verified = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(bundle.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    // The certificate is loaded in the background: the first answers may take a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let anonymous = loop {
        match verified.get(&list).send().await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the API's TLS: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no HTTPS answer: {e:?}"),
        }
    };
    assert_eq!(anonymous.status(), 401);
    let ok = verified
        .get(&list)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{}", ok.text().await.unwrap());

    // Plain HTTP on the same port gets no HTTP answer at all.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/audits?namespace={}", env.ns))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // The CLI trusts the CA it is given, and nothing else.
    let ca = ca_file.to_str().unwrap();
    let out = query_list(
        &env.ns,
        &https,
        &["--token", &token, "--certificate-authority", ca],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = query_list(&env.ns, &https, &["--token", &token]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot reach the query API"), "{stderr}");

    // The chart's `helm test` command, as the smoke-test pod runs it (the address, the Service's name checked).
    let metrics_url = format!("http://{}", running.ops_addr);
    let api_url = format!("https://{addr}");
    let smoke_test = |server_name: &str| {
        cli(&[
            "smoke-test",
            "--metrics-url",
            &metrics_url,
            "--api-url",
            &api_url,
            "--api-ca-file",
            ca,
            "--api-server-name",
            server_name,
            "--timeout-seconds",
            "60",
        ])
    };
    let out = smoke_test("localhost");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("plain HTTP: no answer"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = smoke_test("datastorage-operator.elsewhere.svc");
    assert!(
        !out.status.success(),
        "a certificate for another name passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    kubectl(&["delete", "clusterrolebinding", &binding], None);
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) from `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("no answer within 30 s")
            .unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_readiness_flips_first_and_the_requests_in_progress_finish() {
    let mut env = TestEnv::new("drain").await;
    let (token, binding) = env.cluster_admin_token("drain-reader");
    let running = env.operator.take().unwrap();
    let times = datastorage::operator::ShutdownTimes::DEFAULT;
    // Ready first (the DataStorage's first pass, migrations included, may still be running under load).
    let readyz = format!("http://{}/readyz", running.ops_addr);
    eventually(
        Duration::from_secs(60),
        "/readyz 200 before the shutdown",
        || async {
            let r = reqwest::get(&readyz).await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;

    // A search whose body is half sent when the shutdown starts.
    let body = format!(
        r#"{{"query":"pod was OOMKilled","namespace":"{}"}}"#,
        env.ns
    );
    let (first, rest) = body.split_at(body.len() / 2);
    let mut in_progress = tokio::net::TcpStream::connect(running.api_addr)
        .await
        .unwrap();
    in_progress
        .write_all(
            format!(
                "POST /api/v1/audits/search HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n{first}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    running.shutdown();

    // Readiness flips at once, while the ports still serve (the drain delay).
    let readyz = reqwest::get(format!("http://{}/readyz", running.ops_addr))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(
        readyz.text().await.unwrap().contains("shutting down"),
        "the reason names the shutdown"
    );

    // After the delay the API port takes no new connection ...
    let refused_at = loop {
        match tokio::net::TcpStream::connect(running.api_addr).await {
            Err(_) => break started.elapsed(),
            Ok(_) if started.elapsed() < times.drain_delay + Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(_) => panic!("still accepting {:?} after the shutdown", started.elapsed()),
        }
    };
    assert!(
        refused_at >= times.drain_delay,
        "stopped accepting after {refused_at:?}, before the drain delay {:?}",
        times.drain_delay
    );
    // ... and the request in progress is still answered, then its connection closed.
    in_progress.write_all(rest.as_bytes()).await.unwrap();
    let response = read_response(&mut in_progress).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut after = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), in_progress.read(&mut after))
        .await
        .expect("the connection stays open after its last answer")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed after its answer");

    // The operator ends on its own once drained.
    let ended = tokio::time::timeout(times.drain_timeout + Duration::from_secs(10), running.task)
        .await
        .expect("the operator did not stop after draining");
    ended.unwrap().unwrap();
    eprintln!(
        "readiness 503 at once, new connections refused after {refused_at:?}, the request in progress \
         answered 200, stopped after {:?}",
        started.elapsed()
    );
    kubectl(&["delete", "clusterrolebinding", &binding], None);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `datastorage run` as a process, as the chart runs it (JSON logs): every read of the query API is an access-log
/// line naming the caller (the TokenReview username), and SIGTERM stops it gracefully, exit code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datastorage_run_logs_every_read_with_its_caller_and_stops_on_sigterm() {
    let env = TestEnv::with(
        "runlog",
        EnvOptions {
            start_operator: false,
            ..EnvOptions::default()
        },
    )
    .await;
    let (token, binding) = env.cluster_admin_token("log-reader");
    let (api_port, ops_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_datastorage"))
        .args([
            "run",
            "--datastorage",
            &env.ns,
            "--namespace",
            &env.ns,
            "--api-addr",
            &format!("127.0.0.1:{api_port}"),
            "--metrics-addr",
            &format!("127.0.0.1:{ops_port}"),
            "--log-format",
            "json",
            "--shutdown-delay-seconds",
            "3",
        ])
        .env("KUBECONFIG", kubeconfig())
        .env("RUST_LOG", "info")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = Instant::now();
    loop {
        let ready = reqwest::get(format!("http://127.0.0.1:{ops_port}/readyz")).await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("datastorage run not ready:\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let base = format!("http://127.0.0.1:{api_port}/api/v1");
    let http = reqwest::Client::new();
    let search_body = serde_json::json!({"query": "pod was OOMKilled", "namespace": env.ns});
    for (request_id, request, expected) in [
        (
            "read-one",
            http.get(format!("{base}/audits?namespace={}", env.ns)),
            200,
        ),
        (
            "read-two",
            http.get(format!("{base}/audits/999999999")),
            404,
        ),
        (
            "read-three",
            http.post(format!("{base}/audits/search"))
                .json(&search_body),
            200,
        ),
    ] {
        let answer = request
            .bearer_auth(&token)
            .header("x-request-id", request_id)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), expected, "{request_id}");
    }

    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    // Readiness flips as soon as the signal is handled, well within the drain delay (3 s).
    let signalled = Instant::now();
    loop {
        let status = reqwest::get(format!("http://127.0.0.1:{ops_port}/readyz"))
            .await
            .unwrap()
            .status();
        if status == 503 {
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "/readyz still {status} 2 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 30 s after SIGTERM:\n{}", logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = logs();
    assert!(status.success(), "exit {status:?} after SIGTERM:\n{text}");

    let user = format!("system:serviceaccount:{}:log-reader", env.ns);
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "datastorage::access")
        .collect();
    for (request_id, operation, status) in [
        ("read-one", "list", 200),
        ("read-two", "get", 404),
        ("read-three", "search", 200),
    ] {
        let line = lines
            .iter()
            .find(|v| v["fields"]["request_id"] == request_id)
            .unwrap_or_else(|| panic!("no access-log line for {request_id}:\n{text}"));
        let f = &line["fields"];
        assert_eq!(f["user"], user.as_str(), "{line}");
        assert_eq!(f["operation"], operation, "{line}");
        assert_eq!(f["status"], status, "{line}");
    }
    assert!(
        text.contains("SIGTERM") && text.contains("shutting down"),
        "the log says why it stops:\n{text}"
    );
    kubectl(&["delete", "clusterrolebinding", &binding], None);
}
