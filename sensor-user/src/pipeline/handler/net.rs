//! The network family: connects (remembered until their close, for exit summaries), DNS
//! questions and answers on port-53 flows (answers believed only from the resolvers, and
//! only to a question the flow asked), and closes with the flow's final counters.

use clinicwatch_common::{kind, ConnectEvent, DnsEvent, FlowCloseEvent};

use super::{
    convert::{flow_counters, protocol_name, remote_ip},
    Handler, DNS_FLOWS_KEPT,
};
use crate::event::Event;

impl Handler {
    pub(super) fn on_connect(&mut self, e: &ConnectEvent) -> Event {
        self.open_flows.insert(e.cookie, e.hdr.tgid);
        let dst = remote_ip(&e.remote);
        if e.remote.port == 53 {
            if self.dns_flows.len() >= DNS_FLOWS_KEPT {
                self.dns_flows.clear();
            }
            self.dns_flows.insert(e.cookie, (dst, e.app));
        }
        Event::NetConnect {
            time: self.clock.unix(e.hdr.time_ns),
            pid: e.hdr.tgid,
            app: self.app_name(e.app),
            flow: e.cookie,
            protocol: protocol_name(e.remote.protocol),
            dst,
            port: e.remote.port,
            name: self.names.name(e.app, &dst).map(str::to_string),
        }
    }

    /// Learns names from a DNS record; reports nothing itself.
    pub(super) fn on_dns(&mut self, e: &DnsEvent) {
        let data = &e.data[..(e.len as usize).min(e.data.len())];
        let query = e.hdr.kind == kind::DNS_QUERY;
        match self.dns_flows.get(&e.cookie) {
            Some(_) if query => self.dns_asked.ask(e.cookie, e.hdr.time_ns, data),
            Some((server, app)) if self.resolvers.contains(server) => {
                // Only the answer to a question this flow asked.
                if self.dns_asked.asked(e.cookie, e.hdr.time_ns, data)
                    && self.names.learn(*app, e.cookie, e.hdr.time_ns, data) > 0
                {
                    self.dns_answers += 1;
                }
            }
            _ if query => {}
            _ => self.dns_untrusted += 1,
        }
    }

    pub(super) fn on_flow_close(&mut self, e: &FlowCloseEvent) -> Event {
        self.open_flows.remove(&e.cookie);
        if self.dns_flows.remove(&e.cookie).is_some() {
            self.dns_asked.forget(e.cookie);
        }
        Event::NetClose {
            time: self.clock.unix(e.hdr.time_ns),
            pid: e.stats.tgid,
            app: self.app_name(e.stats.app),
            counters: flow_counters(e.cookie, &e.stats),
        }
    }
}
