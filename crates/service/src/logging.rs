//! Logging set-up: `tracing` events to stderr and, with `--logging.record_log`, to a
//! size-rotated file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::args::{CommonArgs, LoggingArgs};

/// The log file cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the log file {}: {source}", path.display())]
pub struct LoggingError {
    /// The file.
    pub path: PathBuf,
    /// The operating system's error.
    pub source: io::Error,
}

/// The filter directives in effect: `trace` with `--logging.trace`, else `debug` with
/// `--logging.debug`; without either flag, `RUST_LOG` when it is set and not empty, else
/// `info`.
pub fn filter_directives(args: &LoggingArgs, rust_log: Option<&str>) -> String {
    if args.trace {
        "trace".into()
    } else if args.debug {
        "debug".into()
    } else {
        match rust_log.map(str::trim) {
            Some(directives) if !directives.is_empty() => directives.into(),
            _ => "info".into(),
        }
    }
}

/// Installs the global subscriber (see [`filter_directives`]; invalid `RUST_LOG` directives
/// are ignored): stderr, plus the file of [`CommonArgs::log_file`] when
/// `--logging.record_log` is on (its folders are created). Does nothing if a subscriber is
/// already installed.
pub fn init_logging(args: &CommonArgs) -> Result<(), LoggingError> {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter =
        EnvFilter::builder().parse_lossy(filter_directives(&args.logging, rust_log.as_deref()));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()));
    let file = match args.log_file() {
        Some(path) => {
            let writer =
                RotatingFile::open(&path, args.logging.max_file_bytes, args.logging.max_files)?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false),
            )
        }
        None => None,
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init()
        .is_ok();
    if installed && let Some(path) = args.log_file() {
        tracing::info!(file = %path.display(), "also logging to file");
    }
    Ok(())
}

/// A log file rotated by size: when a write would take `logs.log` past `max_bytes`, it
/// becomes `logs.log.1` (the older ones shift up to `logs.log.<max_files>`, the oldest is
/// deleted) and a new `logs.log` is started.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    max_files: usize,
    state: Mutex<Open>,
}

#[derive(Debug)]
struct Open {
    file: File,
    size: u64,
}

impl RotatingFile {
    /// Opens `path` for appending (creating it and its folders).
    pub fn open(path: &Path, max_bytes: u64, max_files: usize) -> Result<Self, LoggingError> {
        let error = |source| LoggingError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(error)?;
        }
        let file = append(path).map_err(error)?;
        let size = file.metadata().map_err(error)?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes,
            max_files,
            state: Mutex::new(Open { file, size }),
        })
    }

    fn numbered(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&self, open: &mut Open) -> io::Result<()> {
        open.file.flush()?;
        if self.max_files == 0 {
            open.file = File::create(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.numbered(self.max_files));
            for n in (1..self.max_files).rev() {
                let from = self.numbered(n);
                if from.exists() {
                    std::fs::rename(&from, self.numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.numbered(1))?;
            open.file = append(&self.path)?;
        }
        open.size = 0;
        Ok(())
    }

    fn write_record(&self, record: &[u8]) -> io::Result<()> {
        let mut open = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if open.size > 0 && open.size + record.len() as u64 > self.max_bytes {
            self.rotate(&mut open)?;
        }
        open.file.write_all(record)?;
        open.size += record.len() as u64;
        Ok(())
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// One log record being formatted; written to the file, whole, when dropped.
#[derive(Debug)]
pub struct RecordWriter<'a> {
    file: &'a RotatingFile,
    buffer: Vec<u8>,
}

impl Write for RecordWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for RecordWriter<'_> {
    fn drop(&mut self) {
        if !self.buffer.is_empty() {
            // Nowhere to report a failing log file but stderr, which has the same record.
            let _ = self.file.write_record(&self.buffer);
        }
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = RecordWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        RecordWriter {
            file: self,
            buffer: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_rust_log_which_wins_over_info() {
        let none = LoggingArgs::default();
        let debug = LoggingArgs {
            debug: true,
            ..LoggingArgs::default()
        };
        let both = LoggingArgs {
            debug: true,
            trace: true,
            ..LoggingArgs::default()
        };
        assert_eq!(filter_directives(&none, None), "info");
        assert_eq!(filter_directives(&none, Some("  ")), "info");
        assert_eq!(
            filter_directives(&none, Some("prompting_transport=debug")),
            "prompting_transport=debug"
        );
        assert_eq!(filter_directives(&debug, Some("warn")), "debug");
        assert_eq!(filter_directives(&both, Some("warn")), "trace");
    }

    fn write(file: &RotatingFile, text: &str) {
        let mut writer = file.make_writer();
        writer.write_all(text.as_bytes()).expect("buffered");
    }

    #[test]
    fn the_file_rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/logs.log");
        let file = RotatingFile::open(&path, 10, 2).expect("open");
        for record in [
            "1111\n", "2222\n", "3333\n", "4444\n", "5555\n", "6666\n", "7777\n",
        ] {
            write(&file, record);
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(path.clone()), "7777\n");
        assert_eq!(read(file.numbered(1)), "5555\n6666\n");
        assert_eq!(read(file.numbered(2)), "3333\n4444\n");
        assert!(!file.numbered(3).exists(), "older files are deleted");

        // A record larger than the limit still lands whole, in a file of its own.
        write(&file, "a record longer than ten bytes\n");
        assert_eq!(read(path.clone()), "a record longer than ten bytes\n");

        // Reopening appends.
        drop(file);
        let file = RotatingFile::open(&path, 1000, 2).expect("reopen");
        write(&file, "more\n");
        assert_eq!(read(path), "a record longer than ten bytes\nmore\n");
    }
}
