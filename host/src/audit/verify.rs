//! Walking the chain: every record must follow the one before it (seq + 1,
//! its `prev_mac`), carry the MAC of its contents, and the last one must be
//! the head kept in `meta`. Used by `tumbler audit verify` and before a
//! master key rotation re-MACs the chain.

use super::chain::{self, GENESIS, Head, Record};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::store;
use std::path::Path;
use subtle::ConstantTimeEq;

/// The first broken link: the seq where the chain stops holding, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: i64,
    pub problem: String,
}

/// What an intact chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: i64,
    pub first_time: Option<i64>,
    pub last_time: Option<i64>,
}

/// Checks records one at a time, in seq order.
pub struct ChainCheck<'k> {
    key: &'k [u8; 32],
    expected_seq: i64,
    prev_mac: Vec<u8>,
    summary: Summary,
}

impl<'k> ChainCheck<'k> {
    pub fn new(key: &'k [u8; 32]) -> Self {
        ChainCheck {
            key,
            expected_seq: 1,
            prev_mac: GENESIS.to_vec(),
            summary: Summary { records: 0, first_time: None, last_time: None },
        }
    }

    pub fn next(&mut self, r: &Record) -> Result<(), Break> {
        let seq = self.expected_seq;
        if r.seq != seq {
            let problem = if r.seq > seq {
                format!(
                    "expected record {seq} next but found record {}: records {seq}..{} were deleted",
                    r.seq,
                    r.seq - 1
                )
            } else {
                format!("found record {} where record {seq} belongs: the log was reordered", r.seq)
            };
            return Err(Break { seq, problem });
        }
        if !bool::from(r.prev_mac.ct_eq(&self.prev_mac)) {
            return Err(Break {
                seq,
                problem: "does not link to the record before it (its prev_mac differs from that record's MAC): \
                          a record was deleted, inserted or reordered"
                    .into(),
            });
        }
        if !bool::from(r.expected_mac(self.key, &self.prev_mac).ct_eq(&r.mac)) {
            return Err(Break {
                seq,
                problem: "its MAC does not match its contents: the record was edited, or written without the key"
                    .into(),
            });
        }
        self.prev_mac = r.mac.clone();
        self.expected_seq += 1;
        self.summary.records += 1;
        self.summary.first_time.get_or_insert(r.time);
        self.summary.last_time = Some(r.time);
        Ok(())
    }

    /// Compares the end of the walk with the head kept outside the table.
    pub fn finish(self, head: Option<&Head>) -> Result<Summary, Break> {
        let last = self.expected_seq - 1;
        let Some(head) = head else {
            return Err(Break { seq: last + 1, problem: "the chain head is missing from meta".into() });
        };
        if head.seq > last {
            return Err(Break {
                seq: last + 1,
                problem: format!(
                    "the log ends at record {last} but its head says {}: the last {} records were cut off",
                    head.seq,
                    head.seq - last
                ),
            });
        }
        if head.seq < last {
            return Err(Break {
                seq: head.seq + 1,
                problem: format!(
                    "the head says the log ends at record {} but records go on to {last}: they were added \
                     without the head moving",
                    head.seq
                ),
            });
        }
        if !bool::from(head.mac.ct_eq(&self.prev_mac)) {
            return Err(Break {
                seq: last,
                problem: "the last record's MAC differs from the head's: the tail was replaced".into(),
            });
        }
        Ok(self.summary)
    }
}

/// Walks a store's whole chain in one read transaction (a consistent
/// snapshot, so it may run beside a server: it only reads).
pub fn check_store(conn: &mut rusqlite::Connection, key: &[u8; 32]) -> Result<Result<Summary, Break>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
    let has_table: bool =
        tx.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit'", [], |r| {
            r.get(0)
        })?;
    if !has_table {
        return Err(Error::invalid(
            "this store has no audit log yet: start the server once (it upgrades the store) and verify again",
        ));
    }
    let head = chain::head(&tx)?;
    let mut check = ChainCheck::new(key);
    let mut broken = None;
    // A break ends the walk; the sentinel error only stops the iteration.
    let walked = chain::for_each(&tx, |record| match check.next(&record) {
        Ok(()) => Ok(()),
        Err(b) => {
            broken = Some(b);
            Err(Error::internal("stop"))
        }
    });
    if let Some(b) = broken {
        return Ok(Err(b));
    }
    walked?;
    Ok(check.finish(head.as_ref()))
}

/// `tumbler audit verify`: opens the store read-only with `master` and walks
/// the chain.
/// Also returns how many records wait in the journal (see
/// [`super::journal::unfolded`]; `None` while a server holds it).
pub fn verify_data_dir(data_dir: &Path, master: &MasterKey) -> Result<(Result<Summary, Break>, Option<usize>)> {
    store::check_master_key(data_dir, master)?;
    let mut conn = store::open_read_only(data_dir)?;
    let verdict = check_store(&mut conn, &store::audit_key(master))?;
    let journaled = super::journal::unfolded(data_dir, master, &conn)?;
    Ok((verdict, journaled))
}
