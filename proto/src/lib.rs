//! clinicwatch protobuf contract (`clinicwatch.v1`), generated with protox and
//! tonic-prost-build into `OUT_DIR`.
//!
//! Not written yet: it comes with the delivery issue, shaped so that the agent's events
//! (`clinicwatch_agent::Event`) map onto it and onto OCSF classes directly.
