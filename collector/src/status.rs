//! The one map from why the collector refuses a call to the gRPC status it answers with.
//! Agents act on the code, so the set is small and each code means one thing:
//!
//! | refusal | code | what the agent does |
//! |---|---|---|
//! | [`Refusal::Invalid`] | `invalid_argument` | the records are malformed or name nothing here: quarantined, never resent as they are |
//! | [`Refusal::Unauthenticated`] | `unauthenticated` | no usable certificate or token: back off, an operator must act |
//! | [`Refusal::Denied`] | `permission_denied` | this identity may not do this: back off, an operator must act |
//! | [`Refusal::Exhausted`] | `resource_exhausted` | over a limit: wait the `grpc-retry-pushback-ms` it carries |
//! | [`Refusal::Unavailable`] | `unavailable` | try again: the store is down, the stream was replaced or idle |
//! | [`Refusal::DataLoss`] | `data_loss` | stored data does not read back: an operator must look |
//! | [`Refusal::Precondition`] | `failed_precondition` | out of order (Hello first) or the state forbids it (already enrolled) |
//!
//! Code elsewhere says why with a [`Refusal`]; only this module chooses codes.

use tonic::Status;

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    Unauthenticated(String),
    Denied(String),
    Exhausted { why: String, pushback_ms: u32 },
    Unavailable(String),
    DataLoss(String),
    Precondition(String),
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        match r {
            Refusal::Invalid(why) => Status::invalid_argument(why),
            Refusal::Unauthenticated(why) => Status::unauthenticated(why),
            Refusal::Denied(why) => Status::permission_denied(why),
            Refusal::Exhausted { why, pushback_ms } => {
                let mut s = Status::resource_exhausted(why);
                if let Ok(v) = pushback_ms.to_string().parse() {
                    s.metadata_mut().insert("grpc-retry-pushback-ms", v);
                }
                s
            }
            Refusal::Unavailable(why) => Status::unavailable(why),
            Refusal::DataLoss(why) => Status::data_loss(why),
            Refusal::Precondition(why) => Status::failed_precondition(why),
        }
    }
}

impl From<&StoreError> for Refusal {
    fn from(e: &StoreError) -> Refusal {
        match e {
            StoreError::Invalid(why) => Refusal::Invalid(why.clone()),
            StoreError::Data(_) => Refusal::DataLoss(format!("storage: {e}")),
            StoreError::Db { .. } | StoreError::Config { .. } | StoreError::Migration { .. } => {
                Refusal::Unavailable(format!("storage: {e}"))
            }
        }
    }
}

/// The statuses, by refusal (`Err(invalid(..))?` reads as what it says).
pub fn invalid(why: impl Into<String>) -> Status {
    Refusal::Invalid(why.into()).into()
}
pub fn unauthenticated(why: impl Into<String>) -> Status {
    Refusal::Unauthenticated(why.into()).into()
}
pub fn denied(why: impl Into<String>) -> Status {
    Refusal::Denied(why.into()).into()
}
pub fn exhausted(why: impl Into<String>, pushback_ms: u32) -> Status {
    Refusal::Exhausted {
        why: why.into(),
        pushback_ms,
    }
    .into()
}
pub fn unavailable(why: impl Into<String>) -> Status {
    Refusal::Unavailable(why.into()).into()
}
pub fn precondition(why: impl Into<String>) -> Status {
    Refusal::Precondition(why.into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_refusal_has_its_code_and_store_errors_map_by_kind() {
        let s = exhausted("slow down", 2500);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get("grpc-retry-pushback-ms").unwrap(), "2500");
        assert_eq!(invalid("x").code(), Code::InvalidArgument);
        assert_eq!(precondition("x").code(), Code::FailedPrecondition);
        let st = |e: StoreError| Status::from(Refusal::from(&e)).code();
        assert_eq!(st(StoreError::Invalid("bad".into())), Code::InvalidArgument);
        assert_eq!(st(StoreError::Data("column 3".into())), Code::DataLoss);
        assert_eq!(
            st(StoreError::Db {
                path: "db".into(),
                source: "down".into()
            }),
            Code::Unavailable
        );
    }
}
