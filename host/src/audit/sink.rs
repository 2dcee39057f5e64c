//! The optional second sink: every record as one JSON line in a file that
//! log shippers can tail, rotated by size (`audit.log` -> `audit.log.1` ...).
//! It is written inside the record's transaction, before the commit, so a
//! sink that cannot be written fails the request like the store would.
//! The price: if the commit itself then fails, the file holds a line whose
//! seq the store reuses; the store, with its chain, is the reference.

use super::chain::Record;
use crate::error::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct FileSink {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Mutex<Option<Open>>,
}

struct Open {
    file: File,
    len: u64,
}

impl FileSink {
    /// Opens (creating, mode 0600) `path` for appending. `keep` rotated
    /// files are kept beside it; older ones are deleted.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self> {
        if max_bytes == 0 {
            return Err(Error::invalid("the audit file size limit must be positive"));
        }
        let sink = FileSink { path: path.to_path_buf(), max_bytes, keep, file: Mutex::new(None) };
        let open = sink.open_file()?;
        *sink.file.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
        Ok(sink)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` as JSON lines in one write, rotating first when
    /// they would take the file past its size limit. On failure the file is
    /// cut back to where it was, so no half line is left behind.
    pub fn write(&self, records: &[Record]) -> Result<()> {
        let mut lines = Vec::new();
        for r in records {
            serde_json::to_writer(&mut lines, &r.to_json()).map_err(|e| self.error(std::io::Error::other(e)))?;
            lines.push(b'\n');
        }
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|o| o.len > 0 && o.len + lines.len() as u64 > self.max_bytes) {
            *guard = None;
            self.rotate()?;
        }
        if guard.is_none() {
            *guard = Some(self.open_file()?);
        }
        let Some(open) = guard.as_mut() else {
            return Err(Error::unavailable("the audit file sink is not open"));
        };
        if let Err(e) = open.file.write_all(&lines) {
            let _ = open.file.set_len(open.len);
            // Reopen next time: the handle may be in an unknown state.
            *guard = None;
            return Err(self.error(e));
        }
        open.len += lines.len() as u64;
        Ok(())
    }

    fn open_file(&self) -> Result<Open> {
        let file =
            OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path).map_err(|e| self.error(e))?;
        let len = file.metadata().map_err(|e| self.error(e))?.len();
        Ok(Open { file, len })
    }

    /// `path.{keep-1}` -> `path.{keep}` ... `path` -> `path.1`; the oldest
    /// beyond `keep` is removed.
    fn rotate(&self) -> Result<()> {
        let numbered = |n: u32| {
            let mut s = self.path.as_os_str().to_owned();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        };
        if self.keep == 0 {
            return fs::remove_file(&self.path).map_err(|e| self.error(e));
        }
        let oldest = numbered(self.keep);
        if oldest.exists() {
            fs::remove_file(&oldest).map_err(|e| self.error(e))?;
        }
        for n in (1..self.keep).rev() {
            let from = numbered(n);
            if from.exists() {
                fs::rename(&from, numbered(n + 1)).map_err(|e| self.error(e))?;
            }
        }
        fs::rename(&self.path, numbered(1)).map_err(|e| self.error(e))
    }

    fn error(&self, e: std::io::Error) -> Error {
        Error::unavailable(format!("the audit file {} cannot be written: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64) -> Record {
        Record {
            seq,
            time: 0,
            kind: "request".into(),
            request_id: format!("r{seq}"),
            token_id: String::new(),
            token_name: String::new(),
            client: String::new(),
            action: "secret.read".into(),
            resource: "app/db".into(),
            status: Some(200),
            outcome: "ok".into(),
            detail: "{}".into(),
            prev_mac: vec![0; 32],
            mac: vec![1; 32],
        }
    }

    #[test]
    fn lines_are_json_and_files_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let sink = FileSink::open(&path, 600, 2).unwrap();
        for seq in 1..=20 {
            sink.write(&[record(seq)]).unwrap();
        }
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 600, "{}", current.len());
        let last: serde_json::Value = serde_json::from_str(current.lines().last().unwrap()).unwrap();
        assert_eq!(last["seq"], 20);
        assert_eq!(last["action"], "secret.read");
        assert!(dir.path().join("audit.log.1").exists());
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists(), "only `keep` rotated files stay");
        // The newest rotated file continues where the current one starts.
        let first_current: serde_json::Value = serde_json::from_str(current.lines().next().unwrap()).unwrap();
        let rotated = fs::read_to_string(dir.path().join("audit.log.1")).unwrap();
        let last_rotated: serde_json::Value = serde_json::from_str(rotated.lines().last().unwrap()).unwrap();
        assert_eq!(last_rotated["seq"].as_i64().unwrap() + 1, first_current["seq"].as_i64().unwrap());
    }
}
