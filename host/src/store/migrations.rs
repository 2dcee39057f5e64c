//! Forward-only schema migrations, tracked in SQLite's `user_version`.
//! Append a new entry to change the schema; never edit a shipped one.

use crate::error::{Error, Result};
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: secrets, versions, labels, tokens, policies.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);

    CREATE TABLE secrets (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        tags        TEXT NOT NULL DEFAULT '{}',
        dek_wrapped BLOB NOT NULL,
        dek_kek_id  TEXT NOT NULL,
        generation  INTEGER NOT NULL DEFAULT 1,
        next_seq    INTEGER NOT NULL DEFAULT 1,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        deleted_at  INTEGER,
        purge_at    INTEGER
    );
    CREATE INDEX secrets_purge ON secrets (purge_at) WHERE purge_at IS NOT NULL;

    CREATE TABLE versions (
        id               TEXT PRIMARY KEY,
        secret_id        INTEGER NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
        seq              INTEGER NOT NULL,
        nonce            BLOB NOT NULL,
        ciphertext       BLOB NOT NULL,
        client_token_mac BLOB,
        value_mac        BLOB,
        created_at       INTEGER NOT NULL,
        UNIQUE (secret_id, seq)
    );
    CREATE UNIQUE INDEX versions_client_token
        ON versions (secret_id, client_token_mac) WHERE client_token_mac IS NOT NULL;

    CREATE TABLE labels (
        secret_id  INTEGER NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
        label      TEXT NOT NULL,
        version_id TEXT NOT NULL REFERENCES versions (id) ON DELETE CASCADE,
        PRIMARY KEY (secret_id, label)
    );
    CREATE INDEX labels_version ON labels (version_id);

    CREATE TABLE policies (
        name       TEXT PRIMARY KEY,
        rules      TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );

    CREATE TABLE tokens (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        hash       BLOB NOT NULL UNIQUE,
        policies   TEXT NOT NULL,
        parent_id  TEXT,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
    );
    CREATE INDEX tokens_parent ON tokens (parent_id);
    "#,
];

pub fn apply(conn: &Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(Error::internal(format!(
            "the store has schema version {current}, newer than this binary knows ({}); \
             run a newer tumbler",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_from_an_empty_file_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        apply(&conn).unwrap();
        apply(&conn).unwrap();
        let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))
            .unwrap();
        assert!(tables >= 6);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(apply(&conn).is_err());
    }
}
