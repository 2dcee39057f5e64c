//! Running one command over SSH. The target must be granted as
//! `host:port`; the host pins its host key.
//!
//! ```text
//! use tumbler_sdk::ssh::{self, Auth, Command};
//! use tumbler_sdk::SecretRef;
//!
//! // The host logs in with the current version's `username` and key.
//! let command = Command::new("web1", 22, "", Auth::FromSecret(SecretRef::Current), "cat >> ~/.ssh/authorized_keys")
//!     .stdin(public_key.into_bytes());
//! ssh::run(&command)?.check()?;
//! ```

use core::fmt;

use crate::redact::Redacted;
use crate::{SecretRef, StepError};

pub use crate::bindings::tumbler::rotator::ssh::{Output, run};

/// How to log in. `Debug` hides the password or key.
#[derive(Clone)]
pub enum Auth {
    Password(String),
    /// An OpenSSH private key (PEM text).
    PrivateKey(String),
    /// Username and key or password taken by the host from a secret.
    FromSecret(SecretRef),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Password(_) => f.debug_tuple("Password").field(&Redacted).finish(),
            Auth::PrivateKey(_) => f.debug_tuple("PrivateKey").field(&Redacted).finish(),
            Auth::FromSecret(secret) => f.debug_tuple("FromSecret").field(secret).finish(),
        }
    }
}

/// One command to run. `Debug` hides `stdin`, which often carries a secret.
#[derive(Clone)]
pub struct Command {
    pub host: String,
    pub port: u16,
    /// Ignored when `auth` is `FromSecret` (the secret's `username` is used).
    pub username: String,
    pub auth: Auth,
    pub command: String,
    pub stdin: Option<Vec<u8>>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("auth", &self.auth)
            .field("command", &self.command)
            .field("stdin", &self.stdin.as_ref().map(|_| Redacted))
            .finish()
    }
}

impl Command {
    pub fn new(
        host: impl Into<String>,
        port: u16,
        username: impl Into<String>,
        auth: Auth,
        command: impl Into<String>,
    ) -> Self {
        Command { host: host.into(), port, username: username.into(), auth, command: command.into(), stdin: None }
    }

    pub fn stdin(mut self, stdin: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }
}

/// How much of stderr a failed command's error quotes.
const STDERR_QUOTED: usize = 200;

impl Output {
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The output of a command that exited 0; otherwise a retryable error
    /// with the exit code and the end of stderr.
    pub fn check(self) -> Result<Output, StepError> {
        if self.succeeded() {
            return Ok(self);
        }
        let stderr = self.stderr_text();
        let stderr = stderr.trim();
        let tail_start = stderr.char_indices().rev().nth(STDERR_QUOTED - 1).map_or(0, |(i, _)| i);
        Err(StepError::retryable(format!("command exited with {}: {}", self.exit_code, &stderr[tail_start..])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_keys_and_stdin() {
        let command = Command::new("web1", 22, "deploy", Auth::PrivateKey("KEY-MATERIAL".into()), "true")
            .stdin("PASSWORD-ON-STDIN");
        let shown = format!("{command:?}");
        assert!(shown.contains("web1") && !shown.contains("KEY-MATERIAL") && !shown.contains("PASSWORD"), "{shown}");
    }

    #[test]
    fn a_failed_command_quotes_the_end_of_stderr() {
        let mut stderr = "x".repeat(1000).into_bytes();
        stderr.extend_from_slice(b" permission denied\n");
        let output = Output { exit_code: 3, stdout: Vec::new(), stderr };
        let error = output.check().unwrap_err();
        assert!(error.is_retryable());
        assert!(error.message().starts_with("command exited with 3: "));
        assert!(error.message().ends_with("permission denied"));
        assert!(error.message().len() < 250);
        let ok = Output { exit_code: 0, stdout: b"hi".to_vec(), stderr: Vec::new() };
        assert_eq!(ok.check().unwrap().stdout_text(), "hi");
    }
}
