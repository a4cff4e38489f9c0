//! Where events go: JSON lines to stdout or a file, and optional in-process subscribers.
//! The file rotates by size: `events.jsonl` becomes `events.jsonl.1` (and older ones shift
//! up to `.N`, the oldest dropped) before a write would take it past its cap. Rotation is at
//! line boundaries: each event is written whole into one file.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
    sync::mpsc::Sender,
};

/// How the output file rotates: past `max_bytes` (0: never), keeping `keep` older files.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

/// `path.n`: the n-th older output file.
fn generation(path: &Path, n: u32) -> PathBuf {
    let mut p = path.to_path_buf().into_os_string();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

/// An append-only file that rotates by size at line boundaries.
struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
    written: u64,
    rotation: Rotation,
}

impl RotatingFile {
    fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            written,
            rotation,
        })
    }

    /// Shifts `path.N-1` to `path.N` down to `path` to `path.1`, then starts a new file.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.rotation.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.rotation.keep).rev() {
                let from = generation(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, generation(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, generation(&self.path, 1))?;
        }
        *self = Self::open(&self.path, self.rotation)?;
        Ok(())
    }

    /// Writes one whole line (rotating first if it would not fit).
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let max = self.rotation.max_bytes;
        if max > 0 && self.written > 0 && self.written + line.len() as u64 > max {
            if let Err(e) = self.rotate() {
                // Keep writing where we are; shift the older files again only after another
                // `max` bytes, not at every line (which would drop them all in a burst).
                self.written = 0;
                return Err(e);
            }
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(RotatingFile),
}

impl Sink {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(w) => w.write_all(line),
            Sink::File(f) => f.write_line(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(w) => w.flush(),
            Sink::File(f) => f.file.flush(),
        }
    }
}

use crate::event::Event;

pub struct Output {
    writer: Option<Sink>,
    subscribers: Vec<Sender<Event>>,
    pub write_errors: u64,
}

impl Output {
    /// `-` is stdout; anything else a file appended to, rotated by `rotation`. `None`
    /// writes nowhere (library use).
    pub fn open(target: Option<&str>, rotation: Rotation) -> io::Result<Self> {
        let writer = match target {
            None => None,
            Some("-") => Some(Sink::Stdout(BufWriter::new(io::stdout()))),
            Some(path) => Some(Sink::File(RotatingFile::open(Path::new(path), rotation)?)),
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
            let ok = serde_json::to_vec(ev).is_ok_and(|mut line| {
                line.push(b'\n');
                w.write_line(&line).is_ok()
            });
            if !ok {
                self.write_errors += 1;
            }
        }
    }

    pub fn emit(&mut self, ev: Event) {
        self.write(&ev);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_file_rotates_by_size_at_line_boundaries_keeping_n_generations() {
        let dir = std::env::temp_dir().join(format!("cw-output-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let rotation = Rotation {
            max_bytes: 100,
            keep: 2,
        };
        let mut f = RotatingFile::open(&path, rotation).unwrap();
        // 30 lines of 40 bytes: two per file, so 15 files were written; 3 are kept.
        for i in 0..30 {
            f.write_line(format!("{i:039}\n").as_bytes()).unwrap();
        }
        f.file.flush().unwrap();
        let older = |n: u32| generation(&path, n);
        assert_eq!(
            lines(&path),
            vec![format!("{:039}", 28), format!("{:039}", 29)]
        );
        assert_eq!(
            lines(&older(1)),
            vec![format!("{:039}", 26), format!("{:039}", 27)]
        );
        assert_eq!(
            lines(&older(2)),
            vec![format!("{:039}", 24), format!("{:039}", 25)]
        );
        assert!(!older(3).exists(), "only `keep` older files remain");
        for p in [path.clone(), older(1), older(2)] {
            assert!(std::fs::metadata(&p).unwrap().len() <= 100);
        }
        // Reopening counts what is already there.
        drop(f);
        let mut f = RotatingFile::open(&path, rotation).unwrap();
        f.write_line(format!("{:039}\n", 30).as_bytes()).unwrap();
        f.file.flush().unwrap();
        assert_eq!(lines(&path), vec![format!("{:039}", 30)]);
        assert_eq!(lines(&older(1))[1], format!("{:039}", 29));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_line_larger_than_the_cap_is_written_whole() {
        let dir = std::env::temp_dir().join(format!("cw-output-big-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let mut f = RotatingFile::open(
            &path,
            Rotation {
                max_bytes: 10,
                keep: 1,
            },
        )
        .unwrap();
        f.write_line(&[b'x'; 50]).unwrap();
        f.write_line(b"y\n").unwrap();
        f.file.flush().unwrap();
        assert_eq!(std::fs::read(generation(&path, 1)).unwrap().len(), 50);
        assert_eq!(std::fs::read(&path).unwrap(), b"y\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
