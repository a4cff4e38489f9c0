//! clinicwatch protobuf contract (`clinicwatch.v1`, `proto/clinicwatch/v1/ingest.proto`),
//! generated with protox and tonic-prost-build into `OUT_DIR`.

pub mod hll;
pub mod limits;

pub mod v1 {
    tonic::include_proto!("clinicwatch.v1");
}

/// The largest frame either side accepts (the collector refuses bigger ones).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1::*;

    #[test]
    fn a_batch_round_trips() {
        let batch = Batch {
            epoch: 3,
            first_seq: 10,
            records: vec![
                Record {
                    seq: 10,
                    body: Some(record::Body::Finding(Finding {
                        rule: "CW-PM-BULK-READ".into(),
                        severity: Severity::High as i32,
                        app: "pm".into(),
                        time: 1.5,
                        subject: "pm_data".into(),
                        summary: "read".into(),
                        evidence: [("bytes".to_string(), "524288000".to_string())].into(),
                    })),
                },
                Record {
                    seq: 11,
                    body: Some(record::Body::Summary(WindowSummary {
                        app: "pm".into(),
                        classes: vec![ClassStats {
                            class: "pm_data".into(),
                            bytes: 42,
                            ..Default::default()
                        }],
                        ..Default::default()
                    })),
                },
            ],
        };
        let frame = AgentFrame {
            frame: Some(agent_frame::Frame::Batch(batch.clone())),
        };
        let bytes = frame.encode_to_vec();
        let back = AgentFrame::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.frame, Some(agent_frame::Frame::Batch(batch)));
        assert!(
            AgentFrame::decode(&bytes[..bytes.len() - 3]).is_err(),
            "a cut frame is refused"
        );
    }
}
