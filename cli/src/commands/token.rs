//! `hearth token`: client tokens for a broker's `[[auth.tokens]]`.
//!
//! A token is 32 random bytes from the operating system's generator, written as `hth_`
//! and unpadded base64url (47 characters). The broker keeps only its SHA-256, so the
//! token is printed once, on stdout, and the config entry (hash only) goes to a file or
//! to stderr.

use std::{fmt::Write as _, io::Write as _, path::PathBuf, process::ExitCode};

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use ring::rand::SecureRandom as _;

use crate::error::{Error, Result};

/// What every token starts with, so a leaked one is easy to recognise and scan for.
pub const PREFIX: &str = "hth_";

/// `hearth token ...`
#[derive(Debug, Subcommand)]
pub enum Token {
    /// Make a new token for a tenant (needs no broker).
    ///
    /// Prints the token alone on stdout, and the `[[auth.tokens]]` entry for the broker's
    /// config (its SHA-256, never the token) on stderr, or appends it to --append FILE.
    /// Restart the broker to load it. The token cannot be printed again: store it now.
    #[command(after_help = "Examples:\n  \
        hearth token create --tenant team-a --append /etc/hearth/broker.toml\n  \
        hearth token create --tenant ops --role admin 2>>broker.toml")]
    Create(CreateArgs),
}

/// The role a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Sessions and templates of its tenant.
    User,
    /// Also the Admin service: every tenant's sessions, nodes, events.
    Admin,
}

/// `hearth token create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The tenant the token acts for: 1-63 letters, digits, '.', '-' or '_'.
    #[arg(long)]
    pub tenant: String,
    /// What the token may do.
    #[arg(long, value_enum, default_value = "user")]
    pub role: Role,
    /// Append the `[[auth.tokens]]` entry to this TOML file (created if missing) instead
    /// of printing it on stderr.
    #[arg(long, value_name = "FILE")]
    pub append: Option<PathBuf>,
}

/// Runs `hearth token ...`.
pub fn run(command: &Token) -> Result<ExitCode> {
    match command {
        Token::Create(args) => create(args),
    }
}

fn create(args: &CreateArgs) -> Result<ExitCode> {
    check_tenant(&args.tenant)?;
    let token = new_token()?;
    let entry = entry(&args.tenant, args.role, &sha256_hex(&token));
    match &args.append {
        Some(path) => {
            let cannot = |e: std::io::Error| {
                Error::Other(format!("cannot append to --append {}: {e}", path.display()))
            };
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(cannot)?;
            file.write_all(format!("\n{entry}").as_bytes())
                .map_err(cannot)?;
            eprintln!(
                "appended the [[auth.tokens]] entry for tenant {} to {}; restart the broker to load it",
                args.tenant,
                path.display()
            );
        }
        None => eprint!("# add to the broker's config, then restart it:\n{entry}"),
    }
    super::stdout(format!("{token}\n").as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// A new token: `hth_` and 32 random bytes as unpadded base64url.
pub fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Other("the system's random generator failed".to_owned()))?;
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// The hex SHA-256 of a token, as the broker compares it.
pub fn sha256_hex(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// The config entry for a token.
fn entry(tenant: &str, role: Role, sha256: &str) -> String {
    let role = match role {
        Role::User => "user",
        Role::Admin => "admin",
    };
    format!("[[auth.tokens]]\ntenant = \"{tenant}\"\nrole = \"{role}\"\nsha256 = \"{sha256}\"\n")
}

/// The broker's rule for tenant names, checked here so a bad entry never reaches a config.
fn check_tenant(tenant: &str) -> Result<()> {
    let ok = (1..=63).contains(&tenant.len())
        && tenant.starts_with(|c: char| c.is_ascii_alphanumeric())
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid --tenant {tenant:?}: use 1-63 letters, digits, '.', '-' and '_', \
             starting with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_well_formed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 43);
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&a[PREFIX.len()..])
            .unwrap();
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn the_entry_holds_the_hash_and_parses() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let e = entry("team-a", Role::Admin, &sha256_hex("t"));
        assert!(e.contains("tenant = \"team-a\""));
        assert!(e.contains("role = \"admin\""));
        assert!(e.contains(&sha256_hex("t")));
    }

    #[test]
    fn tenant_names_follow_the_broker() {
        for good in ["a", "team-a", "Team_1.x"] {
            check_tenant(good).unwrap();
        }
        for bad in ["", "-a", "a/b", "a b", &"a".repeat(64)] {
            assert!(check_tenant(bad).is_err(), "{bad:?}");
        }
    }
}
