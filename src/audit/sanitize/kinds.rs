//! THE kind table: every secret kind, once. Its name (`[REDACTED:<name>]`, the `kind` label of
//! `datastorage_redactions_total`), its specificity (tie-break when two candidates cover exactly the same bytes,
//! lower wins) and its keywords (case-insensitive literals; a rule emitting this kind runs only on text containing
//! one of them) are all read from the rows below. The prefilter ([`super::engine`]) is built from the keywords.
//!
//! Names are stable: they are stored in audits and used as metric labels. New kinds are appended.

/// Declares [`SecretKind`] and its accessors from one table.
macro_rules! kinds {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, $spec:literal, [$($kw:literal),* $(,)?]; )*) => {
        /// The kinds of secret, in this order, with these snake_case names ([`SecretKind::as_str`]), used in
        /// `[REDACTED:<kind>]` and in metrics labels.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum SecretKind {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl SecretKind {
            /// How many kinds there are.
            pub const COUNT: usize = [$($name),*].len();

            /// All kinds, in declaration order.
            pub const ALL: [SecretKind; Self::COUNT] = [$(SecretKind::$variant),*];

            /// The snake_case name used in `[REDACTED:<kind>]` and metrics labels.
            pub fn as_str(self) -> &'static str {
                match self { $(SecretKind::$variant => $name,)* }
            }

            /// Tie-break order when two candidates cover exactly the same bytes (lower is more specific).
            pub(crate) fn specificity(self) -> u8 {
                match self { $(SecretKind::$variant => $spec,)* }
            }

            /// Lower-case literals one of which appears (case-insensitively) in every text holding this kind.
            pub(crate) fn keywords(self) -> &'static [&'static str] {
                match self { $(SecretKind::$variant => &[$($kw),*],)* }
            }
        }
    };
}

kinds! {
    /// `"password": "x"` (also `passwd`, `pwd`, `db_password`, … keys) in JSON-looking text or `details`.
    PasswordJson = "password_json", 7, ["pass", "pwd"];
    /// `password=x`, `password: x`, `PASSWORD := x`, `--password x`, `<password>x</password>` in plain text.
    PasswordKv = "password_kv", 8, ["pass", "pwd"];
    /// Userinfo password in a generic URL `scheme://user:pass@host`.
    PasswordUrl = "password_url", 4, ["://"];
    /// `"api_key"`/`"apiKey"`/`"api-key"`/`"x-api-key"`: `"…"` in JSON text.
    ApiKeyJson = "api_key_json", 7, ["apikey", "api_key", "api-key", "api.key", "api key"];
    /// `api_key=…`, `apikey: …`, `X-API-Key: …` in plain text.
    ApiKey = "api_key", 8, ["apikey", "api_key", "api-key", "api.key", "api key"];
    /// OpenAI-style `sk-…` / `sk-proj-…` keys.
    OpenaiKey = "openai_key", 10, ["sk-"];
    /// `Bearer <token>` (outside an `Authorization` header).
    BearerToken = "bearer_token", 12, ["bearer"];
    /// `ghp_`/`gho_`/`ghs_`/`ghu_`/`ghr_` + 36 alphanumerics, `github_pat_…`.
    GithubToken = "github_token", 9, ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"];
    /// `"token"`/`"access_token"`/`"refresh_token"`/…: `"…"` in JSON text.
    TokenJson = "token_json", 7, ["token"];
    /// `token=…`, `access_token=…`, `token: …` in plain text.
    Token = "token", 8, ["token"];
    /// `"secret"`/`"client_secret"`/`"secret_key"`/`"credentials"`: `"…"` in JSON text.
    SecretJson = "secret_json", 7, ["secret", "credential"];
    /// `secret=…`, `client_secret=…` in plain text.
    Secret = "secret", 8, ["secret"];
    /// The value of an `Authorization:` header.
    AuthorizationHeader = "authorization_header", 2, ["authorization"];
    /// `AKIA`/`ASIA` + 16 upper-case alphanumerics.
    AwsAccessKeyId = "aws_access_key_id", 11, ["akia", "asia"];
    /// `aws_secret_access_key=…` or a 40-char value next to an access key id.
    AwsSecretKey = "aws_secret_key", 6, ["akia", "asia", "secret"];
    /// `postgres://user:pass@…` / `postgresql://…`.
    PostgresUrl = "postgres_url", 3, ["://"];
    /// `mysql://user:pass@…`.
    MysqlUrl = "mysql_url", 3, ["://"];
    /// `mongodb://…` and `mongodb+srv://…` with a password.
    MongodbUrl = "mongodb_url", 3, ["://"];
    /// `redis://…` and `rediss://…` with a password.
    RedisUrl = "redis_url", 3, ["://"];
    /// A whole `-----BEGIN CERTIFICATE-----` block.
    PemCertificate = "pem_certificate", 1, ["-----begin"];
    /// A whole `-----BEGIN … PRIVATE KEY-----` block (to the end of the text if unterminated), or the value of a
    /// `private_key`-named key.
    PemPrivateKey = "pem_private_key", 0, ["-----begin", "private"];
    /// Values of Kubernetes Secret `data:`/`binaryData:`/`stringData:` entries; base64-encoded PEM.
    K8sSecretData = "k8s_secret_data", 5, ["ata:", "\"data\"", "\"binarydata\"", "\"stringdata\"", "ls0tls1crudjti"];
    /// A high-entropy value under a key that merely *contains* a secret word (`db_pass`, `mySecretString`,
    /// `apikey_myservice`).
    GenericSecret = "generic_secret", 20, ["pass", "pwd", "secret", "token", "apikey", "api_key", "api-key", "api.key", "api key", "credential", "private"];
    /// A JSON Web Token (`eyJ….eyJ….…`), also base64-wrapped (`ZXlK…`).
    Jwt = "jwt", 14, ["eyj", "zxlk"];
    /// Slack bot/user/app/config tokens (`xoxb-`, `xoxp-`, `xapp-`, …).
    SlackToken = "slack_token", 13, ["xoxa-", "xoxb-", "xoxp-", "xoxr-", "xoxs-", "xoxe", "xapp-"];
    /// The secret path of a Slack incoming-webhook / workflow URL.
    SlackWebhook = "slack_webhook", 13, ["hooks.slack.com"];
    /// Stripe secret / restricted keys and webhook signing secrets.
    StripeKey = "stripe_key", 13, ["sk_live_", "sk_test_", "rk_live_", "rk_test_", "sk_prod_", "whsec_"];
    /// GitLab personal/project/group access, runner, deploy, trigger, feed, … tokens.
    GitlabToken = "gitlab_token", 13, ["glpat-", "glrt-", "gldt-", "glptt-", "glft-", "glimt-", "glagent-", "gloas-", "glcbt-", "glsoat-", "glffct-", "gr1348941"];
    /// Google API keys (`AIza…`).
    GoogleApiKey = "google_api_key", 13, ["aiza"];
    /// Google OAuth client secrets (`GOCSPX-…`) and access tokens (`ya29.…`).
    GoogleOauth = "google_oauth", 13, ["gocspx-", "ya29."];
    /// `AccountKey=` / `SharedAccessKey=` of an Azure connection string.
    AzureStorageKey = "azure_storage_key", 7, ["accountkey", "sharedaccesskey"];
    /// The `sig=` signature of an Azure shared access signature (SAS).
    AzureSasToken = "azure_sas_token", 7, ["sig="];
    /// Azure AD / Entra client secrets (`…8Q~…`).
    AzureClientSecret = "azure_client_secret", 13, ["q~"];
    /// npm access tokens (`npm_…`) and `.npmrc` `_auth=`.
    NpmToken = "npm_token", 13, ["npm_", "_auth"];
    /// PyPI upload tokens (`pypi-AgEIcHlwaS5vcmc…`).
    PypiToken = "pypi_token", 13, ["pypi-"];
    /// SendGrid API keys (`SG.….…`).
    SendgridKey = "sendgrid_key", 13, ["sg."];
    /// Twilio API key SIDs (`SK` + 32 hex).
    TwilioKey = "twilio_key", 13, ["sk"];
    /// Hugging Face user / organization tokens (`hf_…`, `api_org_…`).
    HuggingfaceToken = "huggingface_token", 13, ["hf_", "api_org_"];
    /// The base64 `auth` of a Docker `auths` config, and a base64 `.dockerconfigjson`.
    DockerAuth = "docker_auth", 6, ["\"auth\"", "\\\"auth\\\"", "eyjhdxrocyi6", "ewogicjhdxrocyi6", "ewojimf1dghzijo"];
}

impl SecretKind {
    /// The replacement text, `[REDACTED:<kind>]`.
    pub fn placeholder(self) -> String {
        format!("[REDACTED:{}]", self.as_str())
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<SecretKind> {
        SecretKind::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    /// Bit of this kind in a [`KindSet`].
    pub(crate) fn bit(self) -> KindSet {
        1u64 << (self as u32)
    }
}

/// A set of kinds as a bit mask (there are fewer than 64 kinds; a test checks it).
pub(crate) type KindSet = u64;

/// The set of `kinds`.
pub(crate) const fn set_of(kinds: &[SecretKind]) -> KindSet {
    let mut set = 0u64;
    let mut i = 0;
    while i < kinds.len() {
        set |= 1u64 << (kinds[i] as u32);
        i += 1;
    }
    set
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// A `KindSet` is a u64: one bit per kind.
const _: () = assert!(SecretKind::COUNT < 64, "too many kinds for a u64 KindSet");
