//! Checks a batch before any of it is stored: a malformed one is refused whole. The limits
//! are the contract's (`clinicwatch_proto::limits`), which the agent checks too.

use clinicwatch_proto::{
    limits,
    v1::{Batch, Hello},
};

use super::StoreError;

pub use limits::MAX_BATCH_RECORDS;

/// Checks a Hello's fields (identity is checked against the certificate elsewhere).
pub fn validate_hello(h: &Hello) -> Result<(), StoreError> {
    limits::check_hello(h).map_err(|e| StoreError::Invalid(e.0))
}

pub fn validate(batch: &Batch) -> Result<(), StoreError> {
    limits::check_batch(batch).map_err(|e| StoreError::Invalid(e.0))
}
