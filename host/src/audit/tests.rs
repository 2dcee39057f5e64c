use super::verify::{Break, ChainCheck, check_store};
use super::*;
use crate::alerts::Alerts;
use crate::store::{DB_FILE, test_store};
use rusqlite::Connection;

fn entry(n: usize) -> Entry {
    Entry::event(EntryKind::Request, "secret.read", &format!("app/s{n}"), "ok").with_detail("n", n)
}

/// A direct connection to the store's file, as someone with disk access has.
fn raw(dir: &tempfile::TempDir) -> Connection {
    Connection::open(dir.path().join(DB_FILE)).unwrap()
}

async fn fill(store: &Store, n: usize) {
    store
        .write(move |tx, keys| {
            let entries: Vec<Entry> = (1..=n).map(entry).collect();
            chain::append(tx, &keys.audit, entries).map(|_| ())
        })
        .await
        .unwrap();
}

fn verdict(dir: &tempfile::TempDir, key: &[u8; 32]) -> Result<verify::Summary, Break> {
    check_store(&mut raw(dir), key).unwrap()
}

async fn key_of(store: &Store) -> [u8; 32] {
    store.read(|_, keys| Ok(*keys.audit)).await.unwrap()
}

#[tokio::test]
async fn an_untouched_chain_verifies() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    assert_eq!(verdict(&dir, &key).unwrap().records, 0);
    fill(&store, 5).await;
    fill(&store, 3).await;
    assert_eq!(verdict(&dir, &key).unwrap().records, 8);
    // Another key sees every MAC as wrong.
    assert_eq!(verdict(&dir, &[7; 32]).unwrap_err().seq, 1);
}

#[tokio::test]
async fn edits_deletions_reorders_and_cut_tails_are_found() {
    type Tamper = fn(&Connection);
    let cases: &[(&str, Tamper, i64)] = &[
        (
            "edit",
            |c| {
                c.execute("UPDATE audit SET resource = 'other' WHERE seq = 4", []).unwrap();
            },
            4,
        ),
        (
            "delete in the middle",
            |c| {
                c.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
            },
            3,
        ),
        (
            "swap two records",
            |c| {
                c.execute_batch(
                    "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 5;
                 UPDATE audit SET seq = 5 WHERE seq = -1;",
                )
                .unwrap();
            },
            2,
        ),
        (
            "cut the tail",
            |c| {
                c.execute("DELETE FROM audit WHERE seq > 6", []).unwrap();
            },
            7,
        ),
        (
            "replace the head's MAC",
            |c| {
                c.execute("UPDATE meta SET value = '8:' || hex(zeroblob(32)) WHERE key = 'audit_head'", []).unwrap();
            },
            8,
        ),
        (
            "drop the head",
            |c| {
                c.execute("DELETE FROM meta WHERE key = 'audit_head'", []).unwrap();
            },
            9,
        ),
    ];
    for (what, tamper, seq) in cases {
        let (dir, store) = test_store();
        let key = key_of(&store).await;
        fill(&store, 8).await;
        tamper(&raw(&dir));
        let broken = verdict(&dir, &key).expect_err(what);
        assert_eq!(broken.seq, *seq, "{what}: {broken:?}");
    }
}

#[tokio::test]
async fn a_chain_recomputed_without_the_key_is_found() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    fill(&store, 6).await;
    // Rewrite record 3 and re-MAC it and every later link with a guessed key.
    let wrong = [9u8; 32];
    let conn = raw(&dir);
    conn.execute("UPDATE audit SET token_name = 'someone-else' WHERE seq = 3", []).unwrap();
    let mut prev: Vec<u8> = conn.query_row("SELECT mac FROM audit WHERE seq = 2", [], |r| r.get(0)).unwrap();
    for seq in 3..=6 {
        let mut r = chain::list(&conn, seq - 1, 1).unwrap().remove(0);
        r.prev_mac = prev.clone();
        r.mac = r.expected_mac(&wrong, &prev);
        conn.execute(
            "UPDATE audit SET prev_mac = ?1, mac = ?2 WHERE seq = ?3",
            rusqlite::params![r.prev_mac, r.mac, seq],
        )
        .unwrap();
        prev = r.mac;
    }
    let head = format!("6:{}", hex::encode(&prev));
    conn.execute("UPDATE meta SET value = ?1 WHERE key = 'audit_head'", [head]).unwrap();
    let broken = verdict(&dir, &key).unwrap_err();
    assert_eq!(broken.seq, 3, "{broken:?}");
    assert!(broken.problem.contains("MAC"), "{broken:?}");
}

/// `n` tasks, each appending one entry through group commit.
fn appending(log: &AuditLog, n: usize, durability: Durability) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    (0..n)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append_with(entry(i), durability).await })
        })
        .collect()
}

#[tokio::test]
async fn group_commit_writes_every_record_once_in_one_chain() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    let log = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    let tasks = appending(&log, 300, Durability::Full);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(verdict(&dir, &key).unwrap().records, 300);
    let resources: std::collections::BTreeSet<String> =
        store.read(|c, _| Ok(chain::list(c, 0, 1000)?.into_iter().map(|r| r.resource).collect())).await.unwrap();
    assert_eq!(resources.len(), 300);
}

#[tokio::test]
async fn close_commits_what_is_queued_then_refuses_more() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    let log = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    // Fifty appends queue (on this one-thread runtime each runs up to its
    // wait for the commit when this task yields), then the log is closed
    // before any of them is awaited.
    let queued = appending(&log, 50, Durability::Normal);
    tokio::task::yield_now().await;
    log.close().await;
    for t in queued {
        t.await.unwrap().expect("a record queued before close is committed");
    }
    assert_eq!(verdict(&dir, &key).unwrap().records, 50);
    let err = log.append(entry(99)).await.unwrap_err();
    assert_eq!(err.kind, Kind::Unavailable, "{err}");
    assert!(err.message().contains("shutting down"), "{err}");
    assert_eq!(verdict(&dir, &key).unwrap().records, 50, "nothing written after close");
    // Closing twice is harmless.
    log.close().await;
}

#[tokio::test]
async fn a_mutation_whose_record_cannot_be_written_changes_nothing() {
    let (dir, store) = test_store();
    let log = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    raw(&dir)
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END;")
        .unwrap();
    let audit = RequestAudit::new(log.clone(), "req_1", "127.0.0.1:1", "test".into());
    let err = audit
        .write(|tx, _| {
            tx.execute("INSERT INTO meta (key, value) VALUES ('marker', 'x')", [])?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind, Kind::Unavailable, "{err}");
    let marker: i64 = raw(&dir).query_row("SELECT count(*) FROM meta WHERE key = 'marker'", [], |r| r.get(0)).unwrap();
    assert_eq!(marker, 0, "the mutation rolled back with its record");
    // The failure is final for this request: nothing more is attempted.
    audit.finish(axum::http::StatusCode::SERVICE_UNAVAILABLE, Some("unavailable"), Durability::Full).await.unwrap();
    // A read's record goes through group commit and fails the same way.
    let read = RequestAudit::new(log, "req_2", "127.0.0.1:1", "test".into());
    let err = read.finish(axum::http::StatusCode::OK, None, Durability::Normal).await.unwrap_err();
    assert_eq!(err.kind, Kind::Unavailable);
}

#[tokio::test]
async fn a_mutation_and_its_record_commit_together() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    let log = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    let audit = RequestAudit::new(log, "req_9", "10.0.0.1:5000", "test".into());
    audit.set_caller("tok_1", "ci");
    audit.target("secret.create", "app/db");
    audit.write_with_status(|_| axum::http::StatusCode::CREATED, |_, _| Ok(())).await.unwrap();
    // Already written: finish adds nothing.
    audit.finish(axum::http::StatusCode::CREATED, None, Durability::Full).await.unwrap();
    assert_eq!(verdict(&dir, &key).unwrap().records, 1);
    let r = store.read(|c, _| chain::list(c, 0, 10)).await.unwrap().remove(0);
    assert_eq!(
        (r.request_id.as_str(), r.token_id.as_str(), r.token_name.as_str(), r.client.as_str()),
        ("req_9", "tok_1", "ci", "10.0.0.1:5000")
    );
    assert_eq!(
        (r.action.as_str(), r.resource.as_str(), r.status, r.outcome.as_str()),
        ("secret.create", "app/db", Some(201), "ok")
    );
}

#[tokio::test]
async fn rekey_moves_the_chain_to_the_new_key_and_refuses_a_broken_one() {
    let (dir, store) = test_store();
    let old = key_of(&store).await;
    fill(&store, 4).await;
    let new = [5u8; 32];
    store.write(move |tx, _| chain::rekey(tx, &old, &new)).await.unwrap();
    assert_eq!(verdict(&dir, &new).unwrap().records, 4);
    assert!(verdict(&dir, &old).is_err());

    raw(&dir).execute("UPDATE audit SET action = 'x' WHERE seq = 2", []).unwrap();
    let err = store.write(move |tx, _| chain::rekey(tx, &new, &old)).await.unwrap_err();
    assert!(err.message().contains("record 2"), "{err}");
}

#[test]
fn chain_check_reports_the_first_break() {
    let key = [1u8; 32];
    let mut check = ChainCheck::new(&key);
    let mut prev = chain::GENESIS.to_vec();
    let mut records = Vec::new();
    for seq in 1..=3 {
        let mut r = Record {
            seq,
            time: seq,
            kind: "request".into(),
            request_id: String::new(),
            token_id: String::new(),
            token_name: String::new(),
            client: String::new(),
            action: "a".into(),
            resource: String::new(),
            status: None,
            outcome: "ok".into(),
            detail: "{}".into(),
            prev_mac: prev.clone(),
            mac: Vec::new(),
        };
        r.mac = r.expected_mac(&key, &prev);
        prev = r.mac.clone();
        records.push(r);
    }
    check.next(&records[0]).unwrap();
    let err = check.next(&records[2]).unwrap_err();
    assert_eq!(err.seq, 2);
    assert!(err.problem.contains("deleted"), "{err:?}");
}

#[tokio::test]
async fn reads_are_answered_from_the_journal_and_folded_into_the_chain() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    let log = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    for i in 0..100 {
        log.append_with(entry(i), Durability::Normal).await.unwrap();
    }
    // `flush` is what `GET /v1/audit` does first: every answered read is then in the table.
    log.flush().await.unwrap();
    assert_eq!(verdict(&dir, &key).unwrap().records, 100);
    let resources: Vec<String> =
        store.read(|c, _| Ok(chain::list(c, 0, 1000)?.into_iter().map(|r| r.resource).collect())).await.unwrap();
    assert_eq!(resources, (0..100).map(|i| format!("app/s{i}")).collect::<Vec<_>>(), "in the order answered");
    // The fold thread folds without being asked.
    log.append_with(entry(100), Durability::Normal).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while verdict(&dir, &key).unwrap().records < 101 {
        assert!(std::time::Instant::now() < deadline, "the journal was not folded");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn records_a_killed_process_left_in_the_journal_go_into_the_chain_at_start() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    fill(&store, 2).await;
    // What a killed server leaves: entries in the journal, never folded.
    let journal = journal::recover(&store, None).unwrap();
    for i in 10..13 {
        assert!(journal.append(entry(i)).is_ok());
    }
    drop(journal);
    assert_eq!(verdict(&dir, &key).unwrap().records, 2);
    let log = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    assert_eq!(verdict(&dir, &key).unwrap().records, 5, "folded before anything else is recorded");
    let resources: Vec<String> =
        store.read(|c, _| Ok(chain::list(c, 0, 10)?.into_iter().map(|r| r.resource).collect())).await.unwrap();
    assert_eq!(resources, ["app/s1", "app/s2", "app/s10", "app/s11", "app/s12"]);
    // Once: a second start finds nothing left to fold.
    log.close().await;
    drop(log);
    let again = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    again.close().await;
    assert_eq!(verdict(&dir, &key).unwrap().records, 5);
}

#[tokio::test]
async fn a_fold_that_fails_keeps_its_records_and_reads_wait_for_commits_again() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    let log = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    raw(&dir)
        .execute_batch("CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END;")
        .unwrap();
    // Journaled (a killed process would lose nothing), then the fold fails.
    log.append_with(entry(1), Durability::Normal).await.unwrap();
    assert_eq!(log.flush().await.unwrap_err().kind, Kind::Unavailable);
    // From then on a read is answered only once its record is committed: refused.
    let err = log.append_with(entry(2), Durability::Normal).await.unwrap_err();
    assert_eq!(err.kind, Kind::Unavailable, "{err}");
    raw(&dir).execute_batch("DROP TRIGGER refuse").unwrap();
    // A commit that succeeds makes the journal usable again; the record
    // whose fold failed is still there and goes in.
    log.append_with(entry(3), Durability::Normal).await.unwrap();
    log.append_with(entry(4), Durability::Normal).await.unwrap();
    log.flush().await.unwrap();
    let mut resources: Vec<String> =
        store.read(|c, _| Ok(chain::list(c, 0, 10)?.into_iter().map(|r| r.resource).collect())).await.unwrap();
    resources.sort();
    assert_eq!(resources, ["app/s1", "app/s3", "app/s4"]);
    assert_eq!(verdict(&dir, &key).unwrap().records, 3);
}

#[tokio::test]
async fn a_damaged_journal_does_not_stop_the_start_and_the_damage_is_in_the_chain() {
    let (dir, store) = test_store();
    let key = key_of(&store).await;
    let journal = journal::recover(&store, None).unwrap();
    for i in 20..23 {
        assert!(journal.append(entry(i)).is_ok());
    }
    drop(journal);
    // Someone edits the second record in the file (or a power cut tore it).
    let path = dir.path().join(journal::FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(7).position(|w| w == b"app/s21").unwrap();
    bytes[at + 6] = b'9';
    std::fs::write(&path, &bytes).unwrap();

    let log = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    log.close().await;
    let records = store.read(|c, _| chain::list(c, 0, 10)).await.unwrap();
    let actions: Vec<(&str, &str)> = records.iter().map(|r| (r.action.as_str(), r.resource.as_str())).collect();
    assert_eq!(actions, [("secret.read", "app/s20"), ("audit.journal_damaged", "audit.journal")], "{records:?}");
    let damage = &records[1];
    assert_eq!(damage.kind, "system");
    assert_eq!(damage.outcome, "damaged");
    assert!(damage.detail.contains("\"problem\":\"a record whose MAC does not match\""), "{}", damage.detail);
    assert!(damage.detail.contains("\"records_recovered\":\"1\""), "{}", damage.detail);
    assert_eq!(verdict(&dir, &key).unwrap().records, 2);
}
