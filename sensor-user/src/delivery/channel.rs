//! The TLS channel to the collector, for the exporter and for enrollment: the collector's
//! CA, the name its certificate must carry (the URL's host), and our identity when we have
//! one.

use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The host part of the collector URL (the name its certificate must carry).
pub(crate) fn domain_of(url: &str) -> String {
    url.parse::<tonic::codegen::http::Uri>()
        .ok()
        .and_then(|u| {
            u.host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        })
        .unwrap_or_default()
}

/// An endpoint for the collector: TLS with the CA, and our identity when we have one.
pub(crate) fn endpoint(url: &str, ca: &str, me: Option<(&str, &str)>) -> anyhow::Result<Endpoint> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(domain_of(url));
    if let Some((cert, key)) = me {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Endpoint::from_shared(url.to_string())
        .with_context(|| format!("`export.collector` `{url}` is not a valid URL"))?
        .tls_config(tls)
        .context("bad TLS material in `export`")?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_domain_is_the_urls_host() {
        assert_eq!(
            super::domain_of("https://collector.example:7443"),
            "collector.example"
        );
        assert_eq!(super::domain_of("https://localhost"), "localhost");
        assert_eq!(super::domain_of("https://[::1]:7443/"), "::1");
        assert_eq!(super::domain_of("not a url"), "");
    }
}
