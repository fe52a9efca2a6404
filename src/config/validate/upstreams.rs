//! `[upstreams.NAME]`: URL, limits, signing secrets, extra headers, redaction, TLS files.

use std::collections::BTreeMap;
use std::path::PathBuf;

use http::{HeaderName, HeaderValue, Uri};

use super::{KeyPath, Validator};
use crate::config::raw::{RawSign, RawUpstream};
use crate::config::{defaults, limits, ClientCert, Secret, Upstream};
use crate::server::tls;

/// Headers hookgate sets (or strips) itself when forwarding, so configuring them would be
/// ambiguous at best. `proxy-*` and `hookgate-*` are refused by prefix.
const RESERVED_HEADERS: [&str; 10] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
];

/// Signature headers that `sign` writes; refused in `headers` only when `sign` is set.
const SIGNATURE_HEADERS: [&str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];

impl Validator<'_> {
    pub(super) fn upstreams(&mut self, raw: BTreeMap<String, RawUpstream>) -> Vec<Upstream> {
        raw.into_iter()
            .map(|(name, upstream)| {
                let key = KeyPath::root().key("upstreams").key(name.as_str());
                if name.is_empty() {
                    self.problem(&key, "upstream name must not be empty");
                }
                self.upstream(&key, name, upstream)
            })
            .collect()
    }

    fn upstream(&mut self, key: &KeyPath, name: String, raw: RawUpstream) -> Upstream {
        let url = self.upstream_url(&key.key("url"), &name, &raw.url);
        let max_in_flight = raw
            .max_in_flight
            .unwrap_or(defaults::UPSTREAM_MAX_IN_FLIGHT as u64);
        if max_in_flight == 0 {
            self.problem(&key.key("max_in_flight"), "must be at least 1");
        }
        let sign = raw
            .sign
            .map(|sign| self.sign(&key.key("sign"), sign))
            .unwrap_or_default();
        let headers = self.headers(key, raw.headers, raw.headers_env, !sign.is_empty());
        for (i, pointer) in raw.redact.iter().enumerate() {
            let pointer_key = key.key("redact").index(i);
            if pointer.is_empty() {
                self.problem(
                    &pointer_key,
                    "the empty pointer would remove the whole body",
                );
            } else {
                self.pointer(&pointer_key, pointer);
            }
        }
        let https = url.scheme_str() == Some("https");
        let ca = raw
            .ca
            .map(|file| self.upstream_ca(&key.key("ca"), &file, https));
        let client_cert = self.client_cert(key, raw.client_cert, raw.client_key, https);
        Upstream {
            name,
            url,
            timeout: self.duration(
                &key.key("timeout"),
                raw.timeout,
                defaults::UPSTREAM_TIMEOUT,
                limits::MAX_REQUEST_DURATION,
            ),
            rate_limit: raw
                .rate_limit
                .and_then(|quota| self.quota(&key.key("rate_limit"), quota)),
            max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
            sign,
            headers,
            redact: raw.redact,
            ca,
            client_cert,
        }
    }

    /// `ca`: resolved against the config's directory and parsed now, so that `hookgate check`
    /// catches a wrong path or a file that is not a CA certificate.
    fn upstream_ca(&mut self, key: &KeyPath, file: &str, https: bool) -> PathBuf {
        let path = self.dir.join(file);
        if !https {
            self.problem(key, "is only used with an https:// url");
        } else if let Err(error) = tls::read_roots(&path) {
            self.problem(key, error.to_string());
        }
        path
    }

    /// `client_cert` + `client_key`: both or neither; parsed now and checked to match.
    fn client_cert(
        &mut self,
        upstream: &KeyPath,
        cert: Option<String>,
        key: Option<String>,
        https: bool,
    ) -> Option<ClientCert> {
        let (cert, key) = match (cert, key) {
            (None, None) => return None,
            (Some(cert), Some(key)) => (self.dir.join(cert), self.dir.join(key)),
            (Some(_), None) => {
                self.problem(
                    &upstream.key("client_key"),
                    "is required with `client_cert`",
                );
                return None;
            }
            (None, Some(_)) => {
                self.problem(
                    &upstream.key("client_cert"),
                    "is required with `client_key`",
                );
                return None;
            }
        };
        if !https {
            self.problem(
                &upstream.key("client_cert"),
                "is only used with an https:// url",
            );
        } else {
            let (cert_at, key_at) = (upstream.key("client_cert"), upstream.key("client_key"));
            self.certified_pair(&cert_at, &key_at, &cert, &key);
        }
        Some(ClientCert { cert, key })
    }

    fn upstream_url(&mut self, key: &KeyPath, name: &str, text: &str) -> Uri {
        let uri = match text.parse::<Uri>() {
            Ok(uri) => uri,
            Err(err) => {
                self.problem(
                    key,
                    format!("upstream {name:?}: invalid URL {text:?}: {err}"),
                );
                return Uri::default();
            }
        };
        let wrong = match (uri.scheme_str(), uri.host()) {
            (None, _) => Some("must be an absolute http:// or https:// URL".to_owned()),
            (Some("http" | "https"), None | Some("")) => Some("has no host".to_owned()),
            (Some("http" | "https"), Some(_)) => None,
            (Some(scheme), _) => Some(format!(
                "scheme {scheme:?} is not supported: use http or https"
            )),
        };
        if let Some(wrong) = wrong {
            self.problem(key, format!("upstream {name:?}: URL {text:?} {wrong}"));
        }
        uri
    }

    fn sign(&mut self, key: &KeyPath, raw: RawSign) -> Vec<Secret> {
        let given = [
            raw.secret.is_some(),
            raw.secret_env.is_some(),
            raw.secrets.is_some(),
            raw.secrets_env.is_some(),
        ];
        if given.iter().filter(|&&set| set).count() != 1 {
            self.problem(
                key,
                "needs exactly one of `secret`, `secret_env`, `secrets` or `secrets_env`",
            );
            return Vec::new();
        }
        let mut secrets: Vec<(String, KeyPath)> = Vec::new();
        if let Some(secret) = raw.secret {
            secrets.push((secret, key.key("secret")));
        }
        if let Some(var) = raw.secret_env {
            let env_key = key.key("secret_env");
            secrets.extend(self.env_var(&env_key, &var).map(|value| (value, env_key)));
        }
        for (list, name) in [(raw.secrets, "secrets"), (raw.secrets_env, "secrets_env")] {
            let Some(list) = list else { continue };
            if list.is_empty() {
                self.problem(&key.key(name), "must not be empty");
            }
            for (i, item) in list.into_iter().enumerate() {
                let item_key = key.key(name).index(i);
                if name == "secrets" {
                    secrets.push((item, item_key));
                } else if let Some(value) = self.env_var(&item_key, &item) {
                    secrets.push((value, item_key));
                }
            }
        }
        secrets
            .into_iter()
            .map(|(value, secret_key)| {
                let secret = Secret(value);
                self.webhook_secret(&secret_key, &secret);
                secret
            })
            .collect()
    }

    fn headers(
        &mut self,
        upstream: &KeyPath,
        literal: BTreeMap<String, String>,
        from_env: BTreeMap<String, String>,
        signed: bool,
    ) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let entries = literal
            .into_iter()
            .map(|(name, value)| ("headers", name, value))
            .chain(
                from_env
                    .into_iter()
                    .map(|(name, var)| ("headers_env", name, var)),
            );
        for (table, name, given) in entries {
            let key = upstream.key(table).key(name.as_str());
            let Some(header) = self.header_name(&key, &name) else {
                continue;
            };
            let reserved = RESERVED_HEADERS.contains(&header.as_str())
                || header.as_str().starts_with("proxy-")
                || header.as_str().starts_with("hookgate-")
                || (signed && SIGNATURE_HEADERS.contains(&header.as_str()));
            if reserved {
                self.problem(
                    &key,
                    format!("{:?} is set by hookgate itself", header.as_str()),
                );
                continue;
            }
            if headers.iter().any(|(existing, _)| *existing == header) {
                self.problem(&key, format!("header {:?} is set twice", header.as_str()));
                continue;
            }
            let value = if table == "headers_env" {
                match self.env_var(&key, &given) {
                    Some(value) => value,
                    None => continue,
                }
            } else {
                given
            };
            match HeaderValue::from_str(&value) {
                Ok(mut value) => {
                    // Values are often credentials: keep them out of Debug output and HPACK tables.
                    value.set_sensitive(true);
                    headers.push((header, value));
                }
                // Never echo the value: it may be a credential.
                Err(_) => self.problem(
                    &key,
                    "value is not a valid header value (visible ASCII, spaces and tabs only)",
                ),
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::{edit, load, load_with_env, only_problem, problems, with};

    #[test]
    fn upstream_url_must_be_http_or_https() {
        let p = only_problem(
            &edit("http://127.0.0.1:3000/hook", "ftp://x"),
            "upstreams.billing.url",
        );
        assert_eq!(p.reason, "upstream \"billing\": URL \"ftp://x\" scheme \"ftp\" is not supported: use http or https");
        assert_eq!(p.line, Some(10));
    }

    #[test]
    fn upstream_url_must_parse() {
        let p = only_problem(
            &edit("http://127.0.0.1:3000/hook", "not a url"),
            "upstreams.billing.url",
        );
        assert!(
            p.reason
                .starts_with("upstream \"billing\": invalid URL \"not a url\""),
            "{p}"
        );
        let p = only_problem(
            &edit("http://127.0.0.1:3000/hook", "/just/a/path"),
            "upstreams.billing.url",
        );
        assert!(
            p.reason
                .ends_with("must be an absolute http:// or https:// URL"),
            "{p}"
        );
    }

    #[test]
    fn redacting_the_whole_body_is_refused() {
        let text = with("[upstreams.b2]\nurl = \"http://a\"\nredact = [\"\"]");
        let p = only_problem(&text, "upstreams.b2.redact[0]");
        assert!(p.reason.contains("whole body"), "{p}");
    }

    #[test]
    fn header_values_are_checked_without_echoing_them() {
        let text = edit(
            "url = \"http://127.0.0.1:3000/hook\"",
            "url = \"http://127.0.0.1:3000/hook\"\nheaders = { \"x-api-key\" = \"s3cr\\u0001t\" }",
        );
        let err = load(&text).expect_err("control character");
        assert_eq!(err.problems[0].key, "upstreams.billing.headers.x-api-key");
        assert!(err.problems[0]
            .reason
            .starts_with("value is not a valid header value"));
        assert!(!err.to_string().contains("s3cr"), "{err}");
    }

    #[test]
    fn headers_hookgate_sets_cannot_be_configured() {
        let text = edit("url = \"http://127.0.0.1:3000/hook\"", "url = \"http://127.0.0.1:3000/hook\"\nheaders = { Host = \"a\", \"hookgate-event-id\" = \"b\" }");
        let problems = problems(&text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "upstreams.billing.headers.Host",
                "upstreams.billing.headers.hookgate-event-id"
            ]
        );
        assert_eq!(problems[0].reason, "\"host\" is set by hookgate itself");
    }

    #[test]
    fn a_header_set_twice_is_refused() {
        let text = edit("url = \"http://127.0.0.1:3000/hook\"", "url = \"http://127.0.0.1:3000/hook\"\nheaders = { \"X-Key\" = \"a\" }\nheaders_env = { \"x-key\" = \"K\" }");
        let err = load_with_env(&text, &[("K", "b")]).expect_err("header twice");
        assert_eq!(err.problems[0].key, "upstreams.billing.headers_env.x-key");
        assert_eq!(err.problems[0].reason, "header \"x-key\" is set twice");
    }

    #[test]
    fn sign_secrets_must_be_whsec_base64() {
        let text = edit("url = \"http://127.0.0.1:3000/hook\"", "url = \"http://127.0.0.1:3000/hook\"\nsign = { secrets = [\"whsec_c2VjcmV0\", \"whsec_not base64!\"] }");
        let p = only_problem(&text, "upstreams.billing.sign.secrets[1]");
        assert!(
            p.reason
                .starts_with("must be \"whsec_\" followed by base64"),
            "{p}"
        );
        let text = edit("url = \"http://127.0.0.1:3000/hook\"", "url = \"http://127.0.0.1:3000/hook\"\nsign = { secret = \"whsec_c2VjcmV0\", secrets = [] }");
        only_problem(&text, "upstreams.billing.sign");
    }

    /// A temporary directory with a CA certificate, a client certificate and key it issued,
    /// and a key of another client; removed on drop.
    struct TlsFiles(std::path::PathBuf);

    impl TlsFiles {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "hookgate-upstream-tls-{name}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let ca_key = rcgen::KeyPair::generate().expect("ca key");
            let mut params = rcgen::CertificateParams::new(Vec::new()).expect("ca params");
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).expect("ca");
            let client_key = rcgen::KeyPair::generate().expect("client key");
            let client = rcgen::CertificateParams::new(vec!["hookgate".to_owned()])
                .expect("client params")
                .signed_by(&client_key, &ca)
                .expect("client cert");
            let other_key = rcgen::KeyPair::generate().expect("other key");
            for (file, pem) in [
                ("ca.pem", ca.pem()),
                ("client.pem", client.pem()),
                ("client.key", client_key.serialize_pem()),
                ("other.key", other_key.serialize_pem()),
                ("empty.pem", String::new()),
            ] {
                std::fs::write(dir.join(file), pem).expect("write pem");
            }
            Self(dir)
        }

        fn path(&self, file: &str) -> String {
            self.0.join(file).display().to_string()
        }

        fn upstream(&self, keys: &str) -> String {
            edit(
                "url = \"http://127.0.0.1:3000/hook\"",
                &format!("url = \"https://127.0.0.1:3000/hook\"\n{keys}"),
            )
        }
    }

    impl Drop for TlsFiles {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn upstream_tls_files_load_when_valid() {
        let files = TlsFiles::new("valid");
        let text = files.upstream(&format!(
            "ca = {:?}\nclient_cert = {:?}\nclient_key = {:?}",
            files.path("ca.pem"),
            files.path("client.pem"),
            files.path("client.key")
        ));
        let config = load(&text).unwrap_or_else(|e| panic!("{e}"));
        let upstream = &config.upstreams[0];
        assert_eq!(
            upstream.ca.as_deref(),
            Some(files.0.join("ca.pem").as_path())
        );
        let client = upstream.client_cert.as_ref().expect("client cert");
        assert_eq!(client.key, files.0.join("client.key"));
    }

    #[test]
    fn upstream_ca_resolves_against_the_config_dir_and_must_parse() {
        let p = only_problem(
            &edit(
                "url = \"http://127.0.0.1:3000/hook\"",
                "url = \"https://a\"\nca = \"certs/ca.pem\"",
            ),
            "upstreams.billing.ca",
        );
        assert!(
            p.reason
                .starts_with("cannot read /etc/hookgate/certs/ca.pem: "),
            "{p}"
        );
        let files = TlsFiles::new("empty");
        let text = files.upstream(&format!("ca = {:?}", files.path("empty.pem")));
        let p = only_problem(&text, "upstreams.billing.ca");
        assert_eq!(
            p.reason,
            format!(
                "{} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
                files.path("empty.pem")
            )
        );
    }

    #[test]
    fn upstream_tls_keys_need_an_https_url() {
        let text = with("[upstreams.b2]\nurl = \"http://a\"\nca = \"/dev/null\"");
        let p = only_problem(&text, "upstreams.b2.ca");
        assert_eq!(p.reason, "is only used with an https:// url");
    }

    #[test]
    fn client_cert_and_client_key_go_together_and_must_match() {
        let files = TlsFiles::new("pair");
        let text = files.upstream(&format!("client_cert = {:?}", files.path("client.pem")));
        let p = only_problem(&text, "upstreams.billing.client_key");
        assert_eq!(p.reason, "is required with `client_cert`");
        let text = files.upstream(&format!("client_key = {:?}", files.path("client.key")));
        let p = only_problem(&text, "upstreams.billing.client_cert");
        assert_eq!(p.reason, "is required with `client_key`");

        let text = files.upstream(&format!(
            "client_cert = {:?}\nclient_key = {:?}",
            files.path("client.pem"),
            files.path("other.key")
        ));
        let p = only_problem(&text, "upstreams.billing.client_key");
        assert_eq!(
            p.reason,
            format!(
                "the private key in {} does not match the certificate in {}",
                files.path("other.key"),
                files.path("client.pem")
            )
        );
        let text = files.upstream(&format!(
            "client_cert = {:?}\nclient_key = {:?}",
            files.path("client.key"),
            files.path("client.key")
        ));
        let p = only_problem(&text, "upstreams.billing.client_cert");
        assert!(p.reason.contains("holds no certificate"), "{p}");
    }
}
