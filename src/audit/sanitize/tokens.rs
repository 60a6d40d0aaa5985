//! Flat token rules: one row per token family, each with its own true positives (`tps`, the secret marked
//! `«…»`, or `«kind:…»` when a more specific rule names it) and false positives (`fps`, kept byte for byte by the
//! whole sanitizer). A row's pattern runs only when the prefilter found one of its kind's keywords
//! ([`super::kinds`]); a test fails when a positive lacks them. Data table.

use super::SecretKind;
use super::keys::{is_reference, looks_like_credential, looks_like_k8s_ref};

/// One token rule.
pub(crate) struct Row {
    pub name: &'static str,
    pub kind: SecretKind,
    pub pattern: &'static str,
    /// The capture group holding the secret (`""`: the whole match).
    pub group: &'static str,
    /// Extra test on the secret `text[start..end]`.
    pub check: fn(&str, usize, usize) -> bool,
    pub tps: &'static [&'static str],
    pub fps: &'static [&'static str],
}

fn always(_: &str, _: usize, _: usize) -> bool {
    true
}

/// Prefixed tokens (`glrt-…`, `xoxb-…`) that are not a Kubernetes object name (`glrt-runner-manager-7f9c8d`):
/// upper case, `_`/`.`, or a run of 8 digits (Slack's team/user ids) rule a name out.
fn not_k8s_name(text: &str, s: usize, e: usize) -> bool {
    let t = &text[s..e];
    let long_digits = t
        .split(|c: char| !c.is_ascii_digit())
        .any(|run| run.len() >= 8);
    long_digits || !looks_like_k8s_ref(t)
}

fn credential(text: &str, s: usize, e: usize) -> bool {
    looks_like_credential(&text[s..e])
}

/// `sk-…`: the body must contain an upper-case letter and a digit (so `sk-learn-pipeline-worker` is kept).
fn openai_body(text: &str, s: usize, e: usize) -> bool {
    let t = &text[s..e];
    let body = ["sk-proj-", "sk-svcacct-", "sk-admin-", "sk-"]
        .iter()
        .find_map(|p| t.strip_prefix(p))
        .unwrap_or(t);
    body.bytes().any(|x| x.is_ascii_uppercase()) && body.bytes().any(|x| x.is_ascii_digit())
}

/// A 40-char AWS secret right after an access key id, not followed by more base64.
fn aws_pair_end(text: &str, _: usize, e: usize) -> bool {
    !text
        .as_bytes()
        .get(e)
        .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// A SAS signature: base64, usually percent-encoded, never a word.
fn sas_signature(text: &str, s: usize, e: usize) -> bool {
    let t = &text[s..e];
    !is_reference(t)
        && (t.contains('%') || t.contains('+') || t.contains('/') || t.ends_with('=') || {
            t.bytes().any(|b| b.is_ascii_digit()) && t.bytes().any(|b| b.is_ascii_uppercase())
        })
}

pub(crate) const ROWS: &[Row] = &[
    Row {
        name: "pem-private-key",
        kind: SecretKind::PemPrivateKey,
        pattern: r"(?s)-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)",
        group: "",
        check: always,
        tps: &[
            "key:\n«-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----»\nafter",
            "truncated «-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\npassword=x»",
            "«-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF\n-----END ENCRYPTED PRIVATE KEY-----»",
        ],
        fps: &[
            "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
            "BEGIN RSA PRIVATE KEY is the header",
        ],
    },
    Row {
        name: "pem-certificate",
        kind: SecretKind::PemCertificate,
        pattern: r"(?s)-----BEGIN (?:TRUSTED )?CERTIFICATE-----.*?-----END (?:TRUSTED )?CERTIFICATE-----",
        group: "",
        check: always,
        tps: &[
            "ca:\n«-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\nQk1+/abc=\n-----END CERTIFICATE-----»\ndone",
            "chain «-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----» «-----BEGIN CERTIFICATE-----\\nMIIC\\n-----END CERTIFICATE-----»",
        ],
        fps: &[
            "-----BEGIN CERTIFICATE REQUEST----- is a CSR header",
            "-----BEGIN CERTIFICATE-----\nMIIB truncated",
        ],
    },
    Row {
        name: "base64-pem",
        kind: SecretKind::K8sSecretData,
        pattern: r"LS0tLS1CRUdJTi[A-Za-z0-9+/]*={0,2}",
        group: "",
        check: always,
        tps: &[
            "caBundle: «LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t»",
            "tls.key=«LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ==» loaded",
        ],
        fps: &["LS0t is base64 for ---"],
    },
    Row {
        name: "aws-access-key-id",
        kind: SecretKind::AwsAccessKeyId,
        pattern: r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
        group: "",
        check: always,
        tps: &[
            "using «AKIAIOSFODNN7EXAMPLE» in us-east-1",
            "Credential=«ASIAY34FZKBOKMUTVV7A»/20240501/us-east-1/s3/aws4_request",
        ],
        fps: &[
            "AKIAIOSFODNN7EXAMPL is 19 chars",
            "XAKIAIOSFODNN7EXAMPLE",
            "the AKIA prefix identifies access keys",
        ],
    },
    Row {
        name: "aws-secret-after-key-id",
        kind: SecretKind::AwsSecretKey,
        pattern: r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}[ \t,:;|]+(?P<s>[A-Za-z0-9/+]{40})",
        group: "s",
        check: aws_pair_end,
        tps: &[
            "«aws_access_key_id:AKIAIOSFODNN7EXAMPLE»:«wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY»",
            "keys «aws_access_key_id:ASIAY34FZKBOKMUTVV7A» «wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY» rotated",
        ],
        fps: &[
            "AKIA rotation: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "aws_region=us-east-1",
        ],
    },
    Row {
        name: "github-token",
        kind: SecretKind::GithubToken,
        pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})(?-u:\b)",
        group: "",
        check: always,
        tps: &[
            "git clone https://«ghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ»@github.com/o/r",
            "GH=«github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz» ok",
            "tokens «ghs_abcdefghijklmnopqrstuvwxyz0123456789» «gho_ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789»",
        ],
        fps: &[
            "ghp_tooshort123",
            "xghp_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
            "ghp_short_token_name",
        ],
    },
    Row {
        name: "openai-key",
        kind: SecretKind::OpenaiKey,
        pattern: r"(?-u:\b)sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        group: "",
        check: openai_body,
        tps: &[
            "using key «sk-abcdefghijklmnopqrstuvwxyzABC123» for completion",
            "OPENAI=«sk-proj-Ab3dEfGhIjKlMnOpQrStUvWx_yz-0123456789»",
        ],
        fps: &[
            "sk-learn-pipeline-worker-deployment-xyz",
            "task-abcdefghijklmnopqrstuvwxyz0123AB",
            "sk-Short1",
            "sk-learn-pipeline-worker-deployment-7f9c",
        ],
    },
    Row {
        name: "bearer-token",
        kind: SecretKind::BearerToken,
        pattern: r"(?i)(?-u:\b)bearer[ \t]+(?P<tok>[A-Za-z0-9._~+/-]+=*)",
        group: "tok",
        check: credential,
        tps: &[
            r#"curl -H "Bearer «eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig»" https://api"#,
            "retrying with bearer «abc123def456»",
        ],
        fps: &[
            "bearer token expired",
            "Bearer realm",
            "invalid bearer token",
            "curl -H \"Bearer $TOKEN\"",
        ],
    },
    Row {
        name: "jwt",
        kind: SecretKind::Jwt,
        pattern: r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
        group: "",
        check: always,
        tps: &[
            "serviceaccount token «eyJhbGciOiJSUzI1NiIsImtpZCI6IkRrVjZ6In0.eyJpc3MiOiJrdWJlcm5ldGVzL3NlcnZpY2VhY2NvdW50In0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c» rejected",
            "unsigned «eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.»",
            r#"{"token": "«token_json:eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJl»"}"#,
        ],
        fps: &[
            "eyJhbGciOiJIUzI1NiJ9 is the header of every HS256 token",
            "io.jsonwebtoken:jjwt-jackson-0.11.2",
            "implementation 'io.jsonwebtoken:jjwt-api:0.11.5'",
        ],
    },
    Row {
        name: "jwt-base64",
        kind: SecretKind::Jwt,
        pattern: r"(?-u:\b)ZXlK[A-Za-z0-9+/]{36,}={0,2}",
        group: "",
        check: always,
        tps: &[
            "token file: «ZXlKaGJHY2lPaUpTVXpJMU5pSXNJbXRwWkNJNklrUnJWalo2SW4wLmV5SnBjM01pT2lKcmRXSmxjbTVsZEdWekwzTmxjblpwWTJWaFkyTnZkVzUwSW4wLlNmbEt4d1JKU01lS0tGMlFUNGZ3cE1lSmYzNlBPazZ5SlZfYWRRc3N3NWM=»",
            "--from «ZXlKaGJHY2lPaUpTVXpJMU5pSjkuZXlKemRXSWlPaUl4SW4wLnNpZw==»",
        ],
        fps: &["ZXlK is how a base64 JWT starts"],
    },
    Row {
        name: "slack-token",
        kind: SecretKind::SlackToken,
        pattern: r"(?-u:\b)(?:xox[abprse]-|xoxe\.xox[bp]-|xapp-)[0-9A-Za-z-]{10,}",
        group: "",
        check: not_k8s_name,
        tps: &[
            "notify failed with «xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx»",
            "SLACK_USER=«xoxp-123456789012-123456789012-123456789012-0123456789abcdef0123456789abcdef»",
            "socket mode «xapp-1-A0123ABCDEF-1234567890123-0123456789abcdef0123456789abcdef»",
            "rotated «xoxe.xoxp-1-Mi0yLTEyMzQ1Njc4OTAxMi0xMjM0NTY3ODkwMTIz»",
        ],
        fps: &[
            "xoxb- prefix identifies bot tokens",
            "the xoxp-token docs",
            "pod xoxb-notifier-7f9c8d-xk2lq",
        ],
    },
    Row {
        name: "slack-webhook",
        kind: SecretKind::SlackWebhook,
        pattern: r"(?i)hooks\.slack\.com/(?:services|workflows|triggers)/(?P<s>[A-Za-z0-9_+/-]{20,})",
        group: "s",
        check: always,
        tps: &[
            "POST https://hooks.slack.com/services/«T024BE7LD/B01A2B3C4D5/abcdEFGHijklMNOPqrstUVWX» returned 404",
            "hooks.slack.com/workflows/«T024BE7LD/A05B6C7D8E9/123456789012345678/AbCdEfGhIjKl»",
        ],
        fps: &[
            "see https://hooks.slack.com/services for the docs",
            "https://api.slack.com/messaging/webhooks",
        ],
    },
    Row {
        name: "stripe-key",
        kind: SecretKind::StripeKey,
        pattern: r"(?-u:\b)(?:(?:sk|rk)_(?:live|test|prod)_[0-9A-Za-z]{10,99}|whsec_[0-9A-Za-z]{24,})(?-u:\b)",
        group: "",
        check: always,
        tps: &[
            "charge failed: «sk_live_51H8abcdEFGHijklMNOPqrstUVWXyz0123456789»",
            "STRIPE=«rk_test_4eC39HqLyjWDarjtT1zdp7dc»",
            "signing with «whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw»",
        ],
        fps: &[
            "pk_live_51H8abcdEFGHijklMNOPqrstUVWXyz0123456789 is publishable",
            "the sk_live_ prefix",
        ],
    },
    Row {
        name: "gitlab-token",
        kind: SecretKind::GitlabToken,
        pattern: r"(?-u:\b)(?:(?:glpat|glrt|gldt|glptt|glft|glimt|glagent|gloas|glcbt|glsoat|glffct)-[0-9A-Za-z_.-]{20,}|GR1348941[0-9A-Za-z_-]{20,})",
        group: "",
        check: not_k8s_name,
        tps: &[
            "git push failed with «glpat-xYz12AbCdEfGhIjKlMnO»",
            "runner «glrt-t1_AbCdEfGhIjKlMnOpQrSt»",
            "deploy «gldt-Ab12Cd34Ef56Gh78Ij90» expired",
            "registration «GR1348941AbCdEfGhIjKlMnOpQrSt»",
        ],
        fps: &[
            "glpat- tokens expire after 365 days",
            "glrt-runner-manager-7f9c8d-xk2lq restarted",
        ],
    },
    Row {
        name: "google-api-key",
        kind: SecretKind::GoogleApiKey,
        pattern: r"(?-u:\b)AIza[0-9A-Za-z_-]{35}",
        group: "",
        check: always,
        tps: &[
            "maps call with key=«AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q»",
            "GET /geocode?key=«AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q»&address=x",
        ],
        fps: &["AIzaSy is how Google keys start"],
    },
    Row {
        name: "google-oauth",
        kind: SecretKind::GoogleOauth,
        pattern: r"(?-u:\b)(?:GOCSPX-[0-9A-Za-z_-]{28}|ya29\.[0-9A-Za-z_-]{20,})",
        group: "",
        check: always,
        tps: &[
            "oauth client «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»",
            "access «ya29.a0AfH6SMBx3d4e5f6g7h8i9j0kLmNoPqRsTuVwXyZ»",
        ],
        fps: &["ya29. tokens expire after an hour"],
    },
    Row {
        name: "azure-storage-key",
        kind: SecretKind::AzureStorageKey,
        pattern: r"(?i)(?:AccountKey|SharedAccessKey)[ \t]*=[ \t]*(?P<s>[A-Za-z0-9+/]{16,}={0,2})",
        group: "s",
        check: always,
        tps: &[
            "DefaultEndpointsProtocol=https;AccountName=prodstore;AccountKey=«Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6MDEyMzQ1Njc4OQ==»;EndpointSuffix=core.windows.net",
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=«q8Xr2bNf5kLmP0sT7vW9yZ1aC3dE5gH7jK9lM2nO4pQ=»",
        ],
        fps: &[
            "AccountName=prodstore;EndpointSuffix=core.windows.net",
            "SharedAccessKeyName=RootManageSharedAccessKey",
        ],
    },
    Row {
        name: "azure-sas-signature",
        kind: SecretKind::AzureSasToken,
        pattern: r"(?i)(?:^|[?&;\s])sig=(?P<s>[A-Za-z0-9%+/=_-]{20,})",
        group: "s",
        check: sas_signature,
        tps: &[
            "GET https://prodstore.blob.core.windows.net/c/b.txt?sv=2022-11-02&ss=b&srt=o&sp=r&se=2026-03-01T00:00:00Z&sig=«Zx9kR2q%2BaBcDeFgHiJkLmNoPqRsTuVwXyZ01%3D» 403",
            "BlobEndpoint=https://x.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&sig=«AbCdEfGh1234567890IjKlMn%3D»",
        ],
        fps: &[
            "signature mismatch: sig=invalid",
            "sig=abcdefghijklmnopqrstuvwxyz is a word",
        ],
    },
    Row {
        name: "azure-client-secret",
        kind: SecretKind::AzureClientSecret,
        pattern: r#"(?:^|[\\'"`\s>=:(,)])(?P<s>[a-zA-Z0-9_~.]{3}[0-9]Q~[a-zA-Z0-9_~.-]{31,34})(?:$|[\\'"`\s<),])"#,
        group: "s",
        check: always,
        tps: &[
            "login with «Xy18Q~DeFgHiJkLmNoPqRsTuVwXyZ0123456789a» failed",
            "clientSecret '«Zq97Q~a.b_c-d~EfGhIjKlMnOpQrStUvWxYz0123»'",
            "AZURE_CLIENT_SECRET=«secret:abc8Q~DeFgHiJkLmNoPqRsTuVwXyZ0123456789a»",
        ],
        fps: &["Q~ appears in azure client secrets"],
    },
    Row {
        name: "npm-token",
        kind: SecretKind::NpmToken,
        pattern: r"(?-u:\b)npm_[A-Za-z0-9]{36}(?-u:\b)",
        group: "",
        check: always,
        tps: &[
            "publish failed for «npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789»",
            "//registry.npmjs.org/:_authToken=«token:npm_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789»",
        ],
        fps: &["npm_config_cache=/tmp/.npm"],
    },
    Row {
        name: "npmrc-auth",
        kind: SecretKind::NpmToken,
        pattern: r"(?m)(?:^|[\s;])_auth[ \t]*=[ \t]*(?P<s>[A-Za-z0-9+/]{8,}={0,2})",
        group: "s",
        check: always,
        tps: &[".npmrc:\n_auth=«dXNlcjpTM2NyM3RQYXNz»\nalways-auth=true"],
        fps: &["_auth is deprecated, use _authToken"],
    },
    Row {
        name: "pypi-token",
        kind: SecretKind::PypiToken,
        pattern: r"pypi-(?:AgEIcHlwaS5vcmc|AgENdGVzdC5weXBpLm9yZw)[A-Za-z0-9_-]{50,}",
        group: "",
        check: always,
        tps: &[
            "twine upload failed: «pypi-AgEIcHlwaS5vcmcCJDEyMzQ1Njc4LTkwYWItY2RlZi0xMjM0LTU2Nzg5MGFiY2RlZgACKlsz»",
            "TWINE=«pypi-AgENdGVzdC5weXBpLm9yZwIkZmVkY2JhOTgtNzY1NC0zMjEwLWZlZGMtYmE5ODc2NTQzMjEwAAIqWzNd»",
        ],
        fps: &[
            "pypi-simple index unreachable",
            "pypi-AgEI is the token prefix",
        ],
    },
    Row {
        name: "sendgrid-key",
        kind: SecretKind::SendgridKey,
        pattern: r"(?-u:\b)SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
        group: "",
        check: always,
        tps: &[
            "mail failed: «SG.abcdefghijklmnopqrstuv.ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopq»",
            "SENDGRID=«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»",
        ],
        fps: &["SG.1 is a security group"],
    },
    Row {
        name: "twilio-api-key",
        kind: SecretKind::TwilioKey,
        pattern: r"(?-u:\b)SK[0-9a-fA-F]{32}(?-u:\b)",
        group: "",
        check: always,
        tps: &[
            "TWILIO_API_KEY_SID «SK0123456789abcdef0123456789abcdef» revoked",
            "twilio: 401 for «SKa1b2c3d4e5f60718293a4b5c6d7e8f90»",
        ],
        fps: &["SKU 0123456789 out of stock", "disk full"],
    },
    Row {
        name: "huggingface-token",
        kind: SecretKind::HuggingfaceToken,
        pattern: r"(?-u:\b)(?:hf_[A-Za-z0-9]{34,40}|api_org_[A-Za-z0-9]{34})(?-u:\b)",
        group: "",
        check: always,
        tps: &[
            "download failed with «hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh»",
            "huggingface-cli login --token «token:hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh»",
            "org «api_org_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh»",
        ],
        fps: &["hf_transfer enabled", "hf_hub_download failed"],
    },
    Row {
        name: "dockerconfigjson-base64",
        kind: SecretKind::DockerAuth,
        pattern: r"(?:eyJhdXRocyI6|ewogICJhdXRocyI6|ewoJImF1dGhzIjo)[A-Za-z0-9+/]*={0,2}",
        group: "",
        check: always,
        tps: &[
            ".dockerconfigjson: «eyJhdXRocyI6eyJyZWdpc3RyeS5leGFtcGxlLmNvbSI6eyJhdXRoIjoiWkdWd2JHOTVPbE16WTNJemRGQmhjM009In19fQ==»",
        ],
        fps: &["type: kubernetes.io/dockerconfigjson"],
    },
];
