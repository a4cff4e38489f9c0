//! Store calls from the async services: off the async threads, their errors mapped once
//! (see `status`) and counted; and the clock the services stamp with.

use std::sync::{atomic::Ordering, Arc};

use tonic::Status;

use crate::metrics::{Metrics, Rejection};
use crate::status;
use crate::store::{Store, StoreError};

/// The store the services share: its calls may run in parallel (see [`Store`]).
pub type SharedStore = Arc<dyn Store>;

/// Now, in unix seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs a store call off the async threads (the store's calls block).
pub(crate) async fn on_store<T: Send + 'static>(
    store: &SharedStore,
    metrics: &Metrics,
    f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    let store = store.clone();
    let r = tokio::task::spawn_blocking(move || f(store.as_ref())).await;
    match r {
        Ok(Ok(v)) => {
            metrics.store_ok.store(true, Ordering::Relaxed);
            Ok(v)
        }
        Ok(Err(e)) => {
            let refusal = crate::status::Refusal::from(&e);
            if matches!(refusal, crate::status::Refusal::Invalid(_)) {
                metrics.reject(Rejection::Invalid);
            } else {
                metrics.store_ok.store(false, Ordering::Relaxed);
                metrics.reject(Rejection::Storage);
                tracing::error!(error = %e, "store call failed; the agent will resend");
            }
            Err(refusal.into())
        }
        Err(_) => Err(status::unavailable("store task failed")),
    }
}
