//! The `mysql_native_password` hash: `*` and the upper-case hex of
//! SHA1(SHA1(password)), the form MySQL and MariaDB store in
//! `mysql.user` and accept in `IDENTIFIED WITH mysql_native_password AS
//! '<hash>'` and MariaDB's `SET PASSWORD = '<hash>'`.
//!
//! Sending the hash instead of the password keeps the plaintext out of
//! every statement, so out of the general and slow query logs, the binary
//! log and `performance_schema`'s statement history. The hash is still
//! sensitive (with a captured login exchange it yields what a client
//! proves it knows), so it is never logged either.

use sha1::{Digest, Sha1};

pub fn hash(password: &str) -> String {
    let stage1 = Sha1::digest(password.as_bytes());
    let stage2 = Sha1::digest(stage1);
    let mut text = String::with_capacity(41);
    text.push('*');
    for byte in stage2 {
        text.push_str(&format!("{byte:02X}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_servers_own_function() {
        // MariaDB: SELECT PASSWORD('newpw');
        assert_eq!(hash("newpw"), "*DF0732E0434670AF9F0199F4D2837342EBE03C63");
        assert_eq!(hash("newpw").len(), 41);
    }
}
