//! `[server]` (with `[server.tls]`), `[admin]`, `[dedup]` and `[rate_limit]`.

use std::net::SocketAddr;
use std::path::PathBuf;

use http::StatusCode;

use super::{placeholder_addr, KeyPath, Validator};
use crate::config::raw::{RawAdmin, RawDedup, RawRateLimit, RawServer, RawTls};
use crate::config::{
    defaults, limits, AdminConfig, Cidr, DedupBackend, DedupConfig, RateLimitConfig, Secret,
    ServerConfig, TlsConfig,
};

impl Validator<'_> {
    pub(super) fn server(&mut self, raw: RawServer) -> ServerConfig {
        let key = KeyPath::root().key("server");
        let listen = match raw.listen {
            Some(listen) => self.socket_addr(&key.key("listen"), &listen),
            None => {
                self.problem(
                    &key.key("listen"),
                    "is required, e.g. listen = \"0.0.0.0:8443\" under [server]",
                );
                placeholder_addr()
            }
        };
        let max_body_bytes = raw
            .max_body_bytes
            .unwrap_or(defaults::MAX_BODY_BYTES as u64);
        if !(1..=limits::MAX_BODY_BYTES).contains(&max_body_bytes) {
            self.problem(
                &key.key("max_body_bytes"),
                format!(
                    "must be between 1 and {} (64 MiB), not {max_body_bytes}",
                    limits::MAX_BODY_BYTES
                ),
            );
        }
        let unrouted_status =
            self.unrouted_status(&key.key("unrouted_status"), raw.unrouted_status);
        let max_request = limits::MAX_REQUEST_DURATION;
        let max_connections = raw
            .max_connections
            .unwrap_or(defaults::MAX_CONNECTIONS as u64);
        if max_connections == 0 {
            self.problem(&key.key("max_connections"), "must be at least 1");
        }
        let workers = raw.workers.unwrap_or(0);
        if workers > limits::MAX_WORKERS {
            self.problem(
                &key.key("workers"),
                format!(
                    "must be between 0 (one per core) and {}, not {workers}",
                    limits::MAX_WORKERS
                ),
            );
        }
        ServerConfig {
            listen,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            unrouted_status,
            respond_within: self.duration(
                &key.key("respond_within"),
                raw.respond_within,
                defaults::RESPOND_WITHIN,
                max_request,
            ),
            shutdown_timeout: self.duration(
                &key.key("shutdown_timeout"),
                raw.shutdown_timeout,
                defaults::SHUTDOWN_TIMEOUT,
                max_request,
            ),
            header_timeout: self.duration(
                &key.key("header_timeout"),
                raw.header_timeout,
                defaults::HEADER_TIMEOUT,
                max_request,
            ),
            body_timeout: self.duration(
                &key.key("body_timeout"),
                raw.body_timeout,
                defaults::BODY_TIMEOUT,
                max_request,
            ),
            idle_timeout: self.duration(
                &key.key("idle_timeout"),
                raw.idle_timeout,
                defaults::IDLE_TIMEOUT,
                limits::MAX_IDLE_TIMEOUT,
            ),
            max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
            // Past MAX_WORKERS is a problem reported above; 0 means the default.
            workers: usize::try_from(workers)
                .ok()
                .filter(|&workers| workers > 0)
                .unwrap_or_else(defaults::workers),
            tls: raw.tls.and_then(|tls| self.tls(&key.key("tls"), tls)),
        }
    }

    fn unrouted_status(&mut self, key: &KeyPath, raw: Option<u16>) -> StatusCode {
        let code = raw.unwrap_or(defaults::UNROUTED_STATUS);
        if code == 200 {
            self.problem(
                key,
                "must never be 200: the sender would take an unrouted event as fulfilled; \
                 use 202 (the default) to leave it pending, or a 4xx/5xx to have it retried",
            );
        } else if !(201..=299).contains(&code) && !(400..=599).contains(&code) {
            self.problem(key, format!("must be 201–299 or 400–599, not {code}"));
        }
        StatusCode::from_u16(code).unwrap_or(StatusCode::ACCEPTED)
    }

    fn tls(&mut self, key: &KeyPath, raw: RawTls) -> Option<TlsConfig> {
        match (raw.cert, raw.key, raw.self_signed.unwrap_or(false)) {
            (None, None, true) => Some(TlsConfig::SelfSigned),
            (Some(_), _, true) | (_, Some(_), true) => {
                self.problem(
                    key,
                    "set either `self_signed = true` or `cert` and `key`, not both",
                );
                None
            }
            (Some(cert), Some(tls_key), false) => {
                let cert = self.existing_file(&key.key("cert"), &cert);
                let tls_key = self.existing_file(&key.key("key"), &tls_key);
                // Only once both are there: a missing file is a problem of its own.
                if cert.is_file() && tls_key.is_file() {
                    self.certified_pair(&key.key("cert"), &key.key("key"), &cert, &tls_key);
                }
                Some(TlsConfig::Files { cert, key: tls_key })
            }
            (Some(_), None, false) => {
                self.problem(&key.key("key"), "is required with `cert`");
                None
            }
            (None, Some(_), false) => {
                self.problem(&key.key("cert"), "is required with `key`");
                None
            }
            (None, None, false) => {
                self.problem(
                    key,
                    "needs `cert` and `key` (or `self_signed = true` for development); \
                     omit [server.tls] to serve plain HTTP",
                );
                None
            }
        }
    }

    /// Resolves `file` against the config's directory and checks it is there now, so that
    /// `hookgate check` catches a wrong path before the server tries to load it.
    fn existing_file(&mut self, key: &KeyPath, file: &str) -> PathBuf {
        let path = self.dir.join(file);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                self.problem(key, format!("{} is a directory", path.display()));
            }
            Ok(_) => {}
            Err(err) => self.problem(key, format!("cannot use {}: {err}", path.display())),
        }
        path
    }

    pub(super) fn admin(&mut self, raw: RawAdmin, gateway: SocketAddr) -> AdminConfig {
        let key = KeyPath::root().key("admin").key("listen");
        let listen = self.socket_addr(&key, &raw.listen);
        let same_ip = listen.ip() == gateway.ip()
            || listen.ip().is_unspecified()
            || gateway.ip().is_unspecified();
        if listen.port() != 0 && listen.port() == gateway.port() && same_ip {
            self.problem(&key, "conflicts with server.listen (same port)");
        }
        AdminConfig { listen }
    }

    fn socket_addr(&mut self, key: &KeyPath, text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            self.problem(
                key,
                format!(
                    "invalid address {text:?}: expected IP:port such as \"0.0.0.0:8443\" \
                     (host names are not resolved)"
                ),
            );
            placeholder_addr()
        })
    }

    pub(super) fn dedup(&mut self, raw: RawDedup) -> DedupConfig {
        let key = KeyPath::root().key("dedup");
        let ttl = self.duration(
            &key.key("ttl"),
            raw.ttl,
            defaults::DEDUP_TTL,
            limits::MAX_DEDUP_TTL,
        );
        let max_entries = raw.max_entries.unwrap_or(defaults::DEDUP_MAX_ENTRIES);
        if max_entries == 0 {
            self.problem(&key.key("max_entries"), "must be at least 1");
        }
        let backend = match raw.backend.as_deref().unwrap_or("memory") {
            "memory" => {
                for (set, name) in [
                    (&raw.redis_url, "redis_url"),
                    (&raw.redis_url_env, "redis_url_env"),
                    (&raw.key_prefix, "key_prefix"),
                ] {
                    if set.is_some() {
                        self.problem(&key.key(name), "is only used with backend = \"redis\"");
                    }
                }
                DedupBackend::Memory
            }
            "redis" => {
                match self.literal_or_env(&key, "redis_url", raw.redis_url, raw.redis_url_env) {
                    Some((url, url_key)) => {
                        let schemes = ["redis://", "redis+unix://", "unix://"];
                        if url.starts_with("rediss://") {
                            self.problem(&url_key, "TLS to Redis (rediss://) is not supported yet; use redis:// on a private network or a local TLS tunnel");
                        } else if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
                            // The URL may hold a password: say what is expected, not what was given.
                            self.problem(&url_key, "must start with redis:// or unix://");
                        }
                        let key_prefix = raw
                            .key_prefix
                            .unwrap_or_else(|| defaults::REDIS_KEY_PREFIX.to_owned());
                        if key_prefix.is_empty()
                            || !key_prefix.bytes().all(|b| b.is_ascii_graphic())
                        {
                            self.problem(
                                &key.key("key_prefix"),
                                "must be non-empty printable ASCII without spaces",
                            );
                        }
                        DedupBackend::Redis {
                            url: Secret(url),
                            key_prefix,
                        }
                    }
                    None => DedupBackend::Memory,
                }
            }
            other => {
                self.problem(
                    &key.key("backend"),
                    format!("unknown backend {other:?}: expected \"memory\" or \"redis\""),
                );
                DedupBackend::Memory
            }
        };
        DedupConfig {
            ttl,
            max_entries,
            backend,
        }
    }

    pub(super) fn rate_limit(&mut self, raw: RawRateLimit) -> RateLimitConfig {
        let key = KeyPath::root().key("rate_limit");
        let per_client = raw
            .per_client
            .and_then(|q| self.quota(&key.key("per_client"), q));
        let trusted_key = key.key("trusted_proxies");
        // The client's address is only looked up for `per_client`; trusting proxies for
        // nothing would suggest a protection that is not there.
        if raw.per_client.is_none() && !raw.trusted_proxies.is_empty() {
            self.problem(
                &trusted_key,
                "is only used with `per_client` (it decides which address is the client)",
            );
        }
        let mut trusted_proxies = Vec::with_capacity(raw.trusted_proxies.len());
        for (index, text) in raw.trusted_proxies.iter().enumerate() {
            match text.parse::<Cidr>() {
                // A /0 would let every peer name its own client address in X-Forwarded-For,
                // and so choose its own per-client bucket.
                Ok(cidr) if cidr.prefix() == 0 => self.problem(
                    &trusted_key.index(index),
                    format!(
                        "{text:?} trusts every address, so any client could pick its own \
                         rate-limit key with X-Forwarded-For; list the proxies' networks"
                    ),
                ),
                Ok(cidr) => trusted_proxies.push(cidr),
                Err(error) => self.problem(&trusted_key.index(index), error.to_string()),
            }
        }
        RateLimitConfig {
            per_client,
            global: raw.global.and_then(|q| self.quota(&key.key("global"), q)),
            trusted_proxies,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::{edit, load, only_problem, with};

    #[test]
    fn unrouted_status_200_is_refused_with_the_reason() {
        let text = edit(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nunrouted_status = 200",
        );
        let p = only_problem(&text, "server.unrouted_status");
        assert!(
            p.reason.starts_with(
                "must never be 200: the sender would take an unrouted event as fulfilled"
            ),
            "{p}"
        );
        assert_eq!(p.line, Some(4));
    }

    #[test]
    fn unrouted_status_outside_2xx_4xx_5xx_is_refused() {
        let text = edit(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nunrouted_status = 302",
        );
        let p = only_problem(&text, "server.unrouted_status");
        assert_eq!(p.reason, "must be 201–299 or 400–599, not 302");
    }

    #[test]
    fn tls_needs_cert_and_key_or_self_signed() {
        let p = only_problem(
            &with("[server.tls]\ncert = \"c.pem\"\nself_signed = true"),
            "server.tls",
        );
        assert_eq!(
            p.reason,
            "set either `self_signed = true` or `cert` and `key`, not both"
        );
        let p = only_problem(
            &with("[server.tls]\ncert = \"/dev/null\""),
            "server.tls.key",
        );
        assert_eq!(p.reason, "is required with `cert`");
        let config = load(&with("[server.tls]\nself_signed = true")).expect("self-signed");
        assert!(matches!(
            config.server.tls,
            Some(crate::config::TlsConfig::SelfSigned)
        ));
    }

    #[test]
    fn tls_files_resolve_against_the_config_dir_and_must_exist() {
        let p = only_problem(
            &with("[server.tls]\ncert = \"certs/missing.pem\"\nkey = \"/dev/null\""),
            "server.tls.cert",
        );
        assert!(
            p.reason
                .starts_with("cannot use /etc/hookgate/certs/missing.pem: "),
            "{p}"
        );
    }

    #[test]
    fn listen_is_required_and_must_be_ip_and_port() {
        let p = only_problem(
            &edit("listen = \"127.0.0.1:8080\"", "listen = \"localhost:8080\""),
            "server.listen",
        );
        assert!(p.reason.contains("expected IP:port"), "{p}");
        let p = only_problem(&edit("listen = \"127.0.0.1:8080\"", ""), "server.listen");
        assert!(p.reason.starts_with("is required"), "{p}");
        assert_eq!(p.line, Some(2), "reported at [server]");
    }

    #[test]
    fn admin_must_not_share_the_gateway_port() {
        let p = only_problem(&with("[admin]\nlisten = \"0.0.0.0:8080\""), "admin.listen");
        assert_eq!(p.reason, "conflicts with server.listen (same port)");
    }

    #[test]
    fn redis_backend_needs_a_redis_url() {
        let p = only_problem(&with("[dedup]\nbackend = \"redis\""), "dedup");
        assert_eq!(p.reason, "`redis_url` or `redis_url_env` is required");
        let p = only_problem(
            &with("[dedup]\nbackend = \"redis\"\nredis_url = \"http://pw@r\""),
            "dedup.redis_url",
        );
        assert_eq!(p.reason, "must start with redis:// or unix://");
    }

    #[test]
    fn trusted_proxies_are_networks() {
        let config = load(&with(
            "[rate_limit]\nper_client = { per_second = 5, burst = 10 }\n\
             trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1/32\", \"::1/128\", \"192.0.2.7\"]",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let trusted: Vec<String> = config
            .rate_limit
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            trusted,
            ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "192.0.2.7/32"]
        );
    }

    #[test]
    fn a_bad_trusted_proxy_is_named_by_its_index_and_line() {
        let text = with(
            "[rate_limit]\nper_client = { per_second = 5, burst = 10 }\n\
             trusted_proxies = [\"10.0.0.0/8\", \"10.1.2.3/8\"]",
        );
        let p = only_problem(&text, "rate_limit.trusted_proxies[1]");
        assert_eq!(
            p.reason,
            "invalid network \"10.1.2.3/8\": host bits are set; write \"10.0.0.0/8\" for \
             the network, or \"10.1.2.3\" for one address"
        );
        assert!(p.line.is_some(), "{p}");
        let p = only_problem(
            &with(
                "[rate_limit]\nper_client = { per_second = 5, burst = 10 }\n\
                 trusted_proxies = [\"proxy.internal\"]",
            ),
            "rate_limit.trusted_proxies[0]",
        );
        assert!(p.reason.contains("expected an IP address or CIDR"), "{p}");
    }

    #[test]
    fn trusting_every_address_is_refused() {
        let p = only_problem(
            &with(
                "[rate_limit]\nper_client = { per_second = 5, burst = 10 }\n\
                 trusted_proxies = [\"::/0\"]",
            ),
            "rate_limit.trusted_proxies[0]",
        );
        assert!(p.reason.starts_with("\"::/0\" trusts every address"), "{p}");
    }

    #[test]
    fn trusted_proxies_need_a_per_client_limit() {
        let p = only_problem(
            &with(
                "[rate_limit]\nglobal = { per_second = 5, burst = 10 }\n\
                 trusted_proxies = [\"10.0.0.0/8\"]",
            ),
            "rate_limit.trusted_proxies",
        );
        assert!(
            p.reason.starts_with("is only used with `per_client`"),
            "{p}"
        );
    }

    #[test]
    fn redis_url_with_the_memory_backend_is_refused() {
        let p = only_problem(
            &with("[dedup]\nredis_url = \"redis://r\""),
            "dedup.redis_url",
        );
        assert_eq!(p.reason, "is only used with backend = \"redis\"");
        let p = only_problem(&with("[dedup]\nbackend = \"sqlite\""), "dedup.backend");
        assert!(p.reason.starts_with("unknown backend \"sqlite\""), "{p}");
    }
}
