//! Local commands that work on a data dir directly: `init`,
//! `operator rotate-master-key` and `audit verify`.

use crate::audit::{self, Entry, EntryKind};
use crate::auth;
use crate::cli::Output;
use crate::crypto::MasterKey;
use crate::keyfile::{self, KeySource};
use crate::model::rfc3339;
use crate::store::{DataDirLock, Store};
use anyhow::Context;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    #[arg(long, env = "TUMBLER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Where to write the master key (default: under ~/.config/tumbler/keys, outside the data dir).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::Subcommand, Debug)]
pub enum OperatorCommand {
    /// Rewrap every data key under a new master key (the server must be stopped).
    RotateMasterKey {
        #[arg(long, env = "TUMBLER_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

pub async fn init(args: InitArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating data dir {}", dir.display()))?;
    let data_dir = std::fs::canonicalize(dir)?;
    let key_file = match args.key_file {
        Some(k) => absolute(&k)?,
        None => keyfile::default_key_file(&data_dir)?,
    };
    if key_file.starts_with(&data_dir) {
        eprintln!(
            "warning: the key file {} is inside the data dir; a backup of the data will hold the key",
            key_file.display()
        );
    }
    let _lock = DataDirLock::acquire(&data_dir, "initialise it")?;
    let master = MasterKey::generate();
    if data_dir.join(crate::store::DB_FILE).exists() {
        anyhow::bail!("{} already holds a tumbler store; choose an empty data dir", data_dir.display());
    }
    keyfile::write_new_key_file(&key_file, &master)?;
    let store = Store::create(&data_dir, master)?;
    let root = store
        .write(|tx, keys| {
            let minted = auth::mint_root(tx, keys)?;
            audit::append_offline(tx, keys, Entry::event(EntryKind::Operator, "token.create", "root", "ok"))?;
            Ok(minted)
        })
        .await?;
    let token = Zeroizing::new(root.token);
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "root_token": token.as_str(),
                "key_file": key_file,
                "data_dir": data_dir,
            })
        ),
        Output::Table => {
            println!("Initialised {}", data_dir.display());
            println!("Master key file: {} (mode 0600; keep it apart from backups of the data dir)", key_file.display());
            println!("Root token (shown once, store it safely): {}", token.as_str());
        }
    }
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Walk the audit chain and report the first broken link (exit 1), or
    /// a summary (exit 0). Only reads, so it may run beside a server.
    Verify {
        #[arg(long, env = "TUMBLER_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        key_file: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

pub fn audit(cmd: AuditCommand, env_key: Option<Zeroizing<String>>) -> anyhow::Result<()> {
    let AuditCommand::Verify { data_dir, key_file, output } = cmd;
    let source = KeySource::choose(&data_dir, key_file, env_key)?;
    let master = source.load(&data_dir)?;
    let (verdict, journaled) = audit::verify::verify_data_dir(&data_dir, &master)?;
    match (&verdict, output) {
        (Ok(s), Output::Json) => println!(
            "{}",
            serde_json::json!({"intact": true, "records": s.records, "journaled": journaled,
                "first_time": s.first_time.map(rfc3339), "last_time": s.last_time.map(rfc3339)})
        ),
        (Err(b), Output::Json) => {
            println!("{}", serde_json::json!({"intact": false, "broken_at": b.seq, "problem": b.problem}))
        }
        (Ok(s), Output::Table) => match (s.first_time, s.last_time) {
            (Some(first), Some(last)) => println!(
                "audit log intact: {} records ({} to {}), chain head matches",
                s.records,
                rfc3339(first),
                rfc3339(last)
            ),
            _ => println!("audit log intact: no records yet, chain head matches"),
        },
        (Err(b), Output::Table) => println!("audit log BROKEN at record {}: {}", b.seq, b.problem),
    }
    if output == Output::Table {
        match journaled {
            Some(0) => {}
            Some(n) => println!(
                "{n} more records are in the journal (the server stopped without folding them); \
                 they are added to the chain at the next start"
            ),
            None => println!("a server is running: records it has answered may still be in its journal"),
        }
    }
    match verdict {
        Ok(_) => Ok(()),
        Err(b) => anyhow::bail!("the audit log does not verify (first broken link: record {})", b.seq),
    }
}

pub fn operator(cmd: OperatorCommand, env_key: Option<Zeroizing<String>>) -> anyhow::Result<()> {
    match cmd {
        OperatorCommand::RotateMasterKey { data_dir, key_file } => {
            let source = KeySource::choose(&data_dir, key_file, env_key)?;
            println!("{}", keyfile::rotate_master_key(&data_dir, &source)?);
            Ok(())
        }
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir()?.join(p) })
}
