//! `tumbler rotation set|get|rm`, `tumbler rotate NAME [--wait]` and
//! `tumbler history NAME`.

use super::{Client, ClientArgs, parse_key_value, secret_path};
use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum RotationCommand {
    /// Attach a rotator plugin to a secret, on a schedule.
    Set {
        name: String,
        #[command(flatten)]
        plugin: PluginArgs,
        /// Cron in UTC (`0 3 * * *`, or 6 fields with seconds first) or `rate(N minutes|hours|days)`.
        #[arg(long)]
        schedule: String,
        /// Spread each start at random over this long (e.g. 30m).
        #[arg(long)]
        window: Option<String>,
        /// Attempts per step before the rotation fails.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Also start a rotation now.
        #[arg(long)]
        now: bool,
    },
    /// Show the config, the next due time and the last result.
    Get { name: String },
    /// Stop rotating (a rotation already running finishes).
    Rm { name: String },
}

fn parse_grant(s: &str) -> Result<(String, String), String> {
    let (kind, target) = s.split_once(':').ok_or_else(|| format!("{s:?} is not KIND:TARGET"))?;
    let field = match kind {
        "sql" | "ssh" | "http" => kind,
        "secret" | "secrets" => "secrets",
        other => return Err(format!("grant kind {other:?} is not one of sql, ssh, http, secret")),
    };
    Ok((field.to_owned(), target.to_owned()))
}

/// Which plugin runs, with what parameters and what it may reach: the
/// arguments shared by `rotation set` and `role put`.
#[derive(clap::Args, Debug)]
pub struct PluginArgs {
    /// A registered plugin (`tumbler plugin ls`), e.g. the built-in `noop` or `postgres`.
    #[arg(long)]
    plugin: String,
    /// Pin this version of the plugin (default: the newest).
    #[arg(long)]
    plugin_version: Option<i64>,
    /// A parameter as key=value (the value is JSON when it parses as JSON,
    /// else a string); repeat for more.
    #[arg(long = "param", value_parser = parse_key_value)]
    params: Vec<(String, String)>,
    /// Parameters from a JSON object file (`--param` entries override it).
    #[arg(long)]
    params_file: Option<PathBuf>,
    /// A grant as KIND:TARGET, KIND one of sql, ssh, http, secret
    /// (`sql:db.internal:5432`, `http:https://api.example.com/v1/keys`, `secret:db/admin`).
    #[arg(long = "grant", value_parser = parse_grant)]
    grants: Vec<(String, String)>,
}

impl PluginArgs {
    /// `{plugin, plugin_version?, params, grants}`: the params from the file,
    /// then `--param` entries over it.
    pub(super) fn into_body(self) -> anyhow::Result<Value> {
        let mut p: Map<String, Value> = match self.params_file {
            Some(f) => {
                let text = std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
                match serde_json::from_str(&text).with_context(|| format!("{} is not JSON", f.display()))? {
                    Value::Object(m) => m,
                    _ => bail!("{} must hold a JSON object", f.display()),
                }
            }
            None => Map::new(),
        };
        for (k, v) in self.params {
            p.insert(k, param_value(&v));
        }
        let mut g: Map<String, Value> = Map::new();
        for (kind, target) in self.grants {
            if let Value::Array(list) = g.entry(kind).or_insert_with(|| json!([])) {
                list.push(Value::String(target));
            }
        }
        let mut body = json!({"plugin": self.plugin, "params": p, "grants": g});
        if let Some(v) = self.plugin_version {
            body["plugin_version"] = json!(v);
        }
        Ok(body)
    }
}

/// A parameter value: JSON when it is JSON (`5432`, `true`, `["a"]`), else the text.
fn param_value(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

pub async fn rotation(args: ClientArgs, cmd: RotationCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match cmd {
        RotationCommand::Set { name, plugin, schedule, window, max_attempts, now } => {
            let mut body = plugin.into_body()?;
            body["schedule"] = json!(schedule);
            body["rotate_now"] = json!(now);
            if let Some(w) = window {
                body["window"] = json!(w);
            }
            if let Some(n) = max_attempts {
                body["max_attempts"] = json!(n);
            }
            let out = c.call(Method::PUT, &format!("{}:rotation", secret_path(&name)), Some(&body)).await?;
            c.print(&out, print_config);
        }
        RotationCommand::Get { name } => {
            let out = c.call(Method::GET, &format!("{}:rotation", secret_path(&name)), None).await?;
            c.print(&out, print_config);
        }
        RotationCommand::Rm { name } => {
            let out = c.call(Method::DELETE, &format!("{}:rotation", secret_path(&name)), None).await?;
            c.print(&out, |_| println!("{name} is no longer rotated"));
        }
    }
    Ok(())
}

/// `tumbler rotate NAME [--wait]`: start a rotation; with --wait, follow it
/// to its end and fail if it failed.
pub async fn rotate(args: ClientArgs, name: String, wait: bool) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    let started = c.call(Method::POST, &format!("{}:rotate", secret_path(&name)), None).await?;
    let id = started["rotation_id"].as_str().unwrap_or_default().to_owned();
    if !wait {
        c.print(&started, |v| {
            let note = if v["already_running"] == json!(true) { " (already running)" } else { "" };
            println!("rotation {id} of {name} started{note}");
        });
        return Ok(());
    }
    // The server answers when the rotation ends, or after 20 s still running.
    let record = loop {
        let record = c.call(Method::GET, &format!("/v1/rotations/{id}?wait=20s"), None).await?;
        if record["status"] != "running" {
            break record;
        }
    };
    c.print(&record, print_record);
    if record["status"] != "succeeded" {
        bail!(
            "rotation {id} of {name} failed at step {} ({})",
            record["step"].as_str().unwrap_or("?"),
            record["error_code"].as_str().unwrap_or("error")
        );
    }
    Ok(())
}

/// `tumbler history NAME`.
pub async fn history(args: ClientArgs, name: String) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    let out = c.call(Method::GET, &format!("{}:rotations", secret_path(&name)), None).await?;
    c.print(&out, |v| {
        println!(
            "{:<28} {:<9} {:<10} {:<7} {:<9} {:<26} {:<9} ERROR",
            "ID", "TRIGGER", "STATUS", "STEP", "ATTEMPTS", "STARTED", "TOOK"
        );
        for r in v["rotations"].as_array().into_iter().flatten() {
            println!(
                "{:<28} {:<9} {:<10} {:<7} {:<9} {:<26} {:<9} {}",
                r["id"].as_str().unwrap_or(""),
                r["trigger"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
                r["step"].as_str().unwrap_or(""),
                r["attempts_total"],
                r["created_at"].as_str().unwrap_or(""),
                r["duration_ms"].as_i64().map(|ms| format!("{ms}ms")).unwrap_or_default(),
                r["error_code"].as_str().unwrap_or("")
            );
        }
    });
    Ok(())
}

fn print_config(v: &Value) {
    for key in [
        "secret",
        "plugin",
        "plugin_version",
        "plugin_sha256",
        "schedule",
        "window",
        "max_attempts",
        "next_due",
        "running_rotation_id",
    ] {
        match &v[key] {
            Value::Null => {}
            Value::String(s) => println!("{key}: {s}"),
            other => println!("{key}: {other}"),
        }
    }
    println!("params: {}", v["params"]);
    println!("grants: {}", v["grants"]);
    if let Some(last) = v["last_rotation"].as_object() {
        println!(
            "last rotation: {} {} at step {}{}",
            last.get("id").and_then(Value::as_str).unwrap_or(""),
            last.get("status").and_then(Value::as_str).unwrap_or(""),
            last.get("step").and_then(Value::as_str).unwrap_or(""),
            last.get("error_code").and_then(Value::as_str).map(|c| format!(" ({c})")).unwrap_or_default()
        );
    }
}

fn print_record(v: &Value) {
    println!(
        "rotation {} of {}: {} at step {}",
        v["id"].as_str().unwrap_or(""),
        v["secret"].as_str().unwrap_or(""),
        v["status"].as_str().unwrap_or(""),
        v["step"].as_str().unwrap_or("")
    );
    for a in v["attempts"].as_array().into_iter().flatten() {
        println!(
            "  {:<7} attempt {:<2} {:<16} {}",
            a["step"].as_str().unwrap_or(""),
            a["attempt"],
            a["outcome"].as_str().unwrap_or("running"),
            a["duration_ms"].as_i64().map(|ms| format!("{ms}ms")).unwrap_or_default()
        );
    }
    if let Some(e) = v["error"].as_str() {
        println!("error: {e}");
    }
}
