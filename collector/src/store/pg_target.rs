//! Where a PostgreSQL store is and how it is reached: the URL (or libpq `key=value` string)
//! with libpq's TLS settings, `sslmode` and `sslrootcert`, which tokio-postgres does not
//! read itself (it knows no `verify-full`).
//!
//! TLS is `verify-full` unless the URL says `sslmode=disable`: the server's certificate
//! must chain to `sslrootcert` (a PEM file, or `system` for the machine's store, the
//! default) and name the host connected to. The half-way modes (`allow`, `prefer`,
//! `require`, `verify-ca`) are refused by name: each lets a machine in the middle read or
//! change the clinics' data. A Unix socket carries no TLS (as with libpq).

use std::sync::Arc;

use tokio_postgres::config::{Host, SslMode};

use super::StoreError;

/// `sslrootcert=system`: the machine's certificate store.
const SYSTEM_ROOTS: &str = "system";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// `sslmode=disable`, or every host is a Unix socket.
    Off,
    /// `verify-full` against these roots (`system` or a PEM file).
    VerifyFull { roots: String },
}

pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
    /// The URL fit to show: server, user and database, never the password.
    pub shown: String,
}

/// The spec without `sslmode` and `sslrootcert`, and their values. The rest is kept byte
/// for byte (tokio-postgres parses it: several hosts, percent-encoding).
fn split_tls(spec: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut root) = (None, None);
    let mut take = |kv: &str| -> bool {
        match kv.split_once('=') {
            Some(("sslmode", v)) => mode = Some(decoded(v)),
            Some(("sslrootcert", v)) => root = Some(decoded(v)),
            _ => return false,
        }
        true
    };
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let Some((base, query)) = spec.split_once('?') else {
            return Ok((spec.to_string(), None, None));
        };
        let kept: Vec<&str> = query.split('&').filter(|kv| !take(kv)).collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, mode, root));
    }
    // key=value: the two settings must be written without quotes or spaces.
    let kept: Vec<&str> = spec.split_whitespace().filter(|kv| !take(kv)).collect();
    Ok((kept.join(" "), mode, root))
}

/// A URL query value, percent-decoded (a path with spaces, `%20`).
fn decoded(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Target {
    pub fn parse(spec: &str) -> Result<Target, StoreError> {
        let shown = shown(spec);
        let bad = |why: String| StoreError::Config {
            path: shown.clone(),
            why,
        };
        let (rest, mode, root) = split_tls(spec).map_err(&bad)?;
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| bad(format!("{e}")))?;
        // A `hostaddr` is dialled over TCP whatever `host` says: only hosts that are all
        // sockets, with no address, carry no TLS.
        let sockets_only = config.get_hostaddrs().is_empty()
            && !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, Host::Unix(_)));
        let tls = match (mode.as_deref(), sockets_only) {
            (Some("disable"), _) | (None, true) => Tls::Off,
            (Some("verify-full"), true) => {
                return Err(bad(
                    "sslmode=verify-full with only Unix-socket hosts: a socket carries no TLS"
                        .into(),
                ))
            }
            (Some("verify-full") | None, false) => Tls::VerifyFull {
                roots: root.unwrap_or_else(|| SYSTEM_ROOTS.into()),
            },
            (Some(m @ ("allow" | "prefer" | "require" | "verify-ca")), _) => {
                return Err(bad(format!(
                    "sslmode={m} would let a machine in the middle read or change the data; \
                     use sslmode=verify-full (with sslrootcert=<CA file>) or sslmode=disable"
                )))
            }
            (Some(m), _) => return Err(bad(format!("unknown sslmode `{m}`"))),
        };
        config.ssl_mode(match tls {
            Tls::Off => SslMode::Disable,
            Tls::VerifyFull { .. } => SslMode::Require,
        });
        Ok(Target { config, tls, shown })
    }

    /// The TLS connector for this target (also used, never negotiated, when TLS is off).
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
        let bad = |why: String| StoreError::Config {
            path: self.shown.clone(),
            why,
        };
        let mut roots = rustls::RootCertStore::empty();
        if let Tls::VerifyFull { roots: from } = &self.tls {
            for cert in load_roots(from).map_err(&bad)? {
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("sslrootcert `{from}`: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

fn load_roots(from: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let certs: Vec<_> = if from == SYSTEM_ROOTS {
        rustls_native_certs::load_native_certs().certs
    } else {
        rustls_pki_types::CertificateDer::pem_file_iter(from)
            .map_err(|e| format!("sslrootcert `{from}`: {e}"))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("sslrootcert `{from}`: {e}"))?
    };
    if certs.is_empty() {
        return Err(format!(
            "sslrootcert `{from}` holds no certificate to verify the server with"
        ));
    }
    Ok(certs)
}

/// A PostgreSQL URL fit to show: `postgres://user@host:port/db`, without the password
/// (whichever form it was given in).
pub fn shown(spec: &str) -> String {
    let Ok((rest, _, _)) = split_tls(spec) else {
        return "(a PostgreSQL URL that does not parse)".into();
    };
    match rest.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let hosts: Vec<String> = c
                .get_hosts()
                .iter()
                .map(|h| match h {
                    Host::Tcp(n) => n.clone(),
                    Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
            let port = if ports.is_empty() {
                String::new()
            } else {
                format!(":{}", ports.join(","))
            };
            format!(
                "postgres://{}@{}{port}/{}",
                c.get_user().unwrap_or(""),
                hosts.join(","),
                c.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "(a PostgreSQL URL that does not parse)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown_in_any_form() {
        for (url, want) in [
            (
                "postgres://cw:s3cret@db.example:5432/cw",
                "postgres://cw@db.example:5432/cw",
            ),
            (
                "postgres://cw@db.example/cw?password=s3cret&sslmode=verify-full",
                "postgres://cw@db.example:5432/cw",
            ),
            (
                "host=/run/pg user=cw password=s3cret dbname=cw",
                "postgres://cw@/run/pg/cw",
            ),
            (
                "host=db user=cw password = 's3 cret' dbname=cw",
                "postgres://cw@db/cw",
            ),
        ] {
            let got = shown(url);
            assert_eq!(got, want, "{url}");
            assert!(!got.contains("s3"));
        }
        assert!(!shown("postgres://cw:s3cret@[bad").contains("s3cret"));
    }

    fn tls(spec: &str) -> Result<Tls, String> {
        Target::parse(spec)
            .map(|t| t.tls)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn tls_is_verify_full_unless_disabled_and_half_way_modes_are_refused() {
        let full = |roots: &str| {
            Ok(Tls::VerifyFull {
                roots: roots.into(),
            })
        };
        assert_eq!(tls("postgres://cw@db.example/cw"), full("system"));
        assert_eq!(
            tls("postgres://cw@db.example/cw?sslmode=verify-full&sslrootcert=/etc/ca.pem"),
            full("/etc/ca.pem")
        );
        assert_eq!(
            tls("host=db user=cw sslrootcert=/etc/ca.pem dbname=cw"),
            full("/etc/ca.pem")
        );
        assert_eq!(tls("postgres://cw@db/cw?sslmode=disable"), Ok(Tls::Off));
        assert_eq!(tls("host=/run/pg user=cw dbname=cw"), Ok(Tls::Off));
        for m in ["require", "prefer", "verify-ca", "allow"] {
            let e = tls(&format!("postgres://cw@db/cw?sslmode={m}")).unwrap_err();
            assert!(e.contains(&format!("sslmode={m} would let")), "{e}");
        }
        let e = tls("host=/run/pg sslmode=verify-full user=cw").unwrap_err();
        assert!(e.contains("Unix-socket"), "{e}");
        let e = tls("postgres://cw@db/cw?sslmode=sometimes").unwrap_err();
        assert!(e.contains("unknown sslmode `sometimes`"), "{e}");
        // A `hostaddr` is TCP: not a socket, so TLS stays on.
        assert_eq!(
            tls("host=/run/pg hostaddr=203.0.113.5 user=cw dbname=cw"),
            full("system")
        );
        // Other settings are kept as written; several hosts with ports still parse.
        let t =
            Target::parse("postgres://cw@db/cw?sslmode=disable&application_name=a%20b").unwrap();
        assert_eq!(t.config.get_application_name(), Some("a b"));
        let t = Target::parse(
            "postgres://cw@h1:5432,h2:5433/cw?sslrootcert=/etc/my%20ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(t.config.get_ports(), [5432, 5433]);
        assert_eq!(
            t.tls,
            Tls::VerifyFull {
                roots: "/etc/my ca.pem".into()
            }
        );
    }

    #[test]
    fn a_root_file_without_certificates_is_named() {
        let dir = std::env::temp_dir().join(format!("cw-pgtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let spec = format!("postgres://cw@db/cw?sslrootcert={}", empty.display());
        let e = Target::parse(&spec)
            .unwrap()
            .connector()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("holds no certificate"), "{e}");
        let spec = "postgres://cw@db/cw?sslrootcert=/nonexistent/ca.pem";
        let e = Target::parse(spec)
            .unwrap()
            .connector()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
