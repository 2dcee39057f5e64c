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
    // 2: the audit log, a hash chain (see audit/chain.rs). Its head is also
    // kept in `meta`, outside the table, so a cut-off tail is detected.
    r#"
    CREATE TABLE audit (
        seq        INTEGER PRIMARY KEY,
        time       INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        request_id TEXT NOT NULL,
        token_id   TEXT NOT NULL,
        token_name TEXT NOT NULL,
        client     TEXT NOT NULL,
        action     TEXT NOT NULL,
        resource   TEXT NOT NULL,
        status     INTEGER,
        outcome    TEXT NOT NULL,
        detail     TEXT NOT NULL,
        prev_mac   BLOB NOT NULL,
        mac        BLOB NOT NULL
    );
    INSERT INTO meta (key, value) VALUES ('audit_head', '0:');
    "#,
    // 3: registered plugin versions (the component bytes; the compiled form
    // is cached on disk, keyed by sha256).
    r#"
    CREATE TABLE plugins (
        name       TEXT NOT NULL,
        version    INTEGER NOT NULL,
        sha256     TEXT NOT NULL,
        wasm       BLOB NOT NULL,
        info       TEXT NOT NULL,
        builtin    INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    );
    "#,
    // 4: SSH host keys recorded on first use, for grants that opt into it
    // ("host:port tofu"), enforced on every later connection.
    r#"
    CREATE TABLE ssh_known_hosts (
        target      TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        first_seen  INTEGER NOT NULL
    );
    "#,
    // 5: rotation. One config per secret (the plugin pinned by sha256, the
    // schedule, the next due time the scheduler sleeps towards, indexed so
    // it never scans), the rotations themselves (a persisted state machine;
    // at most one running per secret) and each step attempt with its plugin
    // log and error text sealed under the secret's data key.
    r#"
    CREATE TABLE rotation_configs (
        secret_id      INTEGER PRIMARY KEY REFERENCES secrets (id) ON DELETE CASCADE,
        plugin         TEXT NOT NULL,
        plugin_version INTEGER NOT NULL,
        plugin_sha256  TEXT NOT NULL,
        schedule       TEXT NOT NULL,
        window_ms      INTEGER NOT NULL,
        params         TEXT NOT NULL,
        grants         TEXT NOT NULL,
        max_attempts   INTEGER NOT NULL,
        next_slot      INTEGER,
        next_due       INTEGER,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    );
    CREATE INDEX rotation_configs_due ON rotation_configs (next_due) WHERE next_due IS NOT NULL;
    CREATE INDEX rotation_configs_plugin ON rotation_configs (plugin, plugin_version);

    CREATE TABLE rotations (
        id              TEXT PRIMARY KEY,
        secret_id       INTEGER NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
        trigger         TEXT NOT NULL,
        status          TEXT NOT NULL,
        step            TEXT NOT NULL,
        attempt         INTEGER NOT NULL,
        retry_at        INTEGER,
        generation      INTEGER NOT NULL,
        from_version    TEXT,
        pending_version TEXT,
        fell_off        TEXT,
        labels_moved    INTEGER NOT NULL DEFAULT 0,
        plugin          TEXT NOT NULL,
        plugin_version  INTEGER NOT NULL,
        plugin_sha256   TEXT NOT NULL,
        params          TEXT NOT NULL,
        grants          TEXT NOT NULL,
        max_attempts    INTEGER NOT NULL,
        scheduled_for   INTEGER,
        error_code      TEXT,
        error_nonce     BLOB,
        error_sealed    BLOB,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        finished_at     INTEGER
    );
    CREATE UNIQUE INDEX rotations_one_running ON rotations (secret_id) WHERE status = 'running';
    CREATE INDEX rotations_history ON rotations (secret_id, created_at);

    CREATE TABLE rotation_attempts (
        rotation_id  TEXT NOT NULL REFERENCES rotations (id) ON DELETE CASCADE,
        seq          INTEGER NOT NULL,
        step         TEXT NOT NULL,
        attempt      INTEGER NOT NULL,
        started_at   INTEGER NOT NULL,
        finished_at  INTEGER,
        outcome      TEXT,
        log_nonce    BLOB,
        log_sealed   BLOB,
        error_nonce  BLOB,
        error_sealed BLOB,
        PRIMARY KEY (rotation_id, seq)
    );
    "#,
    // 6: dynamic roles and their leases; the reason a break glass gave.
    // A role has its own data key (wrapped under the negative of its id, so
    // it can never pass for a secret's); lease revoke handles are sealed
    // under it. A lease pins the plugin and params it was issued with, so
    // it is revoked the way it was made even if the role changes later.
    r#"
    CREATE TABLE roles (
        id             INTEGER PRIMARY KEY,
        name           TEXT NOT NULL UNIQUE,
        plugin         TEXT NOT NULL,
        plugin_version INTEGER NOT NULL,
        plugin_sha256  TEXT NOT NULL,
        params         TEXT NOT NULL,
        grants         TEXT NOT NULL,
        admin_secret   TEXT NOT NULL,
        default_ttl    INTEGER NOT NULL,
        max_ttl        INTEGER NOT NULL,
        max_leases     INTEGER NOT NULL,
        dek_wrapped    BLOB NOT NULL,
        dek_kek_id     TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    );

    CREATE TABLE leases (
        id              TEXT PRIMARY KEY,
        role_id         INTEGER NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
        token_id        TEXT NOT NULL,
        token_name      TEXT NOT NULL,
        plugin          TEXT NOT NULL,
        plugin_sha256   TEXT NOT NULL,
        params          TEXT NOT NULL,
        grants          TEXT NOT NULL,
        state           TEXT NOT NULL CHECK (state IN ('issuing', 'active', 'revoke_pending', 'revoked')),
        issued_at       INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        max_expires_at  INTEGER NOT NULL,
        handle_nonce    BLOB,
        handle_sealed   BLOB,
        revoke_reason   TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        last_error      TEXT,
        revoked_at      INTEGER
    );
    CREATE INDEX leases_expiry ON leases (state, expires_at);
    CREATE INDEX leases_retry ON leases (state, next_attempt_at);
    CREATE INDEX leases_role ON leases (role_id, state);
    CREATE INDEX leases_token ON leases (token_id, state);

    ALTER TABLE rotations ADD COLUMN reason TEXT;
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
        let tables: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0)).unwrap();
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
