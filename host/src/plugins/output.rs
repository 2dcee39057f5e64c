//! What a plugin says (stdout, stderr and the `log` import) captured into
//! one bounded buffer, with secret values redacted before anyone reads it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use zeroize::{Zeroize, Zeroizing};

/// Bytes of captured output kept per call.
pub const LOG_CAP: usize = 64 * 1024;
/// Extra bytes held before redaction so a value cut by the cap is still found.
const REDACTION_MARGIN: usize = 64 * 1024;
const REDACTED: &str = "[redacted]";

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

/// Shared by the guest's stdout, stderr and `log` calls.
#[derive(Clone, Default)]
pub struct CapturedOutput(Arc<Mutex<Buffer>>);

impl CapturedOutput {
    pub fn append(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = (LOG_CAP + REDACTION_MARGIN).saturating_sub(buf.bytes.len());
        let take = room.min(bytes.len());
        buf.bytes.extend_from_slice(&bytes[..take]);
        buf.dropped += bytes.len() - take;
    }

    pub fn line(&self, prefix: &str, message: &str) {
        let mut line = Zeroizing::new(String::with_capacity(prefix.len() + message.len() + 2));
        line.push_str(prefix);
        line.push_str(message);
        line.push('\n');
        self.append(line.as_bytes());
    }

    /// The captured text with every secret in `redact` replaced, cut to
    /// [`LOG_CAP`] bytes with a note saying how much was dropped.
    pub fn finish(&self, redact: &Redactions) -> String {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let text = Zeroizing::new(String::from_utf8_lossy(&buf.bytes).into_owned());
        let mut clean = redact.apply(&text);
        let mut dropped = buf.dropped;
        if clean.len() > LOG_CAP {
            let mut cut = LOG_CAP;
            while !clean.is_char_boundary(cut) {
                cut -= 1;
            }
            dropped += clean.len() - cut;
            clean.truncate(cut);
        }
        if dropped > 0 {
            clean.push_str(&format!("\n[log truncated at {LOG_CAP} bytes; {dropped} more bytes dropped]\n"));
        }
        buf.bytes.zeroize();
        clean
    }
}

/// Secret strings that must never appear in captured output.
#[derive(Default, Clone)]
pub struct Redactions(Vec<Zeroizing<String>>);

impl Redactions {
    /// Adds a value and, when it is a JSON object, each string field long
    /// enough to be a credential (a plugin may log just the password) —
    /// and so on into fields that are JSON objects themselves (an issued
    /// lease wraps the credential's JSON in a string).
    pub fn add(&mut self, value: &str) {
        self.add_nested(value, 3);
    }

    fn add_nested(&mut self, value: &str, depth: u8) {
        if value.is_empty() {
            return;
        }
        if depth > 0
            && let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(value)
        {
            for v in map.values() {
                if let serde_json::Value::String(s) = v
                    && s.len() >= 8
                {
                    self.add_nested(s, depth - 1);
                }
            }
        }
        self.0.push(Zeroizing::new(value.to_owned()));
    }

    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_owned();
        // Longest first, so a whole value is replaced before its fields.
        let mut secrets: Vec<&Zeroizing<String>> = self.0.iter().collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }
}

/// A guest stdout/stderr: always accepts, keeps what fits.
struct Sink(CapturedOutput);

impl AsyncWrite for Sink {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.0.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(Sink(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_their_json_fields_are_redacted() {
        let mut r = Redactions::default();
        r.add(r#"{"username":"app","password":"s3cr3t-pa55word"}"#);
        let out = CapturedOutput::default();
        out.line("info: ", "password is s3cr3t-pa55word");
        let text = out.finish(&r);
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains(REDACTED));
    }

    #[test]
    fn output_is_capped_with_a_note() {
        let out = CapturedOutput::default();
        for _ in 0..200 {
            out.append(&[b'x'; 64 * 1024]);
        }
        let text = out.finish(&Redactions::default());
        assert!(text.len() < LOG_CAP + 200);
        assert!(text.contains("log truncated"));
    }
}
