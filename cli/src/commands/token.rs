//! `hearth token`: client tokens.
//!
//! A token is 32 random bytes from the operating system's generator, written as `hth_`
//! and unpadded base64url (47 characters). Brokers keep only its SHA-256, so a token is
//! printed once, on stdout.
//!
//! - Against a running cluster, `create`, `ls` and `revoke` go through `Admin`: the store
//!   keeps the hash, and every broker accepts (or, once revoked, refuses) the token within
//!   a second, with no restart.
//! - Offline (`create --append FILE` or `--offline`), `create` makes a token for a broker's
//!   config file (`[[auth.tokens]]`), which the broker reads at start-up: how the first
//!   admin token of a cluster is made.

use std::{fmt::Write as _, io::Write as _, path::PathBuf, process::ExitCode, time::SystemTime};

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use hearth_sdk::proto::v1::{
    CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, TokenInfo, TokenSource,
};
use ring::rand::SecureRandom as _;

use super::Ctx;
use crate::{
    error::{Error, Result, Subject},
    table::{self, Table},
};

/// What every token starts with, so a leaked one is easy to recognise and scan for.
pub const PREFIX: &str = "hth_";

/// `hearth token ...`
#[derive(Debug, Subcommand)]
pub enum Token {
    /// Make a new token for a tenant: through the broker (an admin token is needed), or
    /// offline for a broker's config file.
    ///
    /// Prints the token alone on stdout; it cannot be printed again, so store it now.
    /// Through the broker, every broker accepts it within a second. With --append FILE
    /// (or --offline) no broker is dialled: the `[[auth.tokens]]` entry (its SHA-256,
    /// never the token) is appended to FILE (or printed on stderr), and the broker loads
    /// it at its next start. The first admin token of a cluster is made this way.
    #[command(after_help = "Examples:\n  \
        hearth --token $ADMIN token create --tenant team-a --description 'CI runner'\n  \
        hearth token create --tenant ops --role admin --append /etc/hearth/broker.toml\n  \
        hearth token create --tenant ops --role admin --offline 2>>broker.toml")]
    Create(CreateArgs),
    /// List the tokens brokers accept (never the tokens or their hashes): those made
    /// through the broker, then those in the brokers' config.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Revoke a token made through the broker; every broker refuses it within a second.
    #[command(visible_alias = "rm")]
    Revoke(RevokeArgs),
}

/// The role a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Sessions and templates of its tenant.
    User,
    /// Also the Admin service: every tenant's sessions, nodes, events, tokens.
    Admin,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
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
    /// What the token is for, shown by `hearth token ls` (through the broker only).
    #[arg(long, conflicts_with_all = ["append", "offline"])]
    pub description: Option<String>,
    /// Offline: append the `[[auth.tokens]]` entry to this TOML file (created if missing);
    /// the broker loads it at its next start.
    #[arg(long, value_name = "FILE")]
    pub append: Option<PathBuf>,
    /// Offline: print the `[[auth.tokens]]` entry on stderr instead of asking the broker.
    #[arg(long, conflicts_with = "append")]
    pub offline: bool,
}

impl CreateArgs {
    /// Whether this create needs no broker.
    pub fn offline(&self) -> bool {
        self.offline || self.append.is_some()
    }
}

/// `hearth token ls`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this tenant's tokens.
    #[arg(long)]
    pub tenant: Option<String>,
}

/// `hearth token revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The token's id, as `hearth token ls` shows it (tok_...).
    pub id: String,
}

/// Runs `hearth token create --append/--offline`, which needs no broker.
pub fn run_offline(args: &CreateArgs) -> Result<ExitCode> {
    create_offline(args)
}

/// Runs `hearth token ...` against the broker.
pub async fn run(ctx: &Ctx, command: Token) -> Result<ExitCode> {
    match command {
        Token::Create(args) if args.offline() => create_offline(&args),
        Token::Create(args) => create(ctx, args).await,
        Token::Ls(args) => list(ctx, args).await,
        Token::Revoke(args) => revoke(ctx, args).await,
    }
}

async fn create(ctx: &Ctx, args: CreateArgs) -> Result<ExitCode> {
    check_tenant(&args.tenant)?;
    let request = CreateTokenRequest {
        tenant: args.tenant,
        role: args.role.as_str().to_owned(),
        description: args.description.unwrap_or_default(),
    };
    let created = ctx
        .call("Admin/CreateToken", Subject::None, |c| {
            let request = request.clone();
            async move { c.admin().create_token(request).await }
        })
        .await?;
    let info = created.info.clone().unwrap_or_default();
    if ctx.json {
        return ctx
            .result(&created, String::new)
            .map(|()| ExitCode::SUCCESS);
    }
    super::stderr(
        format!(
            "token {} for tenant {} (role {}): every broker accepts it within a second; it is \
             printed this once\n",
            info.id, info.tenant, info.role
        )
        .as_bytes(),
    );
    super::stdout(format!("{}\n", created.token).as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<ExitCode> {
    if let Some(tenant) = &args.tenant {
        check_tenant(tenant)?;
    }
    let request = ListTokensRequest {
        tenant: args.tenant.unwrap_or_default(),
    };
    let listed = ctx
        .call("Admin/ListTokens", Subject::None, |c| {
            let request = request.clone();
            async move { c.admin().list_tokens(request).await }
        })
        .await?;
    ctx.result(&listed, || token_table(&listed.tokens, SystemTime::now()))?;
    Ok(ExitCode::SUCCESS)
}

fn token_table(tokens: &[TokenInfo], now: SystemTime) -> String {
    let mut rows = Table::new(&[
        "ID",
        "TENANT",
        "ROLE",
        "SOURCE",
        "AGE",
        "CREATED BY",
        "DESCRIPTION",
    ]);
    for t in tokens {
        let store = t.source == TokenSource::Store as i32;
        rows.row(vec![
            t.id.clone(),
            t.tenant.clone(),
            t.role.clone(),
            if store { "store" } else { "config" }.to_owned(),
            if store {
                table::age(t.created_at.as_ref(), now)
            } else {
                "-".to_owned()
            },
            if t.created_by.is_empty() {
                "-".to_owned()
            } else {
                t.created_by.clone()
            },
            if t.description.is_empty() {
                "-".to_owned()
            } else {
                t.description.clone()
            },
        ]);
    }
    rows.render()
}

async fn revoke(ctx: &Ctx, args: RevokeArgs) -> Result<ExitCode> {
    let request = RevokeTokenRequest {
        id: args.id.clone(),
    };
    let revoked = ctx
        .call("Admin/RevokeToken", Subject::Token(&args.id), |c| {
            let request = request.clone();
            async move { c.admin().revoke_token(request).await }
        })
        .await?;
    ctx.result(&revoked, || {
        format!(
            "token {} of tenant {} revoked: every broker refuses it within a second\n",
            revoked.id, revoked.tenant
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

fn create_offline(args: &CreateArgs) -> Result<ExitCode> {
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
    let role = role.as_str();
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
