//! The client half of the binary: `secret`, `token` and `policy` commands
//! that talk to a server over HTTP(S), reading TUMBLER_ADDR and TUMBLER_TOKEN.

mod leases;
mod rotation;

pub use leases::{LeaseCommand, RoleCommand, lease, revoke, role};
pub use rotation::{RotationCommand, history, rotate, rotation};

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// Server address.
    #[arg(long, env = "TUMBLER_ADDR", default_value = "http://127.0.0.1:8200", global = true)]
    addr: String,
    /// API token (prefer the environment variable: flags land in shell history).
    #[arg(long, env = "TUMBLER_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for a server with a private certificate.
    #[arg(long, env = "TUMBLER_CACERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Output format (default: table on a terminal, json otherwise).
    #[arg(long, value_enum, global = true)]
    output: Option<Output>,
}

/// Where a value to store comes from; never the command line unless asked.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ValueSource {
    /// The value itself (visible in shell history and `ps`; prefer --value-file or -).
    #[arg(long)]
    value: Option<String>,
    /// Read the value from this file.
    #[arg(long)]
    value_file: Option<PathBuf>,
    /// `-` reads the value from standard input.
    #[arg(value_name = "-", value_parser = clap::builder::PossibleValuesParser::new(["-"]))]
    stdin: Option<String>,
}

impl ValueSource {
    fn read(self) -> anyhow::Result<Zeroizing<String>> {
        let mut text = Zeroizing::new(String::new());
        if let Some(v) = self.value {
            text.push_str(&v);
        } else if let Some(path) = self.value_file {
            std::fs::File::open(&path)
                .and_then(|mut f| f.read_to_string(&mut text))
                .with_context(|| format!("reading {}", path.display()))?;
        } else {
            std::io::stdin().read_to_string(&mut text).context("reading the value from stdin")?;
        }
        // A trailing newline from a file or `echo` is almost never part of the secret.
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok(text)
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum SecretCommand {
    /// Create a secret.
    Create {
        name: String,
        #[command(flatten)]
        value: ValueSource,
        #[arg(long)]
        description: Option<String>,
        /// A tag as key=value; repeat for more.
        #[arg(long = "tag", value_parser = parse_key_value)]
        tags: Vec<(String, String)>,
    },
    /// Read a value (default label `current`).
    Get {
        name: String,
        #[arg(long, conflicts_with = "version_id")]
        label: Option<String>,
        #[arg(long)]
        version_id: Option<String>,
        /// Print one field of a JSON value.
        #[arg(long)]
        field: Option<String>,
    },
    /// Store a new version; it becomes `current`.
    Put {
        name: String,
        #[command(flatten)]
        value: ValueSource,
    },
    /// List secrets (names and metadata, never values).
    Ls {
        prefix: Option<String>,
    },
    Describe {
        name: String,
    },
    Versions {
        name: String,
    },
    /// Delete: soft (recoverable for N days) unless --force.
    Rm {
        name: String,
        #[arg(long, conflicts_with = "recovery_days")]
        force: bool,
        #[arg(long)]
        recovery_days: Option<u32>,
    },
    Restore {
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Mint a token with some of your policies; it is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// A policy name; repeat for more.
        #[arg(long = "policy", required = true)]
        policies: Vec<String>,
        /// Lifetime such as 1h or 30d (default 32 days, never beyond yours).
        #[arg(long)]
        ttl: Option<String>,
    },
    Ls,
    /// Revoke a token (and the tokens minted from it).
    Revoke {
        id: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create or replace a policy from a JSON file `{"rules": [...]}`.
    Put {
        name: String,
        file: PathBuf,
    },
    Get {
        name: String,
    },
    Ls,
    Rm {
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PluginCommand {
    /// Register a new version of a plugin from a `.wasm` component.
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    Ls,
    /// Versions, info and parameters of a plugin.
    Describe {
        name: String,
    },
    /// Remove a plugin (every version, or one).
    Rm {
        name: String,
        #[arg(long)]
        version: Option<i64>,
    },
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not key=value"))
}

struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<Zeroizing<String>>,
    output: Output,
}

impl Client {
    fn new(args: ClientArgs) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(ca) = &args.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let output = args.output.unwrap_or(if std::io::stdout().is_terminal() { Output::Table } else { Output::Json });
        Ok(Client {
            http: builder.build()?,
            addr: args.addr.trim_end_matches('/').to_owned(),
            token: args.token.map(Zeroizing::new),
            output,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req).await
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.addr));
        match &self.token {
            Some(t) => req.bearer_auth(t.as_str()),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req.send().await.with_context(|| format!("cannot reach {}; check TUMBLER_ADDR", self.addr))?;
        let status = resp.status();
        let text = Zeroizing::new(resp.text().await?);
        let value: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? };
        if !status.is_success() {
            let code = value["error"]["code"].as_str().unwrap_or("error");
            let message = value["error"]["message"].as_str().unwrap_or("");
            bail!("{} {code}: {message}", status.as_u16());
        }
        Ok(value)
    }

    fn print(&self, value: &Value, table: impl FnOnce(&Value)) {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
            Output::Table => table(value),
        }
    }
}

fn secret_path(name: &str) -> String {
    format!("/v1/secrets/{name}")
}

fn print_versions(v: &Value) {
    println!("{:<34} {:<26} LABELS", "VERSION", "CREATED");
    for ver in v["versions"].as_array().into_iter().flatten() {
        let labels: Vec<&str> = ver["labels"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!(
            "{:<34} {:<26} {}",
            ver["version_id"].as_str().unwrap_or(""),
            ver["created_at"].as_str().unwrap_or(""),
            labels.join(",")
        );
    }
}

fn print_kv(v: &Value) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            match val {
                Value::String(s) => println!("{k}: {s}"),
                other => println!("{k}: {other}"),
            }
        }
    }
}

pub async fn secret(args: ClientArgs, cmd: SecretCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match cmd {
        SecretCommand::Create { name, value, description, tags } => {
            let value = value.read()?;
            let body = json!({
                "name": name,
                "value": value.as_str(),
                "description": description.unwrap_or_default(),
                "tags": tags.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            });
            let out = c.call(Method::POST, "/v1/secrets", Some(&body)).await?;
            c.print(&out, |v| {
                println!(
                    "created {} version {}",
                    v["name"].as_str().unwrap_or(""),
                    v["version_id"].as_str().unwrap_or("")
                )
            });
        }
        SecretCommand::Put { name, value } => {
            let value = value.read()?;
            let body = json!({ "value": value.as_str() });
            let out = c.call(Method::POST, &format!("{}:versions", secret_path(&name)), Some(&body)).await?;
            c.print(&out, |v| {
                println!(
                    "stored {} version {}",
                    v["name"].as_str().unwrap_or(""),
                    v["version_id"].as_str().unwrap_or("")
                )
            });
        }
        SecretCommand::Get { name, label, version_id, field } => {
            let query = match (label, version_id) {
                (_, Some(v)) => format!("?version_id={v}"),
                (Some(l), None) => format!("?label={l}"),
                (None, None) => String::new(),
            };
            let out = c.call(Method::GET, &format!("{}:value{query}", secret_path(&name)), None).await?;
            let value = out["value"].as_str().unwrap_or_default();
            match field {
                Some(f) => {
                    let parsed: Value = serde_json::from_str(value)
                        .with_context(|| format!("the value of {name} is not JSON, so it has no field {f:?}"))?;
                    match parsed.get(&f) {
                        Some(Value::String(s)) => println!("{s}"),
                        Some(other) => println!("{other}"),
                        None => bail!("the value of {name} has no field {f:?}"),
                    }
                }
                None => c.print(&out, |_| println!("{value}")),
            }
        }
        SecretCommand::Ls { prefix } => {
            let mut all = Vec::new();
            let mut page_token: Option<String> = None;
            loop {
                let mut query = vec![("limit", "1000"), ("prefix", prefix.as_deref().unwrap_or(""))];
                if let Some(t) = &page_token {
                    query.push(("page_token", t));
                }
                let path = format!("/v1/secrets?{}", serde_urlencoded::to_string(&query)?);
                let out = c.call(Method::GET, &path, None).await?;
                all.extend(out["secrets"].as_array().cloned().unwrap_or_default());
                match out["next_page_token"].as_str() {
                    Some(t) => page_token = Some(t.to_owned()),
                    None => break,
                }
            }
            let out = json!({ "secrets": all });
            c.print(&out, |v| {
                for s in v["secrets"].as_array().into_iter().flatten() {
                    println!("{}", s["name"].as_str().unwrap_or(""));
                }
            });
        }
        SecretCommand::Describe { name } => {
            let out = c.call(Method::GET, &secret_path(&name), None).await?;
            c.print(&out, |v| {
                let mut head = v.clone();
                if let Some(o) = head.as_object_mut() {
                    o.remove("versions");
                }
                print_kv(&head);
                print_versions(v);
            });
        }
        SecretCommand::Versions { name } => {
            let out = c.call(Method::GET, &format!("{}:versions", secret_path(&name)), None).await?;
            c.print(&out, print_versions);
        }
        SecretCommand::Rm { name, force, recovery_days } => {
            let query = match (force, recovery_days) {
                (true, _) => "?force=true".to_owned(),
                (false, Some(d)) => format!("?recovery_days={d}"),
                (false, None) => String::new(),
            };
            let out = c.call(Method::DELETE, &format!("{}{query}", secret_path(&name)), None).await?;
            c.print(&out, |v| match v["purge_at"].as_str() {
                Some(at) => println!("deleted {name}; recoverable until {at} with `tumbler secret restore {name}`"),
                None => println!("purged {name}"),
            });
        }
        SecretCommand::Restore { name } => {
            let out = c.call(Method::POST, &format!("{}:restore", secret_path(&name)), None).await?;
            c.print(&out, |_| println!("restored {name}"));
        }
    }
    Ok(())
}

pub async fn token(args: ClientArgs, cmd: TokenCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match cmd {
        TokenCommand::Create { name, policies, ttl } => {
            let mut body = json!({ "name": name, "policies": policies });
            if let Some(t) = ttl {
                body["ttl"] = json!(t);
            }
            let out = c.call(Method::POST, "/v1/tokens", Some(&body)).await?;
            c.print(&out, print_kv);
        }
        TokenCommand::Ls => {
            let out = c.call(Method::GET, "/v1/tokens", None).await?;
            c.print(&out, |v| {
                println!("{:<22} {:<20} {:<26} {:<8} POLICIES", "ID", "NAME", "EXPIRES", "REVOKED");
                for t in v["tokens"].as_array().into_iter().flatten() {
                    let policies: Vec<&str> =
                        t["policies"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    println!(
                        "{:<22} {:<20} {:<26} {:<8} {}",
                        t["id"].as_str().unwrap_or(""),
                        t["name"].as_str().unwrap_or(""),
                        t["expires_at"].as_str().unwrap_or("never"),
                        t["revoked"],
                        policies.join(",")
                    );
                }
            });
        }
        TokenCommand::Revoke { id } => {
            let out = c.call(Method::DELETE, &format!("/v1/tokens/{id}"), None).await?;
            c.print(&out, |v| println!("revoked {} token(s)", v["revoked"]));
        }
    }
    Ok(())
}

pub async fn plugin(args: ClientArgs, cmd: PluginCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match cmd {
        PluginCommand::Upload { file, name } => {
            let wasm = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm));
            let req = c
                .request(Method::POST, &format!("/v1/plugins/{name}"))
                .header("content-type", "application/wasm")
                .header("x-tumbler-sha256", &sha)
                .body(wasm);
            let out = c.send(req).await?;
            c.print(&out, |v| {
                println!("{} version {} (sha256 {})", v["name"].as_str().unwrap_or(""), v["version"], sha);
            });
        }
        PluginCommand::Ls => {
            let out = c.call(Method::GET, "/v1/plugins", None).await?;
            c.print(&out, |v| {
                println!("{:<20} {:<8} {:<8} DESCRIPTION", "NAME", "VERSION", "BUILTIN");
                for p in v["plugins"].as_array().into_iter().flatten() {
                    println!(
                        "{:<20} {:<8} {:<8} {}",
                        p["name"].as_str().unwrap_or(""),
                        p["version"],
                        p["builtin"],
                        p["info"]["description"].as_str().unwrap_or("")
                    );
                }
            });
        }
        PluginCommand::Describe { name } => {
            let out = c.call(Method::GET, &format!("/v1/plugins/{name}"), None).await?;
            c.print(&out, |v| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()));
        }
        PluginCommand::Rm { name, version } => {
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let out = c.call(Method::DELETE, &format!("/v1/plugins/{name}{query}"), None).await?;
            c.print(&out, |v| println!("removed {} version(s) of {name}", v["versions_removed"]));
        }
    }
    Ok(())
}

pub async fn policy(args: ClientArgs, cmd: PolicyCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match cmd {
        PolicyCommand::Put { name, file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let body: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            let out = c.call(Method::PUT, &format!("/v1/policies/{name}"), Some(&body)).await?;
            c.print(&out, |_| println!("policy {name} saved"));
        }
        PolicyCommand::Get { name } => {
            let out = c.call(Method::GET, &format!("/v1/policies/{name}"), None).await?;
            c.print(&out, |v| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()));
        }
        PolicyCommand::Ls => {
            let out = c.call(Method::GET, "/v1/policies", None).await?;
            c.print(&out, |v| {
                for p in v["policies"].as_array().into_iter().flatten() {
                    println!("{}", p.as_str().unwrap_or(""));
                }
            });
        }
        PolicyCommand::Rm { name } => {
            let out = c.call(Method::DELETE, &format!("/v1/policies/{name}"), None).await?;
            c.print(&out, |_| println!("policy {name} removed"));
        }
    }
    Ok(())
}
