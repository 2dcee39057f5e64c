//! The data dir lock: a running server holds an exclusive `flock` on
//! `tumbler.lock`, so offline tools (master key rotation) cannot change the
//! store under it. The kernel drops the lock when the process dies.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::Path;

pub const LOCK_FILE: &str = "tumbler.lock";

pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path, purpose: &str) -> Result<Self> {
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::internal(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::conflict(format!(
                "the data dir {} is in use by a running tumbler server (it holds {LOCK_FILE}); \
                 stop the server before you {purpose}",
                data_dir.display()
            )));
        }
        Ok(DataDirLock { _file: file })
    }
}
