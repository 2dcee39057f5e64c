//! The state machine's transitions against a real store, without plugins:
//! each test plays the part of the executor.

use super::state::{self, Backoff, Cursor, Failure, Next, Outcome, Pinned, Status, Trigger};
use crate::alerts::Alerts;
use crate::audit::AuditLog;
use crate::error::Kind;
use crate::model::{Label, SecretName, SecretValue};
use crate::plugins::Step;
use crate::store::secrets::{self, NewSecret, Selector};
use crate::store::{Store, test_store};
use zeroize::Zeroizing;

const BACKOFF: Backoff = Backoff { base_ms: 10, max_ms: 100 };

fn name() -> SecretName {
    SecretName::parse("app/db").unwrap()
}

fn value(s: &str) -> SecretValue {
    SecretValue::parse(Zeroizing::new(s.to_owned())).unwrap()
}

fn pinned(max_attempts: u32) -> Pinned {
    Pinned {
        plugin: "noop".into(),
        plugin_version: 1,
        plugin_sha256: "00".into(),
        params: "{}".into(),
        grants: "{}".into(),
        max_attempts,
    }
}

async fn setup() -> (tempfile::TempDir, Store, AuditLog) {
    let (dir, store) = test_store();
    store
        .write(|tx, keys| {
            let new = NewSecret::new(name(), value("v0"));
            secrets::create(tx, keys, new).map(|_| ())
        })
        .await
        .unwrap();
    let audit = AuditLog::start(store.clone(), None, Alerts::default()).unwrap();
    (dir, store, audit)
}

async fn start(store: &Store, max_attempts: u32) -> String {
    store
        .write(move |tx, _| state::start(tx, &name(), &pinned(max_attempts), Trigger::Manual, None))
        .await
        .unwrap()
        .rotation_id
}

async fn begin(store: &Store, audit: &AuditLog, id: &str, cursor: Cursor) -> Next {
    let (a, i) = (audit.clone(), id.to_owned());
    store.write(move |tx, keys| state::begin(tx, keys, &a, &i, cursor)).await.unwrap()
}

async fn advance(store: &Store, audit: &AuditLog, id: &str, cursor: Cursor, outcome: Outcome) -> Next {
    let (a, i) = (audit.clone(), id.to_owned());
    store.write(move |tx, keys| state::advance(tx, keys, &a, &i, cursor, outcome, "log line", BACKOFF)).await.unwrap()
}

fn run(next: Next) -> Cursor {
    match next {
        Next::Run(p) => p.cursor,
        _ => panic!("expected the next step to run"),
    }
}

async fn label(store: &Store, l: &str) -> Option<String> {
    let l = l.to_owned();
    store
        .read(move |c, k| match secrets::read_value(c, k, &name(), &Selector::Label(Label::parse(&l)?)) {
            Ok(v) => Ok(Some(v.version_id)),
            Err(e) if e.kind == Kind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
        .unwrap()
}

async fn version_count(store: &Store) -> usize {
    store.read(|c, _| secrets::versions(c, &name())).await.unwrap().len()
}

#[tokio::test]
async fn four_steps_move_current_once_and_keep_the_old_value_as_previous() {
    let (_d, store, audit) = setup().await;
    let v0 = label(&store, "current").await.unwrap();
    let id = start(&store, 5).await;
    let c = run(begin(&store, &audit, &id, Cursor { step: Step::Create, attempt: 0 }).await);
    assert_eq!(c, Cursor { step: Step::Create, attempt: 1 });
    let c = run(advance(&store, &audit, &id, c, Outcome::Created(value("v1"))).await);
    assert_eq!(c.step, Step::Set);
    let pending = label(&store, "pending").await.unwrap();
    assert_eq!(label(&store, "current").await.unwrap(), v0, "current untouched until finish");
    let c = run(advance(&store, &audit, &id, c, Outcome::Done).await);
    assert_eq!(c.step, Step::Test);
    let c = run(advance(&store, &audit, &id, c, Outcome::Done).await);
    assert_eq!(c.step, Step::Finish);
    // The finish step's start moved the labels, in one transaction.
    assert_eq!(label(&store, "current").await.unwrap(), pending);
    assert_eq!(label(&store, "previous").await.unwrap(), v0);
    assert_eq!(label(&store, "pending").await, None);
    match advance(&store, &audit, &id, c, Outcome::Done).await {
        Next::Ended(e) => assert_eq!(e.status, Status::Succeeded),
        _ => panic!("expected the end"),
    }
    assert_eq!(version_count(&store).await, 2);
}

#[tokio::test]
async fn a_stale_executor_changes_nothing() {
    let (_d, store, audit) = setup().await;
    let id = start(&store, 5).await;
    let c = run(begin(&store, &audit, &id, Cursor { step: Step::Create, attempt: 0 }).await);
    let _set = run(advance(&store, &audit, &id, c, Outcome::Created(value("v1"))).await);
    // A second executor still believing it is in `create` is refused.
    assert!(matches!(advance(&store, &audit, &id, c, Outcome::Created(value("v2"))).await, Next::Stale));
    assert!(matches!(begin(&store, &audit, &id, c).await, Next::Stale));
    assert_eq!(version_count(&store).await, 2, "no second pending version");
}

#[tokio::test]
async fn a_crash_resumes_the_recorded_step_as_a_new_attempt() {
    let (_d, store, audit) = setup().await;
    let id = start(&store, 5).await;
    let c = run(begin(&store, &audit, &id, Cursor { step: Step::Create, attempt: 0 }).await);
    let set = run(advance(&store, &audit, &id, c, Outcome::Created(value("v1"))).await);
    // The process dies inside `set`; at start the row says set, attempt 1.
    let row = store
        .read({
            let id = id.clone();
            move |c, _| state::load(c, &id)
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.cursor(), set);
    let again = run(begin(&store, &audit, &id, row.cursor()).await);
    assert_eq!(again, Cursor { step: Step::Set, attempt: 2 });
    let record = store
        .read({
            let id = id.clone();
            move |c, k| state::record(c, k, state::load(c, &id)?.unwrap(), true)
        })
        .await
        .unwrap();
    let outcomes: Vec<_> = record.attempts.iter().map(|a| (a.step.clone(), a.outcome.clone())).collect();
    assert_eq!(outcomes[1], ("set".to_owned(), Some("interrupted".to_owned())));
    assert_eq!(version_count(&store).await, 2, "create did not run again");
}

#[tokio::test]
async fn retries_then_failure_drop_pending_and_leave_current() {
    let (_d, store, audit) = setup().await;
    let v0 = label(&store, "current").await.unwrap();
    let id = start(&store, 2).await;
    let c = run(begin(&store, &audit, &id, Cursor { step: Step::Create, attempt: 0 }).await);
    let c = run(advance(&store, &audit, &id, c, Outcome::Created(value("v1"))).await);
    let failure =
        || Outcome::Failed(Failure { code: "plugin_retryable".into(), message: "target down".into(), retryable: true });
    let Next::RetryAt(at) = advance(&store, &audit, &id, c, failure()).await else { panic!("expected a retry") };
    assert!(at > crate::model::now_millis() - 1000);
    let c = run(begin(&store, &audit, &id, c).await);
    assert_eq!(c.attempt, 2);
    match advance(&store, &audit, &id, c, failure()).await {
        Next::Ended(e) => {
            assert_eq!(e.status, Status::Failed);
            assert_eq!(e.error_code.as_deref(), Some("plugin_retryable"));
        }
        _ => panic!("expected the rotation to fail"),
    }
    assert_eq!(label(&store, "current").await.unwrap(), v0);
    assert_eq!(label(&store, "pending").await, None);
    assert_eq!(version_count(&store).await, 1, "the pending version was dropped");
    // The error text is sealed: shown only when revealed.
    let (hidden, shown) = store
        .read(move |c, k| {
            let row = || state::load(c, &id).map(Option::unwrap);
            Ok((state::record(c, k, row()?, false)?, state::record(c, k, row()?, true)?))
        })
        .await
        .unwrap();
    assert!(hidden.error.is_none() && hidden.attempts.iter().all(|a| a.log.is_none()));
    assert_eq!(shown.error.as_deref(), Some("target down"));
    assert_eq!(shown.attempts[1].log.as_deref(), Some("log line"));
}

#[tokio::test]
async fn pending_belongs_to_the_running_rotation() {
    let (_d, store, audit) = setup().await;
    let id = start(&store, 5).await;
    let c = run(begin(&store, &audit, &id, Cursor { step: Step::Create, attempt: 0 }).await);
    run(advance(&store, &audit, &id, c, Outcome::Created(value("v1"))).await);
    let pending = label(&store, "pending").await.unwrap();
    let e = store
        .write(|tx, k| secrets::put_version(tx, k, &name(), &value("x"), None, &[Label::parse("pending")?]))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind, Kind::Conflict);
    assert!(e.message().contains(&id), "{}", e.message());
    let p = pending.clone();
    let e = store.write(move |tx, _| secrets::move_label(tx, &name(), &Label::current(), &p)).await.err().unwrap();
    assert_eq!(e.kind, Kind::Conflict);
    // A new current is allowed, and then the rotation stops as superseded.
    store
        .write(|tx, k| secrets::put_version(tx, k, &name(), &value("manual"), None, &[Label::current()]))
        .await
        .unwrap();
    let set = Cursor { step: Step::Set, attempt: 1 };
    match advance(&store, &audit, &id, set, Outcome::Done).await {
        Next::Ended(e) => assert_eq!(e.error_code.as_deref(), Some("superseded")),
        _ => panic!("expected the rotation to stop"),
    }
    assert_eq!(label(&store, "pending").await, None);
    assert_eq!(
        store
            .read(|c, k| secrets::read_value(c, k, &name(), &Selector::Label(Label::current())))
            .await
            .unwrap()
            .value
            .expose(),
        "manual"
    );
}

#[tokio::test]
async fn a_metadata_change_does_not_stop_a_rotation() {
    let (_d, store, audit) = setup().await;
    let id = start(&store, 5).await;
    let c = run(begin(&store, &audit, &id, Cursor { step: Step::Create, attempt: 0 }).await);
    store.write(|tx, _| secrets::patch(tx, &name(), Some("new description".into()), None)).await.unwrap();
    assert_eq!(run(advance(&store, &audit, &id, c, Outcome::Created(value("v1"))).await).step, Step::Set);
}

#[tokio::test]
async fn one_rotation_per_secret() {
    let (_d, store, _audit) = setup().await;
    let first = start(&store, 5).await;
    let second = store.write(move |tx, _| state::start(tx, &name(), &pinned(5), Trigger::Manual, None)).await.unwrap();
    assert!(second.already_running);
    assert_eq!(second.rotation_id, first);
}
