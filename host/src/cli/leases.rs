//! `tumbler role ...`, `tumbler lease ...` and `tumbler revoke NAME --reason R`.

use super::rotation::PluginArgs;
use super::{Client, ClientArgs, secret_path};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(clap::Subcommand, Debug)]
pub enum RoleCommand {
    /// Create or replace a dynamic role.
    Put {
        name: String,
        /// The plugin (one that issues dynamic credentials: `postgres`, `mysql`), its params and grants.
        #[command(flatten)]
        plugin: PluginArgs,
        /// The secret holding the admin credential the plugin logs in with.
        #[arg(long)]
        admin_secret: String,
        /// Lease TTL when `issue` gives none (e.g. 1h).
        #[arg(long)]
        default_ttl: Option<String>,
        /// No lease lives longer, renewals included (e.g. 24h).
        #[arg(long)]
        max_ttl: Option<String>,
        /// Leases the role may have open at once.
        #[arg(long)]
        max_leases: Option<u32>,
    },
    Ls,
    Describe {
        name: String,
    },
    Rm {
        name: String,
    },
    /// Issue a credential; it is shown once.
    Issue {
        name: String,
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke every lease of the role.
    RevokeAll {
        name: String,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum LeaseCommand {
    /// Leases (never credentials), optionally of one role.
    Ls {
        #[arg(long)]
        role: Option<String>,
    },
    /// Extend a lease (never past its max TTL).
    Renew {
        id: String,
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a lease now.
    Revoke { id: String },
}

pub async fn role(args: ClientArgs, cmd: RoleCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    match cmd {
        RoleCommand::Put { name, plugin, admin_secret, default_ttl, max_ttl, max_leases } => {
            let mut body = plugin.into_body()?;
            body["admin_secret"] = json!(admin_secret);
            for (key, v) in [("default_ttl", default_ttl.map(|v| json!(v))), ("max_ttl", max_ttl.map(|v| json!(v)))] {
                if let Some(v) = v {
                    body[key] = v;
                }
            }
            if let Some(n) = max_leases {
                body["max_leases"] = json!(n);
            }
            let out = c.call(Method::PUT, &format!("/v1/roles/{name}"), Some(&body)).await?;
            c.print(&out, print_role);
        }
        RoleCommand::Ls => {
            let out = c.call(Method::GET, "/v1/roles", None).await?;
            c.print(&out, |v| {
                println!("{:<32} {:<10} {:<10} {:<10} OPEN", "NAME", "PLUGIN", "DEFAULT", "MAX");
                for r in v["roles"].as_array().into_iter().flatten() {
                    println!(
                        "{:<32} {:<10} {:<10} {:<10} {}",
                        r["name"].as_str().unwrap_or(""),
                        r["plugin"].as_str().unwrap_or(""),
                        r["default_ttl"].as_str().unwrap_or(""),
                        r["max_ttl"].as_str().unwrap_or(""),
                        r["open_leases"]
                    );
                }
            });
        }
        RoleCommand::Describe { name } => {
            let out = c.call(Method::GET, &format!("/v1/roles/{name}"), None).await?;
            c.print(&out, print_role);
        }
        RoleCommand::Rm { name } => {
            let out = c.call(Method::DELETE, &format!("/v1/roles/{name}"), None).await?;
            c.print(&out, |_| println!("role {name} deleted"));
        }
        RoleCommand::Issue { name, ttl } => {
            let body = ttl_body(ttl);
            let out = c.call(Method::POST, &format!("/v1/roles/{name}:issue"), Some(&body)).await?;
            c.print(&out, |v| {
                println!("lease_id: {}", v["lease_id"].as_str().unwrap_or(""));
                println!("expires_at: {}", v["expires_at"].as_str().unwrap_or(""));
                println!("max_expires_at: {}", v["max_expires_at"].as_str().unwrap_or(""));
                println!("credential: {}", v["credential"]);
            });
        }
        RoleCommand::RevokeAll { name } => {
            let out = c.call(Method::POST, &format!("/v1/roles/{name}:revoke-all"), Some(&json!({}))).await?;
            c.print(&out, |v| println!("revoking {} lease(s) of role {name}", v["revoking"]));
        }
    }
    Ok(())
}

pub async fn lease(args: ClientArgs, cmd: LeaseCommand) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    let out = match cmd {
        LeaseCommand::Ls { role } => {
            let path = match role {
                Some(r) => format!("/v1/leases?role={}", urlencoding(&r)),
                None => "/v1/leases".to_owned(),
            };
            let out = c.call(Method::GET, &path, None).await?;
            c.print(&out, |v| {
                println!("{:<40} {:<20} {:<15} {:<26} TOKEN", "ID", "ROLE", "STATE", "EXPIRES");
                for l in v["leases"].as_array().into_iter().flatten() {
                    println!(
                        "{:<40} {:<20} {:<15} {:<26} {}",
                        l["lease_id"].as_str().unwrap_or(""),
                        l["role"].as_str().unwrap_or(""),
                        l["state"].as_str().unwrap_or(""),
                        l["expires_at"].as_str().unwrap_or(""),
                        l["token_name"].as_str().unwrap_or("")
                    );
                }
            });
            return Ok(());
        }
        LeaseCommand::Renew { id, ttl } => {
            let body = ttl_body(ttl);
            c.call(Method::POST, &format!("/v1/leases/{id}:renew"), Some(&body)).await?
        }
        LeaseCommand::Revoke { id } => {
            c.call(Method::POST, &format!("/v1/leases/{id}:revoke"), Some(&json!({}))).await?
        }
    };
    c.print(&out, |v| {
        println!(
            "lease {}: {} until {}",
            v["lease_id"].as_str().unwrap_or(""),
            v["state"].as_str().unwrap_or(""),
            v["expires_at"].as_str().unwrap_or("")
        )
    });
    Ok(())
}

/// `tumbler revoke NAME --reason R`: break glass.
pub async fn revoke(args: ClientArgs, name: String, reason: String) -> anyhow::Result<()> {
    let c = Client::new(args)?;
    let out = c.call(Method::POST, &format!("{}:revoke", secret_path(&name)), Some(&json!({"reason": reason}))).await?;
    c.print(&out, |v| {
        let note = if v["already_running"] == json!(true) { " (joined the one in progress)" } else { "" };
        println!("break glass on {name}: rotation {}{note}", v["rotation_id"].as_str().unwrap_or(""));
    });
    Ok(())
}

/// `{"ttl": T}`, or `{}` for the role's default.
fn ttl_body(ttl: Option<String>) -> Value {
    match ttl {
        Some(t) => json!({"ttl": t}),
        None => json!({}),
    }
}

fn print_role(v: &Value) {
    for key in
        ["name", "plugin", "plugin_version", "admin_secret", "default_ttl", "max_ttl", "max_leases", "open_leases"]
    {
        match &v[key] {
            Value::Null => {}
            Value::String(s) => println!("{key}: {s}"),
            other => println!("{key}: {other}"),
        }
    }
    println!("params: {}", v["params"]);
    println!("grants: {}", v["grants"]);
}

fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
