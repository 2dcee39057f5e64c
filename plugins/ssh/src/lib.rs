//! The built-in `ssh` rotator: the key pair a client logs in to a host
//! with. The value is JSON, `{"host", "port", "username", "private_key",
//! "public_key"}` (OpenSSH formats; other fields are kept).
//!
//! - `create` makes a new Ed25519 key pair here, from WASI randomness.
//! - `set` appends the new public key to the host's `authorized_keys`,
//!   logged in with the current key (once: a repeated `set` finds it).
//! - `test` logs in with the new key.
//! - `finish`, logged in with the new key, removes the key that fell off
//!   (the previous one stays valid until the next rotation); in an
//!   emergency, every key line but the new one.
//!
//! No step can leave the host without a working key: `set` only adds,
//! `test` only reads, and `finish` runs as the new key and writes the new
//! file (atomically, by rename) only if it still holds the new key.
//! Commands run in the login user's shell, which must be POSIX `sh`-like.
//! The host's key is pinned by the grant (`"host:port SHA256:..."`).

use serde::Deserialize;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey, PublicKey};
use tumbler_sdk::serde_json::{self, Map, Value, json};
use tumbler_sdk::ssh::{self, Auth, Command};
use tumbler_sdk::{Capability, ErrorKind, Info, Rotator, SecretRef, StepError, StepInput, Version, log};

struct Ssh;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The file sshd reads the user's keys from; `~/` is the user's home.
    #[serde(default = "default_authorized_keys")]
    authorized_keys: String,
    /// The new keys' comment (default `tumbler:<secret name>`).
    #[serde(default)]
    comment: Option<String>,
}

fn default_authorized_keys() -> String {
    "~/.ssh/authorized_keys".into()
}

/// Where a value logs in.
struct Target {
    host: String,
    port: u16,
}

/// A version's value as a JSON object.
fn fields(version: &Version) -> Result<Map<String, Value>, StepError> {
    match serde_json::from_str(&version.value) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(StepError::fatal(format!(
            "version {} is not a JSON object {{host, port, username, private_key, public_key}}",
            version.id
        ))),
    }
}

fn target(version: &Version) -> Result<Target, StepError> {
    let fields = fields(version)?;
    let host = fields
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| StepError::fatal(format!("version {} has no text field \"host\"", version.id)))?;
    let port = match fields.get("port") {
        None | Some(Value::Null) => 22,
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        Some(_) => 0,
    };
    if port == 0 {
        return Err(StepError::fatal(format!("field \"port\" of version {} is not a port number", version.id)));
    }
    if fields.get("username").and_then(Value::as_str).is_none() {
        return Err(StepError::fatal(format!("version {} has no text field \"username\"", version.id)));
    }
    Ok(Target { host: host.to_owned(), port })
}

/// The base64 key blob of a version's public key (`public_key`, or derived
/// from `private_key` when a hand-made first value has none): what
/// identifies the key in `authorized_keys`, whatever its comment or options.
fn key_blob(version: &Version) -> Result<String, StepError> {
    let fields = fields(version)?;
    let unreadable = |field: &str| StepError::fatal(format!("the {field} of version {} does not parse", version.id));
    let public: PublicKey = match fields.get("public_key").and_then(Value::as_str) {
        Some(line) => PublicKey::from_openssh(line.trim()).map_err(|_| unreadable("public_key"))?,
        None => {
            let pem = fields.get("private_key").and_then(Value::as_str).ok_or_else(|| {
                StepError::fatal(format!("version {} has neither public_key nor private_key", version.id))
            })?;
            PrivateKey::from_openssh(pem).map_err(|_| unreadable("private_key"))?.public_key().clone()
        }
    };
    let line = public.to_openssh().map_err(|_| unreadable("public_key"))?;
    line.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| StepError::fatal(format!("the public_key of version {} has no key", version.id)))
}

/// A word for `sh`, quoted so the shell reads it as it is; a leading `~/`
/// stays the user's home.
fn shell_path(path: &str) -> String {
    match path.strip_prefix("~/") {
        Some(rest) => format!("\"$HOME\"/{}", shell_quote(rest)),
        None => shell_quote(path),
    }
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Appends the key line on stdin unless a line already holds `blob`.
/// A file not ending in a newline gets one first, so the key is a line of
/// its own.
fn append_script(file: &str, blob: &str) -> String {
    format!(
        "set -e\numask 077\nf={file}\nkey=$(cat)\nmkdir -p \"$(dirname \"$f\")\"\ntouch \"$f\"\n\
         if ! grep -qF -- {blob} \"$f\"; then\n\
         [ -s \"$f\" ] && [ \"$(tail -c 1 \"$f\" | wc -l)\" -eq 0 ] && printf '\\n' >> \"$f\"\n\
         printf '%s\\n' \"$key\" >> \"$f\"\nfi\ngrep -qF -- {blob} \"$f\"\n",
        file = shell_path(file),
        blob = shell_quote(blob),
    )
}

/// Writes the file anew without the lines holding one of `drop` (or, with
/// `all`, without every key line but `keep`'s; comments and blank lines
/// stay), and only if the result still holds `keep`.
fn remove_script(file: &str, keep: &str, drop: &[String], all: bool) -> String {
    format!(
        "set -e\numask 077\nf={file}\n[ -f \"$f\" ] || exit 0\ntmp=\"$f.tumbler-$$\"\n\
         awk -v keep={keep} -v drop={drop} -v all={all} '\n\
         BEGIN {{ n = split(drop, d, \" \") }}\n\
         index($0, keep) {{ print; next }}\n\
         all && $0 !~ /^[ \\t]*(#|$)/ {{ next }}\n\
         {{ for (i = 1; i <= n; i++) if (index($0, d[i])) next; print }}\n\
         ' \"$f\" > \"$tmp\"\n\
         if ! grep -qF -- {keep} \"$tmp\"; then rm -f \"$tmp\"; echo \"the new key is not in $f: nothing removed\" >&2; exit 3; fi\n\
         mv -f \"$tmp\" \"$f\"\n",
        file = shell_path(file),
        keep = shell_quote(keep),
        drop = shell_quote(&drop.join(" ")),
        all = u8::from(all),
    )
}

/// Whether `who` logs in to `target`: `false` when the host refuses the
/// key; other failures are errors.
fn logs_in(target: &Target, who: SecretRef) -> Result<bool, StepError> {
    match ssh::run(&Command::new(&target.host, target.port, "", Auth::FromSecret(who), "true")) {
        Ok(output) => Ok(output.succeeded()),
        Err(e) if e.kind == ErrorKind::Auth => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Rotator for Ssh {
    fn info() -> Info {
        Info::new(
            "ssh",
            env!("CARGO_PKG_VERSION"),
            "SSH key pair (Ed25519, made in the plugin) installed in the host's authorized_keys; \
             value {host, port, username, private_key, public_key}",
        )
        .capabilities([Capability::Ssh])
        .params_schema(
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "authorized_keys": {"type": "string", "minLength": 1,
                                        "description": "the file sshd reads keys from (default ~/.ssh/authorized_keys)"},
                    "comment": {"type": "string", "description": "the new keys' comment (default tumbler:SECRET)"}
                }
            })
            .to_string(),
        )
    }

    fn create(input: &StepInput) -> Result<String, StepError> {
        let params: Params = input.params()?;
        let current = input.current_version()?;
        target(current)?;
        let comment = params.comment.unwrap_or_else(|| format!("tumbler:{}", input.secret_name));
        if comment.chars().any(char::is_control) {
            return Err(StepError::fatal("param comment holds a control character"));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| StepError::retryable(format!("no randomness for the key: {e}")))?;
        let keypair = KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed));
        let cannot = |what: &str| StepError::fatal(format!("cannot {what} the new key pair"));
        let private = PrivateKey::new(keypair, comment).map_err(|_| cannot("make"))?;
        let private_pem = private.to_openssh(LineEnding::LF).map_err(|_| cannot("encode"))?;
        let public_line = private.public_key().to_openssh().map_err(|_| cannot("encode"))?;
        let mut value = fields(current)?;
        value.insert("private_key".into(), Value::String(private_pem.to_string()));
        value.insert("public_key".into(), Value::String(public_line));
        Ok(Value::Object(value).to_string())
    }

    fn set(input: &StepInput) -> Result<(), StepError> {
        let params: Params = input.params()?;
        let pending = input.pending_version()?;
        let target = target(pending)?;
        if logs_in(&target, SecretRef::Pending)? {
            log::info("set: the host already accepts the new key");
            return Ok(());
        }
        let public_line = fields(pending)?
            .get("public_key")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| StepError::fatal("the pending version has no public_key"))?;
        let script = append_script(&params.authorized_keys, &key_blob(pending)?);
        let command = Command::new(&target.host, target.port, "", Auth::FromSecret(SecretRef::Current), script)
            .stdin(format!("{}\n", public_line.trim()).into_bytes());
        ssh::run(&command)?.check()?;
        log::info(format_args!("set: the new key is in {}", params.authorized_keys));
        Ok(())
    }

    fn test(input: &StepInput) -> Result<(), StepError> {
        let target = target(input.pending_version()?)?;
        if !logs_in(&target, SecretRef::Pending)? {
            return Err(StepError::retryable(format!("{}:{} refuses the new key", target.host, target.port)));
        }
        log::info("test: logged in with the new key");
        Ok(())
    }

    fn finish(input: &StepInput) -> Result<(), StepError> {
        let params: Params = input.params()?;
        let live = input
            .pending
            .as_ref()
            .or(input.current.as_ref())
            .ok_or_else(|| StepError::fatal("finish was given neither a pending nor a current version"))?;
        let keep = key_blob(live)?;
        let mut drop: Vec<String> = Vec::new();
        for version in input.stale_versions() {
            match key_blob(version) {
                Ok(blob) if blob != keep && !drop.contains(&blob) => drop.push(blob),
                Ok(_) => {}
                Err(_) => log::warn(format_args!("finish: version {} holds no key; skipped", version.id)),
            }
        }
        if drop.is_empty() && !input.emergency {
            log::info("finish: no key fell off");
            return Ok(());
        }
        let target = target(live)?;
        let script = remove_script(&params.authorized_keys, &keep, &drop, input.emergency);
        let command = Command::new(&target.host, target.port, "", Auth::FromSecret(SecretRef::Current), script);
        ssh::run(&command)?.check()?;
        if input.emergency {
            log::warn("finish: emergency: every key but the new one was removed");
        } else {
            log::info(format_args!("finish: removed {} old key(s)", drop.len()));
        }
        Ok(())
    }
}

tumbler_sdk::export!(Ssh);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell_but_keep_the_home() {
        assert_eq!(shell_path("~/.ssh/authorized_keys"), "\"$HOME\"/'.ssh/authorized_keys'");
        assert_eq!(shell_path("/etc/ssh/keys/it's"), "'/etc/ssh/keys/it'\\''s'");
    }

    #[test]
    fn blobs_come_from_the_public_key_or_the_private_one() {
        let keypair = KeypairData::Ed25519(Ed25519Keypair::from_seed(&[7; 32]));
        let private = PrivateKey::new(keypair, "c").unwrap();
        let pem = private.to_openssh(LineEnding::LF).unwrap().to_string();
        let public = private.public_key().to_openssh().unwrap();
        let blob = public.split_whitespace().nth(1).unwrap().to_owned();
        let version = |value: Value| Version { id: "v1".into(), value: value.to_string() };
        assert_eq!(key_blob(&version(json!({"public_key": public}))).unwrap(), blob);
        assert_eq!(key_blob(&version(json!({"private_key": pem}))).unwrap(), blob);
        let error = key_blob(&version(json!({"private_key": "-----BEGIN s3cret"}))).unwrap_err();
        assert!(!error.message().contains("s3cret"));
    }

    #[test]
    fn targets_need_host_and_username_and_default_to_port_22() {
        let version = |value: Value| Version { id: "v1".into(), value: value.to_string() };
        let t = target(&version(json!({"host": "h", "username": "u"}))).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("h", 22));
        assert_eq!(target(&version(json!({"host": "h", "username": "u", "port": "2222"}))).unwrap().port, 2222);
        assert!(target(&version(json!({"host": "h"}))).is_err());
        assert!(target(&version(json!({"host": "h", "username": "u", "port": 70000}))).is_err());
    }
}
