//! A named thread that runs until asked to stop, joined on stop or drop: the agent's event
//! thread and the exporter are both one.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

pub struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `name` running `f`, which should return soon after its flag is set.
    pub fn spawn(
        name: &str,
        f: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(flag))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Sets the flag and waits for the thread (once; later calls do nothing).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
