//! Alerts: what operators must hear about before users do (a rotation that
//! failed for good, a break glass, an audit log that cannot be written) is
//! logged and, with `serve --alert-webhook URL`, POSTed there as JSON,
//! retried with exponential backoff. An alert carries a kind, a secret name
//! and an error code: never a value, a token or plugin text. Webhook URLs
//! often hold a credential in their path, so the URL is never logged.

use crate::error::{Error, Result};
use crate::metrics::metrics;
use crate::model::{now_millis, rfc3339};
use rand::RngCore;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How delivery is retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        // About 8 minutes of trying: long enough to ride out a receiver's restart.
        Retry {
            attempts: 8,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(120),
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// The same on every retry, so a receiver can drop duplicates.
    pub id: String,
    pub kind: &'static str,
    pub severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_id: Option<String>,
    /// An error code (`plugin_failed`, `timeout`...), never free text from a plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Written by tumbler, from fixed text and the fields above.
    pub summary: String,
    pub time: String,
}

impl Alert {
    fn new(kind: &'static str, severity: &'static str, summary: String) -> Alert {
        let mut id = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut id);
        Alert {
            id: format!("alert_{}", hex::encode(id)),
            kind,
            severity,
            secret: None,
            rotation_id: None,
            code: None,
            summary,
            time: rfc3339(now_millis()),
        }
    }

    /// The audit log cannot be written, so the server refuses requests.
    pub fn audit_unavailable() -> Alert {
        Alert::new(
            "audit_unavailable",
            "critical",
            "the audit log cannot be written: tumbler refuses requests (503) until it can".into(),
        )
    }
}

// Raised by the rotation engine and break glass as they land.
impl Alert {
    /// A rotation ran out of attempts. Before `finish` the pending version
    /// was dropped and `current` is untouched; in `finish` the labels had
    /// already moved (the engine moves them as `finish` starts), so
    /// `current` is the new, tested value and only the cleanup is missing.
    pub fn rotation_failed(secret: &str, rotation_id: &str, step: &str, code: &str) -> Alert {
        let state = if step == "finish" {
            "current is the new, tested version; removing the old credential did not complete"
        } else {
            "current is unchanged"
        };
        let mut a = Alert::new(
            "rotation_failed",
            "critical",
            format!("rotation of '{secret}' failed at step {step} ({code}); {state}"),
        );
        a.secret = Some(secret.into());
        a.rotation_id = Some(rotation_id.into());
        a.code = Some(code.into());
        a
    }

    /// Someone broke the glass on a secret.
    pub fn break_glass(secret: &str, token_name: &str) -> Alert {
        let mut a = Alert::new(
            "break_glass",
            "critical",
            format!(
                "break glass on '{secret}' by token '{token_name}': rotating now and revoking every older credential"
            ),
        );
        a.secret = Some(secret.into());
        a
    }
}

/// Where alerts go: always the log, and the webhook when one is set.
#[derive(Clone, Default)]
pub struct Alerts {
    webhook: Option<Arc<Webhook>>,
}

struct Webhook {
    url: reqwest::Url,
    client: reqwest::Client,
    retry: Retry,
}

impl Alerts {
    pub fn new(url: Option<&str>, retry: Retry) -> Result<Alerts> {
        let Some(url) = url else {
            return Ok(Alerts::default());
        };
        let url =
            reqwest::Url::parse(url).map_err(|e| Error::invalid(format!("--alert-webhook is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::invalid("--alert-webhook must be an http:// or https:// URL with a host"));
        }
        let client = reqwest::Client::builder()
            .timeout(retry.timeout)
            // The receiver is the operator's; a redirect elsewhere is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| Error::internal(format!("cannot build the webhook client: {e}")))?;
        Ok(Alerts { webhook: Some(Arc::new(Webhook { url, client, retry })) })
    }

    /// Logs the alert and delivers it in the background; never blocks the caller.
    pub fn raise(&self, alert: Alert) {
        tracing::warn!(
            alert_id = %alert.id,
            kind = alert.kind,
            secret = alert.secret.as_deref().unwrap_or(""),
            code = alert.code.as_deref().unwrap_or(""),
            summary = %alert.summary,
            "alert"
        );
        let Some(webhook) = self.webhook.clone() else {
            metrics().alerts.inc(&[alert.kind, "not_configured"]);
            return;
        };
        tokio::spawn(async move {
            let outcome = match deliver(&webhook, &alert).await {
                Ok(attempts) => {
                    tracing::info!(alert_id = %alert.id, attempts, "alert delivered to the webhook");
                    "delivered"
                }
                Err(e) => {
                    tracing::error!(alert_id = %alert.id, error = %e, "alert could not be delivered to the webhook");
                    "failed"
                }
            };
            metrics().alerts.inc(&[alert.kind, outcome]);
        });
    }
}

/// POSTs `alert` until the receiver answers 2xx, retrying connection
/// errors, timeouts, 408, 429 and 5xx with exponential backoff. Returns
/// the number of attempts it took.
async fn deliver(webhook: &Webhook, alert: &Alert) -> Result<u32, String> {
    let mut delay = webhook.retry.first_delay;
    let mut last = String::new();
    for attempt in 1..=webhook.retry.attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(webhook.retry.max_delay);
        }
        match webhook.client.post(webhook.url.clone()).json(alert).send().await {
            Ok(r) if r.status().is_success() => return Ok(attempt),
            Ok(r) => {
                let status = r.status();
                last = format!("the receiver answered {status}");
                let retryable = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
                if !retryable {
                    return Err(last);
                }
            }
            // Without the URL: it may hold the webhook's credential.
            Err(e) => last = e.without_url().to_string(),
        }
        tracing::warn!(alert_id = %alert.id, attempt, error = %last, "alert delivery failed; retrying");
    }
    Err(format!("gave up after {} attempts: {last}", webhook.retry.attempts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-connection-at-a-time HTTP receiver answering with `statuses`
    /// in turn; returns the request bodies it saw.
    async fn receiver(statuses: Vec<u16>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook/s3cret-path", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for status in statuses {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    let n = conn.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break body.to_owned();
                        }
                    }
                    assert!(n > 0, "connection closed early");
                };
                bodies.push(body);
                let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                conn.write_all(reply.as_bytes()).await.unwrap();
            }
            bodies
        });
        (url, task)
    }

    fn fast() -> Retry {
        Retry {
            attempts: 4,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn alerts_are_retried_until_delivered() {
        let (url, received) = receiver(vec![503, 500, 200]).await;
        let alerts = Alerts::new(Some(&url), fast()).unwrap();
        let webhook = alerts.webhook.clone().unwrap();
        let alert = Alert::rotation_failed("db/prod/main", "rot_1", "set", "plugin_failed");
        assert_eq!(deliver(&webhook, &alert).await, Ok(3));
        let bodies = received.await.unwrap();
        assert_eq!(bodies.len(), 3);
        for body in &bodies {
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["kind"], "rotation_failed");
            assert_eq!(json["secret"], "db/prod/main");
            assert_eq!(json["code"], "plugin_failed");
            assert_eq!(json["id"], alert.id.as_str(), "retries carry the same id");
        }
    }

    #[tokio::test]
    async fn a_refusing_receiver_is_not_retried_and_errors_hide_the_url() {
        let (url, received) = receiver(vec![400]).await;
        let alerts = Alerts::new(Some(&url), fast()).unwrap();
        let webhook = alerts.webhook.clone().unwrap();
        let err = deliver(&webhook, &Alert::audit_unavailable()).await.unwrap_err();
        assert!(err.contains("400"), "{err}");
        assert_eq!(received.await.unwrap().len(), 1);

        // Nobody listens on this port any more: connection errors, no URL in the message.
        let err = deliver(&webhook, &Alert::audit_unavailable()).await.unwrap_err();
        assert!(err.contains("gave up after 4 attempts"), "{err}");
        assert!(!err.contains("s3cret-path"), "{err}");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Alerts::new(Some("ftp://example.test/x"), Retry::default()).is_err());
        assert!(Alerts::new(Some("not a url"), Retry::default()).is_err());
        assert!(Alerts::new(None, Retry::default()).unwrap().webhook.is_none());
    }
}
