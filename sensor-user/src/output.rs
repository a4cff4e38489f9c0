//! Where events go: JSON lines to stdout or a file, and optional in-process subscribers.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    sync::mpsc::Sender,
};

use crate::event::Event;

pub struct Output {
    writer: Option<Box<dyn Write + Send>>,
    subscribers: Vec<Sender<Event>>,
    pub write_errors: u64,
}

impl Output {
    /// `-` is stdout; anything else a file appended to. `None` writes nowhere (library use).
    pub fn open(target: Option<&str>) -> io::Result<Self> {
        let writer: Option<Box<dyn Write + Send>> = match target {
            None => None,
            Some("-") => Some(Box::new(BufWriter::new(io::stdout()))),
            Some(path) => Some(Box::new(BufWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            ))),
        };
        Ok(Self {
            writer,
            subscribers: Vec::new(),
            write_errors: 0,
        })
    }

    pub fn subscribe(&mut self, tx: Sender<Event>) {
        self.subscribers.push(tx);
    }

    /// Subscribers get `ev` as it is; the writer gets `edge(ev)` (the privacy filter).
    /// In-process subscribers only (events too frequent for the output file).
    pub fn notify(&mut self, ev: Event) {
        self.subscribers.retain(|tx| tx.send(ev.clone()).is_ok());
    }

    pub fn emit_filtered(&mut self, ev: Event, edge: impl FnOnce(Event) -> Event) {
        self.subscribers.retain(|tx| tx.send(ev.clone()).is_ok());
        if self.writer.is_some() {
            let filtered = edge(ev);
            self.write(&filtered);
        }
    }

    fn write(&mut self, ev: &Event) {
        if let Some(w) = self.writer.as_mut() {
            let ok = serde_json::to_writer(&mut *w, ev).is_ok() && w.write_all(b"\n").is_ok();
            if !ok {
                self.write_errors += 1;
            }
        }
    }

    pub fn emit(&mut self, ev: Event) {
        if let Some(w) = self.writer.as_mut() {
            let ok = serde_json::to_writer(&mut *w, &ev).is_ok() && w.write_all(b"\n").is_ok();
            if !ok {
                self.write_errors += 1;
            }
        }
        self.subscribers.retain(|tx| tx.send(ev.clone()).is_ok());
    }

    pub fn flush(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            if w.flush().is_err() {
                self.write_errors += 1;
            }
        }
    }
}
