//! The SOC gRPC service over mutual TLS: an analyst's certificate lists, reads and
//! acknowledges incidents and sees hosts and indicators; a clinic's certificate is refused
//! there, and an analyst's is refused by Ingest and by enrollment.

use clinicwatch_testkit::TempDir;

use crate::support::*;
use clinicwatch_collector::{auth::identity::SOC_ORG, auth::pki, store::Incident};
use clinicwatch_proto::v1::{
    enroll_client::EnrollClient, soc_client::SocClient, EnrollRequest, GetIncidentRequest,
    ListHostsRequest, ListIncidentsRequest, SetIncidentStateRequest, TopIndicatorsRequest,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_see_incidents_clinics_cannot_and_analysts_cannot_send() {
    let p = new_pki();
    let dir = TempDir::new("soc");
    let srv = serve(&p, &dir.join("c.db")).await;
    // A host that reported, and an incident.
    let clinic = pki::client_cert(&p.ca, "clinic-a", "ws1", 30).unwrap();
    let mut c = client(&srv.url, &p.ca, Some(&clinic)).await.unwrap();
    exchange(&mut c, vec![hello("clinic-a", "ws1", 1), batch(1, 1, 2)])
        .await
        .unwrap();
    let id = blocking(|| {
        srv.store
            .save_incident(&Incident {
                rule: "CW-FLEET-RARE-DESTINATION".into(),
                key: "dest_name:exfil.example".into(),
                state: "new".into(),
                severity: "critical".into(),
                title: "t".into(),
                clinics: vec!["clinic-a".into(), "clinic-b".into()],
                hosts: vec!["clinic-a/ws1".into(), "clinic-b/ws1".into()],
                ..Default::default()
            })
            .unwrap()
    });

    let alice = pki::client_cert(&p.ca, SOC_ORG, "alice", 1).unwrap();
    let mut soc = SocClient::new(channel(&srv.url, &p.ca, Some(&alice)).await.unwrap());
    let list = soc
        .list_incidents(ListIncidentsRequest {
            state: "new".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.incidents.len(), 1);
    assert_eq!(list.incidents[0].clinics, ["clinic-a", "clinic-b"]);
    let acked = soc
        .set_incident_state(SetIncidentStateRequest {
            id,
            state: "acknowledged".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.state, "acknowledged");
    let got = soc
        .get_incident(GetIncidentRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.state, "acknowledged");
    let e = soc
        .get_incident(GetIncidentRequest { id: 999 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = soc
        .set_incident_state(SetIncidentStateRequest {
            id,
            state: "gone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let hosts = soc
        .list_hosts(ListHostsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hosts.hosts.len(), 1);
    assert_eq!(hosts.hosts[0].clinic, "clinic-a");
    soc.top_indicators(TopIndicatorsRequest {
        hours: 0.0,
        limit: 0,
    })
    .await
    .unwrap();

    // A clinic's certificate is not an analyst's.
    let mut as_clinic = SocClient::new(channel(&srv.url, &p.ca, Some(&clinic)).await.unwrap());
    let e = as_clinic
        .list_incidents(ListIncidentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // No certificate at all.
    let mut anon = SocClient::new(channel(&srv.url, &p.ca, None).await.unwrap());
    let e = anon.list_hosts(ListHostsRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    // An analyst's certificate cannot send records...
    let mut as_analyst = client(&srv.url, &p.ca, Some(&alice)).await.unwrap();
    let e = exchange(&mut as_analyst, vec![hello(SOC_ORG, "alice", 1)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // ...nor be had through enrollment.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = clinicwatch_collector::api::enroll::make_token(&p.token_key, SOC_ORG, now + 60)
        .unwrap()
        .0;
    let mut enroll = EnrollClient::new(channel(&srv.url, &p.ca, None).await.unwrap());
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let e = enroll
        .enroll(EnrollRequest {
            token,
            host_id: "mallory".into(),
            csr_pem: csr,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    srv.shutdown().await;
}
