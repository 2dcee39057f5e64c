//! Params, role checks and revoke handles, with two stand-in engines (the
//! parts that reach a database run only in the host's tests).

use serde_json::{Value, json};

use super::*;
use crate::database_rotation::Tls;

struct Pg;

impl DynamicDatabase for Pg {
    const ENGINE: Engine = Engine::Postgres;
    const MAX_NAME_LEN: usize = 63;
    const DEFAULT_DATABASE: Option<&'static str> = Some("postgres");
    const RESERVED_PREFIXES: &'static [&'static str] = &["pg_"];
    const TRANSACTIONAL_DDL: bool = true;
    const DEFAULT_CREATION_STATEMENTS: &'static [&'static str] =
        &["CREATE ROLE {{name}} LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}}"];
    const DEFAULT_REVOCATION_STATEMENTS: &'static [&'static str] =
        &["REASSIGN OWNED BY {{name}} TO CURRENT_USER", "DROP OWNED BY {{name}}", "DROP ROLE IF EXISTS {{name}}"];

    fn stored_password(password: &str) -> Result<String, StepError> {
        Ok(format!("stored-{}", password.len()))
    }

    fn user_exists(_: &Connection, _: &str) -> Result<bool, StepError> {
        unreachable!("no database in unit tests")
    }

    fn drop_user(_: &Connection, _: &str) -> Result<(), StepError> {
        unreachable!("no database in unit tests")
    }
}

struct My;

impl DynamicDatabase for My {
    const ENGINE: Engine = Engine::Mysql;
    const MAX_NAME_LEN: usize = 32;
    const DEFAULT_DATABASE: Option<&'static str> = None;
    const TRANSACTIONAL_DDL: bool = false;
    const DEFAULT_CREATION_STATEMENTS: &'static [&'static str] =
        &["CREATE USER {{name}}@'%' IDENTIFIED WITH mysql_native_password AS {{password}}"];
    const DEFAULT_REVOCATION_STATEMENTS: &'static [&'static str] = &["DROP USER IF EXISTS {{name}}@'%'"];

    fn stored_password(password: &str) -> Result<String, StepError> {
        Pg::stored_password(password)
    }

    fn check_password_use(text_before: &str) -> Result<(), String> {
        if text_before.to_ascii_uppercase().trim_end().ends_with(" BY") {
            return Err("{{password}} is a hash: write AS, not BY".into());
        }
        Ok(())
    }

    fn expiration_text(expires_at: &str) -> Result<String, StepError> {
        expiration::utc_datetime(expires_at)
    }

    fn user_exists(_: &Connection, _: &str) -> Result<bool, StepError> {
        unreachable!("no database in unit tests")
    }

    fn drop_user(_: &Connection, _: &str) -> Result<(), StepError> {
        unreachable!("no database in unit tests")
    }
}

fn params(extra: Value) -> String {
    let mut params = json!({"host": "db.internal", "admin_secret": "db/admin"});
    params.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    params.to_string()
}

fn role_error<D: DynamicDatabase>(extra: Value) -> String {
    let error = Role::parse::<D>("orders", &params(extra)).unwrap_err();
    assert!(!error.is_retryable(), "bad params are fatal");
    error.message().to_owned()
}

#[test]
fn the_fewest_params_take_the_defaults() {
    let role = Role::parse::<Pg>("orders/ro", &params(json!({}))).unwrap();
    assert_eq!(role.params.host, "db.internal");
    assert_eq!(role.params.admin_secret, "db/admin");
    assert_eq!(role.params.tls, Tls::VerifyFull);
    assert_eq!((role.port::<Pg>(), role.database::<Pg>().as_deref()), (5432, Some("postgres")));
    assert_eq!(role.prefix, "v_orders_ro_");
    assert_eq!(role.creation.len(), 1);
    assert_eq!(role.revocation.len(), 3);

    let role = Role::parse::<My>("orders", &params(json!({"port": null, "database": null}))).unwrap();
    assert_eq!((role.port::<My>(), role.database::<My>()), (3306, None));
}

#[test]
fn every_param_is_read() {
    let role = Role::parse::<My>(
        "orders",
        &params(json!({
            "port": 3307,
            "database": "shop",
            "tls": "disable",
            "username_prefix": "shop_",
            "creation_statements": [
                "CREATE USER {{name}}@'10.%' IDENTIFIED WITH mysql_native_password AS {{password}}",
                "GRANT SELECT ON `shop`.* TO {{name}}@'10.%'"
            ],
            "revocation_statements": ["DROP USER IF EXISTS {{name}}@'10.%'"]
        })),
    )
    .unwrap();
    assert_eq!((role.port::<My>(), role.database::<My>().as_deref()), (3307, Some("shop")));
    assert_eq!(role.params.tls, Tls::Disable);
    assert_eq!(role.prefix, "shop_");
    assert_eq!(role.creation.len(), 2);
    assert_eq!(role.revocation.len(), 1);
}

#[test]
fn unknown_params_are_refused_by_name() {
    let message = role_error::<Pg>(json!({"creation_statement": ["x"]}));
    assert!(message.starts_with("unknown role param \"creation_statement\""), "{message}");
    assert!(message.contains("creation_statements"), "lists the known names: {message}");
}

#[test]
fn wrong_values_name_their_param() {
    for (extra, name) in [
        (json!({"port": "5432"}), "port"),
        (json!({"port": 70000}), "port"),
        (json!({"port": 0}), "port"),
        (json!({"tls": "maybe"}), "tls"),
        (json!({"host": 1}), "host"),
        (json!({"host": " "}), "host"),
        (json!({"database": ""}), "database"),
        (json!({"admin_secret": ""}), "admin_secret"),
        (json!({"username_prefix": 7}), "username_prefix"),
        (json!({"creation_statements": "CREATE ROLE {{name}}"}), "creation_statements"),
        (json!({"revocation_statements": [1]}), "revocation_statements"),
    ] {
        let message = role_error::<Pg>(extra.clone());
        assert!(message.contains(&format!("\"{name}\"")), "{extra}: {message}");
    }
}

#[test]
fn required_params_are_named_when_missing() {
    for name in ["host", "admin_secret"] {
        let mut params: Value = serde_json::from_str(&params(json!({}))).unwrap();
        params.as_object_mut().unwrap().remove(name);
        let message = check_role::<Pg>("r", &params.to_string()).unwrap_err().message().to_owned();
        assert_eq!(message, format!("role param \"{name}\" is missing"));
    }
    assert!(check_role::<Pg>("r", "").unwrap_err().message().contains("missing"));
}

#[test]
fn params_must_be_a_json_object() {
    assert!(check_role::<Pg>("r", "[]").unwrap_err().message().contains("JSON object"));
    assert!(check_role::<Pg>("r", "{").unwrap_err().message().contains("not JSON"));
}

#[test]
fn statement_errors_name_the_list_the_index_and_the_placeholder() {
    let message = role_error::<Pg>(json!({"creation_statements": [
        "CREATE ROLE {{name}} LOGIN",
        "ALTER ROLE {{name}} PASSWORD '{{password}}'"
    ]}));
    assert_eq!(
        message,
        "creation_statements[1]: {{password}} is inside quotes (a '...' string); write it bare, tumbler quotes it"
    );
    let message = role_error::<Pg>(json!({"revocation_statements": ["DROP ROLE {{name}}", "SELECT {{password}}"]}));
    assert_eq!(message, "revocation_statements[1]: {{password}} cannot be used here (only {{name}})");
    let message = role_error::<Pg>(json!({"revocation_statements": ["DROP ROLE {{name}}", "SELECT {{expiration}}"]}));
    assert!(message.starts_with("revocation_statements[1]: {{expiration}} cannot"), "{message}");
    let message = role_error::<Pg>(json!({"creation_statements": ["CREATE ROLE {{name}} {{foo}}"]}));
    assert!(message.starts_with("creation_statements[0]: {{foo}} is not a placeholder"), "{message}");
    let message = role_error::<Pg>(json!({"creation_statements": ["CREATE ROLE {{name}} PASSWORD {{password}}", ""]}));
    assert_eq!(message, "creation_statements[1]: the statement is empty");
    // A quote in a comment is no quote.
    assert!(
        check_role::<Pg>("r", &params(json!({"revocation_statements": ["DROP ROLE {{name}} -- it's gone"]}))).is_ok()
    );
}

#[test]
fn empty_statement_lists_are_refused() {
    for name in ["creation_statements", "revocation_statements"] {
        let message = role_error::<Pg>(json!({name: []}));
        assert!(message.starts_with(&format!("{name} is empty")), "{message}");
    }
}

#[test]
fn statements_must_use_the_name_and_the_password() {
    let message = role_error::<Pg>(json!({"creation_statements": ["CREATE ROLE {{name}} LOGIN"]}));
    assert!(message.starts_with("creation_statements never use {{password}}"), "{message}");
    let message = role_error::<Pg>(json!({"creation_statements": ["SELECT {{password}}"]}));
    assert!(message.starts_with("creation_statements never use {{name}}"), "{message}");
    let message = role_error::<Pg>(json!({"revocation_statements": ["SELECT 1"]}));
    assert!(message.starts_with("revocation_statements never use {{name}}"), "{message}");
    // Across statements is enough.
    let extra =
        json!({"creation_statements": ["CREATE ROLE {{name}} LOGIN", "ALTER ROLE {{name}} PASSWORD {{password}}"]});
    assert!(check_role::<Pg>("r", &params(extra)).is_ok());
}

#[test]
fn the_engine_checks_where_the_password_goes() {
    let message = role_error::<My>(json!({"creation_statements": ["CREATE USER {{name}} IDENTIFIED BY {{password}}"]}));
    assert_eq!(message, "creation_statements[0]: {{password}} is a hash: write AS, not BY");
}

#[test]
fn username_prefixes_are_checked() {
    assert!(role_error::<Pg>(json!({"username_prefix": "App"})).contains("lower-case"));
    assert!(role_error::<Pg>(json!({"username_prefix": ""})).contains("lower-case"));
    assert!(role_error::<Pg>(json!({"username_prefix": "pg_x"})).contains("reserves"));
    assert!(check_role::<My>("r", &params(json!({"username_prefix": "pg_x"}))).is_ok());
    // Too long is not an error: issue cuts it.
    assert!(check_role::<My>("r", &params(json!({"username_prefix": "a".repeat(100)}))).is_ok());
}

#[test]
fn revoke_handles_name_a_generated_user() {
    let name = names::generate_username("v_app_", My::MAX_NAME_LEN).unwrap();
    let handle = serde_json::to_string(&RevokeHandle { username: name.clone() }).unwrap();
    assert_eq!(handle, format!("{{\"username\":\"{name}\"}}"));
    assert_eq!(RevokeHandle::parse::<My>(&handle).unwrap().username, name);
    for bad in ["", "{}", "\"v_app_k3j9x8q2m1\"", r#"{"username":"root"}"#, r#"{"username":"v_app_k3j9x8q2m1; DROP"}"#]
    {
        let error = RevokeHandle::parse::<My>(bad).unwrap_err();
        assert!(!error.is_retryable(), "{bad}");
    }
    let long = format!("{{\"username\":\"v_{}\"}}", "a".repeat(40));
    assert!(RevokeHandle::parse::<My>(&long).is_err());
    assert!(RevokeHandle::parse::<Pg>(&long).is_ok());
}

#[test]
fn default_statements_expand_for_a_lease() {
    let role = Role::parse::<My>("orders", &params(json!({}))).unwrap();
    let values = Values { name: "v_orders_k3j9x8q2m1", password: Some("*HASH"), expiration: None };
    let statements = expand_all(&role.creation, &values).unwrap();
    assert_eq!(
        statements[0].as_str(),
        "CREATE USER `v_orders_k3j9x8q2m1`@'%' IDENTIFIED WITH mysql_native_password AS '*HASH'"
    );
    let statements = expand_all(&role.revocation, &Values { name: "v_orders_k3j9x8q2m1", ..Values::default() });
    assert_eq!(statements.unwrap()[0].as_str(), "DROP USER IF EXISTS `v_orders_k3j9x8q2m1`@'%'");
    assert_eq!(My::expiration_text("2030-01-02T03:04:05Z").unwrap(), "2030-01-02 03:04:05");
    assert_eq!(Pg::expiration_text("2030-01-02T03:04:05Z").unwrap(), "2030-01-02T03:04:05Z");
}

#[test]
fn engine_names_are_awss() {
    assert_eq!(engine_name(Engine::Postgres), "postgres");
    assert_eq!(engine_name(Engine::Mysql), "mysql");
    assert_eq!(PARAM_NAMES.len(), 8);
}
