//! Reading a config file: TOML -> [`raw`](super::raw) -> [`validate`](super::validate) ->
//! [`Config`], with every problem reported as `<file>: <key> (line N): <reason>`.
//!
//! Lines come from a second, span-keeping parse of the same text ([`Locator`]): serde errors
//! carry only a byte span, and validation works on plain values, so both are mapped back to
//! the file through it.

use std::env::VarError;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::raw::RawConfig;
use super::validate::validate;
use super::Config;

/// Looks up an environment variable; [`std::env::var`] in production, a map in tests.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Result<String, VarError>;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, as a dotted key such as `routes[2].upstream` or `upstreams.billing.url`;
    /// `<toml>` for a syntax error; empty when the problem is the file itself.
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// What is wrong, in one line. Never contains a secret's value.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            f.write_str(&self.key)?;
            if let Some(line) = self.line {
                write!(f, " (line {line})")?;
            }
            f.write_str(": ")?;
        }
        f.write_str(&self.reason)
    }
}

/// A config file that cannot be used, with everything that is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given to [`Config::load`] or [`Config::from_toml_str`].
    pub path: PathBuf,
    /// At least one problem, in file order where possible.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    /// One line per problem: `<file>: <key> (line N): <reason>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {problem}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates the config file at `path`, reading `*_env` variables from the
    /// process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem {
                key: String::new(),
                line: None,
                reason: format!("cannot read the config file: {err}"),
            }],
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Validates `text` as if read from `path`: `path` names the file in messages, and
    /// relative TLS paths resolve against its directory.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::from_toml_str_with_env(text, path, &|name| std::env::var(name))
    }

    /// Like [`Config::from_toml_str`], with `env` in place of the process environment
    /// (tests and embedders need not mutate global state to supply `*_env` variables).
    pub fn from_toml_str_with_env(
        text: &str,
        path: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let locator = Locator::new(text);
        let error = |problems| ConfigError {
            path: path.to_path_buf(),
            problems,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| error(vec![locator.toml(&e)]))?;
        validate(raw, path, env).map_err(|issues| {
            error(
                issues
                    .into_iter()
                    .map(|(key, reason)| Problem {
                        line: locator.line_of(&key),
                        key: key.to_string(),
                        reason,
                    })
                    .collect(),
            )
        })
    }
}

/// A key in the file as segments (`routes`, `[2]`, `upstream`), so that its line can be
/// looked up; displays as `routes[2].upstream`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    /// The document root (used for problems about the file as a whole).
    pub(crate) fn root() -> Self {
        Self::default()
    }

    /// This path extended by a table key.
    pub(crate) fn key(&self, key: impl Into<String>) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.into()));
        path
    }

    /// This path extended by an array index.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    // Quoted the way TOML would need it, e.g. match."/data/campaign/id".
                    if bare {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Maps keys to lines and byte offsets to keys, from a span-keeping parse of the file.
struct Locator<'t> {
    text: &'t str,
    /// `None` when the text is not valid TOML (then only the error's own span is known).
    root: Option<Spanned<DeTable<'t>>>,
}

impl<'t> Locator<'t> {
    fn new(text: &'t str) -> Self {
        Self {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// 1-based line of a byte offset.
    fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// A TOML syntax or serde error as one problem.
    fn toml(&self, err: &toml::de::Error) -> Problem {
        let span = err.span();
        let key = span
            .as_ref()
            .and_then(|span| self.key_at(span.start))
            .map_or_else(|| "<toml>".to_owned(), |key| key.to_string());
        Problem {
            key,
            line: span.map(|span| self.line_at(span.start)),
            // toml's messages are one line today; keep the one-line-per-problem promise anyway.
            reason: err.message().trim().replace('\n', "; "),
        }
    }

    /// Line of `path`, or of its deepest ancestor present in the file (a missing key is
    /// best reported where its table is). `None` if not even the first segment is there.
    fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut node: Option<&Spanned<DeValue<'t>>> = None;
        let mut found = None;
        for segment in &path.0 {
            let next = match (segment, node.map(Spanned::get_ref)) {
                (Segment::Key(key), None) => find_key(root.get_ref(), key),
                (Segment::Key(key), Some(DeValue::Table(table))) => find_key(table, key),
                (Segment::Index(index), Some(DeValue::Array(array))) => array.get(*index),
                _ => None,
            };
            let Some(next) = next else { break };
            found = Some(next.span().start);
            node = Some(next);
        }
        found.map(|offset| self.line_at(offset))
    }

    /// The deepest key whose name or value covers `offset`. Spans of `[table]` values are
    /// their headers, not their bodies, so every branch is searched, not only covering ones.
    fn key_at(&self, offset: usize) -> Option<KeyPath> {
        let root = self.root.as_ref()?;
        let mut best = None;
        search_table(root.get_ref(), &KeyPath::root(), offset, &mut best);
        best
    }
}

fn find_key<'a, 't>(table: &'a DeTable<'t>, key: &str) -> Option<&'a Spanned<DeValue<'t>>> {
    table
        .iter()
        .find(|(name, _)| name.get_ref() == key)
        .map(|(_, value)| value)
}

fn covers(span: std::ops::Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

fn depth(path: &Option<KeyPath>) -> usize {
    path.as_ref().map_or(0, |p| p.0.len())
}

fn search_table(table: &DeTable<'_>, at: &KeyPath, offset: usize, best: &mut Option<KeyPath>) {
    for (name, value) in table.iter() {
        let path = at.key(name.get_ref().as_ref());
        if (covers(name.span(), offset) || covers(value.span(), offset))
            && path.0.len() > depth(best)
        {
            *best = Some(path.clone());
        }
        search_value(value.get_ref(), &path, offset, best);
    }
}

fn search_value(value: &DeValue<'_>, at: &KeyPath, offset: usize, best: &mut Option<KeyPath>) {
    match value {
        DeValue::Table(table) => search_table(table, at, offset, best),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                let path = at.index(index);
                if covers(item.span(), offset) && path.0.len() > depth(best) {
                    *best = Some(path.clone());
                }
                search_value(item.get_ref(), &path, offset, best);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{DedupBackend, TlsConfig, TypePattern, Verify};
    use std::collections::HashMap;
    use std::time::Duration;

    /// Loads `text` with the given environment; the file is named `/etc/hookgate/config.toml`.
    pub(crate) fn load_with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let env = move |name: &str| vars.get(name).cloned().ok_or(VarError::NotPresent);
        Config::from_toml_str_with_env(text, Path::new("/etc/hookgate/config.toml"), &env)
    }

    pub(crate) fn load(text: &str) -> Result<Config, ConfigError> {
        load_with_env(text, &[])
    }

    /// The problems of a config that must not load.
    pub(crate) fn problems(text: &str) -> Vec<Problem> {
        match load(text) {
            Ok(_) => panic!("config should not load:\n{text}"),
            Err(ConfigError { problems, .. }) => problems,
        }
    }

    /// The single problem of `text`, which must be at `key`.
    pub(crate) fn only_problem(text: &str, key: &str) -> Problem {
        let problems = problems(text);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].key, key, "{problems:#?}");
        problems[0].clone()
    }

    pub(crate) fn with(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}\n")
    }

    /// MINIMAL with `old` replaced by `new` (which must occur).
    pub(crate) fn edit(old: &str, new: &str) -> String {
        assert!(MINIMAL.contains(old), "{old}");
        MINIMAL.replacen(old, new, 1)
    }

    pub(crate) const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"

[[sources]]
name = "fp"
path = "/webhooks/fp"

[upstreams.billing]
url = "http://127.0.0.1:3000/hook"

[[routes]]
event_type = "fulfilment_pending"
upstream = "billing"
"#;

    #[test]
    fn minimal_config_gets_the_contract_defaults() {
        let config = load(MINIMAL).expect("minimal config loads");
        let server = &config.server;
        assert_eq!(server.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(server.max_body_bytes, 1024 * 1024);
        assert_eq!(server.unrouted_status.as_u16(), 202);
        assert_eq!(server.respond_within, Duration::from_secs(14));
        assert_eq!(server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(server.header_timeout, Duration::from_secs(10));
        assert_eq!(server.body_timeout, Duration::from_secs(10));
        assert_eq!(server.idle_timeout, Duration::from_secs(60));
        assert_eq!(server.max_connections, 10_000);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(server.workers, cores, "workers defaults to one per core");
        assert!(server.tls.is_none());
        assert!(config.admin.is_none());

        let source = &config.sources[0];
        assert_eq!(
            (source.event_id.as_str(), source.event_type.as_str()),
            ("/event/id", "/event/type")
        );
        assert!(source.verify.is_none());

        assert_eq!(config.dedup.ttl, Duration::from_secs(48 * 3600));
        assert_eq!(config.dedup.max_entries, 1_000_000);
        assert_eq!(config.dedup.backend, DedupBackend::Memory);
        assert!(config.rate_limit.per_client.is_none() && config.rate_limit.global.is_none());

        let upstream = &config.upstreams[0];
        assert_eq!(upstream.timeout, Duration::from_secs(10));
        assert_eq!(upstream.max_in_flight, 256);
        assert!(upstream.rate_limit.is_none() && upstream.sign.is_empty());
        assert!(upstream.headers.is_empty() && upstream.redact.is_empty());

        let route = &config.routes[0];
        assert_eq!(
            route.event_types,
            vec![TypePattern::Exact("fulfilment_pending".into())]
        );
        assert_eq!(
            (route.source.as_deref(), route.upstreams.as_slice()),
            (None, &[0][..])
        );
        assert_eq!(config.path, Path::new("/etc/hookgate/config.toml"));
    }

    /// Every key of CONTRACT.md's example (and the extra forms), with non-default values.
    const FULL: &str = r#"
[server]
listen = "0.0.0.0:8443"
max_body_bytes = 2097152
unrouted_status = 404
respond_within = "12s"
shutdown_timeout = "20s"
header_timeout = "5s"
body_timeout = "7s"
idle_timeout = "90s"
max_connections = 500
[server.tls]
cert = "certs/cert.pem"
key = "certs/key.pem"

[admin]
listen = "127.0.0.1:9090"

[[sources]]
name = "firstpromoter"
path = "/webhooks/firstpromoter"
event_id = "/event_id"
event_type = "/event_type"
[sources.verify]
scheme = "token"
secret_env = "FULL_FP_TOKEN"

[[sources]]
name = "basic"
path = "/webhooks/basic"
[sources.verify]
scheme = "basic"
secret = "fp:pa:ss"

[[sources]]
name = "hmac"
path = "/webhooks/hmac"
verify = { scheme = "hmac-sha256", secret = "k", header = "X-Hub-Signature" }

[[sources]]
name = "sw"
path = "/webhooks/sw"
verify = { scheme = "standard-webhooks", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }

[dedup]
ttl = "2d"
max_entries = 5000
backend = "redis"
redis_url_env = "FULL_REDIS_URL"

[rate_limit]
per_client = { per_second = 50, burst = 100 }
global = { per_second = 2000, burst = 4000 }

[upstreams.crm]
url = "https://crm.internal:8443/in?x=1"
sign = { secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2VjcmV0"] }
headers_env = { authorization = "FULL_CRM_AUTH" }

[upstreams.billing]
url = "http://127.0.0.1:3000/firstpromoter"
timeout = "8s"
rate_limit = { per_second = 20, burst = 40 }
max_in_flight = 64
sign = { secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
headers = { "X-Api-Key" = "abc" }
redact = ["/data/promoter/temp_password", "/data/promoter/auth_token"]

[[routes]]
event_type = "fulfilment_pending"
source = "firstpromoter"
match = { "/data/campaign/id" = 41001, "/data/live" = true }
upstream = "billing"

[[routes]]
event_type = ["lead_*", "*_created", "*"]
upstreams = ["crm", "billing"]
"#;

    fn full_env() -> [(&'static str, &'static str); 3] {
        [
            ("FULL_FP_TOKEN", "tok"),
            ("FULL_REDIS_URL", "redis://10.0.0.5:6379/0"),
            ("FULL_CRM_AUTH", "Bearer xyz"),
        ]
    }

    #[test]
    fn full_config_loads_every_key() {
        let dir = std::env::temp_dir().join(format!("hookgate-config-full-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("certs")).expect("temp dir");
        // A real pair: validation parses [server.tls] and checks the key matches.
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a self-signed pair");
        std::fs::write(dir.join("certs/cert.pem"), pair.cert.pem()).expect("write cert");
        std::fs::write(dir.join("certs/key.pem"), pair.signing_key.serialize_pem())
            .expect("write key");
        let env: HashMap<&str, &str> = full_env().into_iter().collect();
        let lookup = |name: &str| {
            env.get(name)
                .map(|v| (*v).to_owned())
                .ok_or(VarError::NotPresent)
        };
        let loaded = Config::from_toml_str_with_env(FULL, &dir.join("config.toml"), &lookup);
        std::fs::remove_dir_all(&dir).expect("clean up");
        let config = loaded.unwrap_or_else(|e| panic!("full config: {e}"));

        let s = &config.server;
        assert_eq!(s.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(
            (s.max_body_bytes, s.unrouted_status.as_u16()),
            (2_097_152, 404)
        );
        assert_eq!(
            [
                s.respond_within,
                s.shutdown_timeout,
                s.header_timeout,
                s.body_timeout,
                s.idle_timeout
            ],
            [12, 20, 5, 7, 90].map(Duration::from_secs)
        );
        assert_eq!(s.max_connections, 500);
        match &s.tls {
            Some(TlsConfig::Files { cert, key }) => {
                assert_eq!(cert, &dir.join("certs/cert.pem"));
                assert_eq!(key, &dir.join("certs/key.pem"));
            }
            other => panic!("tls: {other:?}"),
        }
        let admin = config.admin.as_ref().expect("admin");
        assert_eq!(admin.listen, "127.0.0.1:9090".parse().expect("addr"));

        let names: Vec<_> = config.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["firstpromoter", "basic", "hmac", "sw"]);
        let fp = &config.sources[0];
        assert_eq!(
            (fp.event_id.as_str(), fp.event_type.as_str()),
            ("/event_id", "/event_type")
        );
        match &fp.verify {
            Some(Verify::Token { secret, header }) => {
                assert_eq!(
                    (secret.expose(), header.as_str()),
                    ("tok", "x-hookgate-token")
                );
            }
            other => panic!("token: {other:?}"),
        }
        match &config.sources[1].verify {
            Some(Verify::Basic { user, password }) => {
                assert_eq!((user.expose(), password.expose()), ("fp", "pa:ss"));
            }
            other => panic!("basic: {other:?}"),
        }
        match &config.sources[2].verify {
            Some(Verify::HmacSha256 { secret, header }) => {
                assert_eq!((secret.expose(), header.as_str()), ("k", "x-hub-signature"));
            }
            other => panic!("hmac: {other:?}"),
        }
        assert!(matches!(
            &config.sources[3].verify,
            Some(Verify::StandardWebhooks { secret }) if secret.expose().starts_with("whsec_")
        ));

        assert_eq!(config.dedup.ttl, Duration::from_secs(2 * 86_400));
        assert_eq!(config.dedup.max_entries, 5000);
        match &config.dedup.backend {
            DedupBackend::Redis { url, key_prefix } => {
                assert_eq!(url.expose(), "redis://10.0.0.5:6379/0");
                assert_eq!(key_prefix, "hookgate");
            }
            other => panic!("backend: {other:?}"),
        }
        let per_client = config.rate_limit.per_client.expect("per_client");
        assert_eq!(
            (per_client.per_second.get(), per_client.burst.get()),
            (50, 100)
        );
        let global = config.rate_limit.global.expect("global");
        assert_eq!((global.per_second.get(), global.burst.get()), (2000, 4000));

        // Sorted by name: billing, crm.
        let [billing, crm] = &config.upstreams[..] else {
            panic!("two upstreams: {:?}", config.upstreams)
        };
        assert_eq!(billing.name, "billing");
        assert_eq!(
            billing.url.to_string(),
            "http://127.0.0.1:3000/firstpromoter"
        );
        assert_eq!(billing.timeout, Duration::from_secs(8));
        let limit = billing.rate_limit.expect("upstream rate limit");
        assert_eq!((limit.per_second.get(), limit.burst.get()), (20, 40));
        assert_eq!(billing.max_in_flight, 64);
        assert_eq!(billing.sign.len(), 1);
        assert_eq!(billing.headers.len(), 1);
        assert_eq!(billing.headers[0].0.as_str(), "x-api-key");
        assert_eq!(billing.headers[0].1.as_bytes(), b"abc");
        assert!(billing.headers[0].1.is_sensitive());
        assert_eq!(
            billing.redact,
            ["/data/promoter/temp_password", "/data/promoter/auth_token"]
        );
        assert_eq!(crm.name, "crm");
        assert_eq!(crm.url.scheme_str(), Some("https"));
        assert_eq!(crm.sign.len(), 2);
        assert_eq!(crm.headers[0].0.as_str(), "authorization");
        assert_eq!(crm.headers[0].1.as_bytes(), b"Bearer xyz");

        let [first, second] = &config.routes[..] else {
            panic!("two routes")
        };
        assert_eq!(first.index, 0);
        assert_eq!(first.source.as_deref(), Some("firstpromoter"));
        assert_eq!(
            first.matches,
            vec![
                ("/data/campaign/id".to_owned(), serde_json::json!(41001)),
                ("/data/live".to_owned(), serde_json::json!(true)),
            ]
        );
        assert_eq!(first.upstreams, [0]);
        assert_eq!(second.index, 1);
        assert_eq!(
            second.event_types,
            vec![
                TypePattern::Glob(vec!["lead_".into(), "".into()]),
                TypePattern::Glob(vec!["".into(), "_created".into()]),
                TypePattern::Any,
            ]
        );
        assert_eq!(second.upstreams, [1, 0], "fan-out keeps the order given");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = MINIMAL.replace("listen = ", "max_conections = 5\nlisten = ");
        let err = load(&text).expect_err("unknown key");
        assert_eq!(err.problems.len(), 1);
        let problem = &err.problems[0];
        assert_eq!(problem.key, "server.max_conections");
        assert_eq!(problem.line, Some(3));
        assert!(
            problem.reason.contains("unknown field `max_conections`"),
            "{problem}"
        );
        assert!(
            err.to_string().starts_with(
                "/etc/hookgate/config.toml: server.max_conections (line 3): unknown field"
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_type_names_the_key_inside_an_array_of_tables() {
        let text =
            format!("{MINIMAL}\n[[routes]]\nevent_type = \"x\"\nupstreams = [\"billing\", 5]\n");
        let err = load(&text).expect_err("wrong type");
        let problem = &err.problems[0];
        assert_eq!(problem.key, "routes[1].upstreams[1]");
        assert_eq!(problem.line, Some(18));
    }

    #[test]
    fn missing_key_names_its_table_in_an_array_of_tables() {
        let err = load(&with("[[routes]]\nupstream = \"billing\"")).expect_err("no event_type");
        let problem = &err.problems[0];
        assert_eq!(problem.key, "routes[1]");
        assert_eq!(problem.line, Some(16));
        assert_eq!(problem.reason, "missing field `event_type`");
    }

    #[test]
    fn bad_duration_is_a_toml_problem_with_its_line() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nbody_timeout = \"10x\"",
        );
        let err = load(&text).expect_err("bad duration");
        assert_eq!(err.problems[0].key, "server.body_timeout");
        assert_eq!(err.problems[0].line, Some(4));
        assert!(err.problems[0].reason.contains("invalid duration \"10x\""));
    }

    #[test]
    fn syntax_error_has_a_line_and_the_toml_key() {
        let err = load("[server]\nlisten = \"x\n").expect_err("unterminated string");
        assert_eq!(err.problems[0].key, "<toml>");
        assert_eq!(err.problems[0].line, Some(2));
    }

    #[test]
    fn unreadable_file_names_the_file_and_the_io_error() {
        let path = Path::new("/nonexistent/hookgate/config.toml");
        let err = Config::load(path).expect_err("missing file");
        let text = err.to_string();
        assert!(
            text.starts_with("/nonexistent/hookgate/config.toml: cannot read the config file: "),
            "{text}"
        );
        assert!(text.contains("No such file"), "{text}");
    }

    #[test]
    fn key_paths_quote_what_toml_would_quote() {
        let path = KeyPath::root()
            .key("routes")
            .index(2)
            .key("match")
            .key("/data/id");
        assert_eq!(path.to_string(), "routes[2].match.\"/data/id\"");
        assert_eq!(
            KeyPath::root()
                .key("upstreams")
                .key("billing")
                .key("url")
                .to_string(),
            "upstreams.billing.url"
        );
    }

    #[test]
    fn missing_keys_are_located_at_their_table() {
        let locator = Locator::new(MINIMAL);
        let path = KeyPath::root().key("routes").index(0).key("source");
        assert_eq!(locator.line_of(&path), Some(12));
        assert_eq!(locator.line_of(&KeyPath::root().key("admin")), None);
    }
}
