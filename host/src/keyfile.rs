//! Where the master key comes from (a 0600 key file kept outside the data
//! dir, or `TUMBLER_MASTER_KEY`), and the offline master key rotation.

use crate::audit;
use crate::crypto::MasterKey;
use crate::store::{self, DataDirLock, Store};
use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

pub const ENV_MASTER_KEY: &str = "TUMBLER_MASTER_KEY";

/// Reads `TUMBLER_MASTER_KEY` and removes it from the environment, so child
/// processes and `/proc/self/environ` never see it. Call before any thread starts.
pub fn take_env_master_key() -> Option<Zeroizing<String>> {
    let value = std::env::var(ENV_MASTER_KEY).ok().map(Zeroizing::new);
    if value.is_some() {
        // SAFETY: called first thing in main, before the runtime or any other thread exists.
        unsafe { std::env::remove_var(ENV_MASTER_KEY) };
    }
    value
}

/// The default key file for a data dir: under the user's config dir, never
/// inside the data dir, so a backup of the data holds no key.
pub fn default_key_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let abs = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let config = std::env::var_os("TUMBLER_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|x| PathBuf::from(x).join("tumbler")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/tumbler")))
        .context("cannot choose a default key file: set HOME or pass --key-file")?;
    let base = abs.file_name().and_then(|n| n.to_str()).unwrap_or("data");
    let digest = hex::encode(&Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8]);
    Ok(config.join("keys").join(format!("{base}-{digest}.key")))
}

/// Writes a new key file with mode 0600; refuses to overwrite one.
pub fn write_new_key_file(path: &Path, key: &MasterKey) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {} (it must not exist yet)", path.display()))?;
    write_key(&mut file, key)
}

fn write_key(file: &mut File, key: &MasterKey) -> anyhow::Result<()> {
    let mut text = key.encode();
    text.push('\n');
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

fn read_key_file(path: &Path) -> anyhow::Result<MasterKey> {
    let meta = fs::metadata(path).with_context(|| format!("reading key file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("key file {} has mode {mode:o}, readable by others; run `chmod 600 {}`", path.display(), path.display());
    }
    let text = Zeroizing::new(fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?);
    MasterKey::parse(&text).with_context(|| format!("key file {}", path.display()))
}

/// Where this command's master key is to be read from.
pub enum KeySource {
    File(PathBuf),
    Env(Zeroizing<String>),
}

impl KeySource {
    pub fn choose(data_dir: &Path, key_file: Option<PathBuf>, env: Option<Zeroizing<String>>) -> anyhow::Result<Self> {
        Ok(match (key_file, env) {
            (Some(path), _) => KeySource::File(path),
            (None, Some(text)) => KeySource::Env(text),
            (None, None) => KeySource::File(default_key_file(data_dir)?),
        })
    }

    /// Loads the key for `data_dir`, finishing a master key rotation that
    /// was interrupted after its database commit.
    pub fn load(&self, data_dir: &Path) -> anyhow::Result<MasterKey> {
        match self {
            KeySource::Env(text) => MasterKey::parse(text).context(ENV_MASTER_KEY),
            KeySource::File(path) => {
                if !path.exists() {
                    bail!(
                        "no master key: {} does not exist; pass --key-file (the file `tumbler init` wrote) \
                         or set {ENV_MASTER_KEY}",
                        path.display()
                    );
                }
                let key = read_key_file(path)?;
                let pending = pending_path(path);
                if pending.exists() {
                    let stored = store::stored_key_id(data_dir)?;
                    let new = read_key_file(&pending)?;
                    if new.id() == stored && key.id() != stored {
                        fs::rename(&pending, path).context("completing an interrupted master key rotation")?;
                        tracing::warn!(key_id = new.id(), "completed an interrupted master key rotation");
                        return Ok(new);
                    }
                }
                Ok(key)
            }
        }
    }
}

fn pending_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// Rewraps every data key under a fresh master key in one transaction.
/// The new key is written beside the old one first, so a crash at any
/// point leaves a key that opens the store.
pub fn rotate_master_key(data_dir: &Path, source: &KeySource) -> anyhow::Result<String> {
    let KeySource::File(path) = source else {
        bail!(
            "rotate-master-key writes the new key to a file: pass --key-file (the key from {ENV_MASTER_KEY} is not rewritten in place)"
        );
    };
    let _lock = DataDirLock::acquire(data_dir, "rotate the master key")?;
    let old = source.load(data_dir)?;
    let old_id = old.id().to_owned();
    let store = Store::open(data_dir, old)?;
    // Records a killed server left in the journal are MAC'd under the old
    // key: into the chain with them first, so the rekey covers them.
    drop(audit::journal::recover(&store, None)?);
    let new = MasterKey::generate();
    let new_id = new.id().to_owned();
    let pending = pending_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&pending)
        .with_context(|| format!("writing {}", pending.display()))?;
    write_key(&mut file, &new)?;
    let count = store.write_blocking(|tx, keys| {
        let n = store::secrets::rewrap_all(tx, &keys.master, &new)?
            + crate::leases::roles::rewrap_all(tx, &keys.master, &new)?;
        // The audit MAC key derives from the master key: re-MAC the chain
        // (after checking it under the old key) and record the rotation.
        let new_audit_key = store::audit_key(&new);
        audit::chain::rekey(tx, &keys.audit, &new_audit_key)?;
        let entry = audit::Entry::event(audit::EntryKind::Operator, "operator.rotate-master-key", "", "ok")
            .with_detail("old_key_id", keys.master.id())
            .with_detail("new_key_id", new.id());
        audit::chain::append(tx, &new_audit_key, vec![entry])?;
        tx.execute("UPDATE meta SET value = ?1 WHERE key = 'kek_id'", [new.id()])?;
        Ok(n)
    })?;
    drop(store);
    fs::rename(&pending, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(format!(
        "master key rotated: {count} data keys rewrapped, key id {old_id} -> {new_id}; new key in {}",
        path.display()
    ))
}
