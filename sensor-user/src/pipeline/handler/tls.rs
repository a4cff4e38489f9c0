//! The TLS plaintext family: the start of a write becomes a query template (HTTP/1.1) or a
//! request count (HTTP/2) at once, never kept; a read that starts with a status line is the
//! response to the connection's last request.

use clinicwatch_common::{TlsReadEvent, TlsWriteEvent};

use super::{convert::http_status, Handler, TLS_CONNECTIONS_KEPT};
use crate::{
    event::Event,
    pipeline::query::{self, Write},
};

impl Handler {
    pub(super) fn on_tls_write(&mut self, e: &TlsWriteEvent) -> Option<Event> {
        let data = &e.data[..(e.captured as usize).min(e.data.len())];
        let (protocol, requests, method, host, path, ids) = match query::parse(data) {
            Write::Http1(r) => {
                let t = self.templater.template(&r);
                if self.last_request.len() >= TLS_CONNECTIONS_KEPT {
                    self.last_request.clear();
                }
                self.last_request.insert(
                    (e.hdr.tgid, e.ssl),
                    (t.method.clone(), t.host.clone(), t.path.clone()),
                );
                ("http/1.1", 1, t.method, t.host, t.path, t.ids)
            }
            Write::Http2 { requests } if requests > 0 => (
                "h2",
                requests,
                String::new(),
                String::new(),
                "{h2}".to_string(),
                Vec::new(),
            ),
            _ => {
                self.tls_other += 1;
                return None;
            }
        };
        Some(Event::Query {
            time: self.clock.unix(e.hdr.time_ns),
            pid: e.hdr.tgid,
            app: self.app_name(e.app),
            protocol: protocol.into(),
            method,
            host,
            path,
            requests,
            bytes: e.len,
            ids,
        })
    }

    pub(super) fn on_tls_read(&self, e: &TlsReadEvent) -> Option<Event> {
        let status = http_status(&e.status[..(e.captured as usize).min(e.status.len())])?;
        let (method, host, path) = self.last_request.get(&(e.hdr.tgid, e.ssl))?.clone();
        Some(Event::QueryResponse {
            time: self.clock.unix(e.hdr.time_ns),
            pid: e.hdr.tgid,
            app: self.app_name(e.app),
            method,
            host,
            path,
            status,
        })
    }
}
