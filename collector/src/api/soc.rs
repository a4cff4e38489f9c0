//! The `Soc` gRPC service: incidents, hosts and indicators for analysts' tools. Mutual TLS
//! with an analyst certificate: organization [`SOC_ORG`] (`clinicwatch-collector issue --soc
//! --name NAME`). A clinic's certificate is refused here; an analyst's is refused by Ingest
//! and cannot be had through enrollment.

use crate::status;
use std::sync::Arc;

use clinicwatch_proto::v1::{
    soc_server::Soc, GetIncidentRequest, HostView, IncidentView, IndicatorView, ListHostsRequest,
    ListHostsResponse, ListIncidentsRequest, ListIncidentsResponse, SetIncidentStateRequest,
    TopIndicatorsRequest, TopIndicatorsResponse,
};
use tonic::{Request, Response, Status};

use crate::{
    auth::identity::{peer_of, SOC_ORG},
    calls::{on_store, SharedStore},
    metrics::Metrics,
    store::Incident,
};

pub struct SocService {
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
}

fn view(i: Incident) -> IncidentView {
    IncidentView {
        id: i.id,
        rule: i.rule,
        key: i.key,
        state: i.state,
        severity: i.severity,
        title: i.title,
        first_seen: i.first_seen,
        last_seen: i.last_seen,
        clinics: i.clinics,
        hosts: i.hosts,
        evidence: i.evidence.into_iter().collect(),
        created: i.created,
        updated: i.updated,
    }
}

impl SocService {
    /// The analyst a request comes from, or `permission_denied`: a clinic's certificate, or
    /// an analyst's that was revoked (`unenroll --clinic clinicwatch-soc --host NAME`) or
    /// replaced by a later `issue --soc` of the same name. Checked at every call.
    async fn analyst<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let (who, key) = peer_of(req)?;
        if who.clinic != SOC_ORG {
            return Err(status::denied(format!(
                "the SOC service needs an analyst certificate (O={SOC_ORG}); this one is clinic {}",
                who.clinic
            )));
        }
        let w = who.clone();
        let e = on_store(&self.store, &self.metrics, move |s| s.enrollment(&w)).await?;
        crate::auth::identity::check_key(e.as_ref(), &key).map_err(|why| {
            tracing::warn!(analyst = %who.host, %why, "analyst certificate refused");
            status::denied(why)
        })?;
        Ok(who.host)
    }
}

#[tonic::async_trait]
impl Soc for SocService {
    async fn list_incidents(
        &self,
        req: Request<ListIncidentsRequest>,
    ) -> Result<Response<ListIncidentsResponse>, Status> {
        self.analyst(&req).await?;
        let state = req.into_inner().state;
        if !matches!(state.as_str(), "" | "new" | "acknowledged" | "closed") {
            return Err(status::invalid(format!(
                "state `{}`: new, acknowledged, closed or empty",
                state.escape_debug()
            )));
        }
        let list = on_store(&self.store, &self.metrics, move |s| {
            s.incidents((!state.is_empty()).then_some(state.as_str()))
        })
        .await?;
        Ok(Response::new(ListIncidentsResponse {
            incidents: list.into_iter().map(view).collect(),
        }))
    }

    async fn get_incident(
        &self,
        req: Request<GetIncidentRequest>,
    ) -> Result<Response<IncidentView>, Status> {
        self.analyst(&req).await?;
        let id = req.into_inner().id;
        on_store(&self.store, &self.metrics, move |s| s.incident(id))
            .await?
            .map(|i| Response::new(view(i)))
            .ok_or_else(|| status::invalid(format!("no incident #{id}")))
    }

    async fn set_incident_state(
        &self,
        req: Request<SetIncidentStateRequest>,
    ) -> Result<Response<IncidentView>, Status> {
        let who = self.analyst(&req).await?;
        let r = req.into_inner();
        if !matches!(r.state.as_str(), "acknowledged" | "closed" | "new") {
            return Err(status::invalid(format!(
                "state `{}`: acknowledged, closed or new",
                r.state.escape_debug()
            )));
        }
        let (id, state) = (r.id, r.state.clone());
        let now = crate::calls::now();
        let found = on_store(&self.store, &self.metrics, move |s| {
            if s.set_incident_state(id, &state, now)? {
                s.incident(id)
            } else {
                Ok(None)
            }
        })
        .await?;
        let i = found.ok_or_else(|| status::invalid(format!("no incident #{id}")))?;
        tracing::info!(id, state = %r.state, analyst = %who, "incident state set");
        Ok(Response::new(view(i)))
    }

    async fn list_hosts(
        &self,
        req: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        self.analyst(&req).await?;
        let hosts = on_store(&self.store, &self.metrics, |s| s.hosts()).await?;
        Ok(Response::new(ListHostsResponse {
            hosts: hosts
                .into_iter()
                .map(|h| HostView {
                    clinic: h.clinic,
                    host: h.host,
                    hostname: h.hostname,
                    agent_version: h.agent_version,
                    kernel: h.kernel,
                    last_seen: h.last_seen,
                    spooled: h.spooled,
                    dropped: h.dropped,
                })
                .collect(),
        }))
    }

    async fn top_indicators(
        &self,
        req: Request<TopIndicatorsRequest>,
    ) -> Result<Response<TopIndicatorsResponse>, Status> {
        self.analyst(&req).await?;
        let r = req.into_inner();
        let hours = if r.hours > 0.0 {
            r.hours.min(24.0 * 365.0)
        } else {
            24.0
        };
        let limit = if r.limit > 0 { r.limit.min(1000) } else { 20 } as usize;
        let since = crate::calls::now() - hours * 3600.0;
        let top = on_store(&self.store, &self.metrics, move |s| {
            s.top_indicators(since, limit)
        })
        .await?;
        Ok(Response::new(TopIndicatorsResponse {
            indicators: top
                .into_iter()
                .map(|i| IndicatorView {
                    kind: i.kind,
                    value: i.value,
                    first_seen: i.first_seen,
                    last_seen: i.last_seen,
                    clinics: i.clinics,
                })
                .collect(),
        }))
    }
}
