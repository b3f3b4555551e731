//! `hearth registry`: the caller's credentials for private image registries.
//!
//! The broker keeps them encrypted in its store and hands them to a node only in the
//! start that pulls with them; they serve the caller's tenant alone. The password is read
//! from stdin, so it never shows in a shell's history or the process list, and no command
//! prints it back.

use std::{io::Read as _, process::ExitCode, time::SystemTime};

use clap::{Args, Subcommand};
use hearth_sdk::proto::v1::{
    DeleteRegistryCredentialRequest, ListRegistryCredentialsRequest, RegistryCredential,
    SetRegistryCredentialRequest,
};

use super::Ctx;
use crate::{
    error::{Error, Result, Subject},
    table::{self, Table},
};

/// `hearth registry ...`
#[derive(Debug, Subcommand)]
pub enum Registry {
    /// Store your tenant's credentials for a registry (replacing any); the password or
    /// access token is read from stdin.
    ///
    /// Sessions of your tenant whose image names that registry are pulled with them.
    #[command(after_help = "Examples:\n  \
        echo \"$REGISTRY_TOKEN\" | hearth registry login registry.example.com --username ci\n  \
        hearth registry login 127.0.0.1:5000 --username alice < password.txt")]
    Login(LoginArgs),
    /// List the registries your tenant has credentials for (never the passwords).
    #[command(visible_alias = "list")]
    Ls,
    /// Forget your tenant's credentials for a registry.
    #[command(visible_alias = "rm")]
    Logout(RegistryArg),
}

/// `hearth registry login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry's host and port, as image references name it (`docker.io` for
    /// Docker Hub).
    pub registry: String,
    /// The user name.
    #[arg(long, short = 'u')]
    pub username: String,
}

/// A registry name.
#[derive(Debug, Args)]
pub struct RegistryArg {
    /// The registry's host and port.
    pub registry: String,
}

/// Runs `hearth registry ...`.
pub async fn run(ctx: &Ctx, command: Registry) -> Result<ExitCode> {
    match command {
        Registry::Login(args) => login(ctx, args).await,
        Registry::Ls => list(ctx).await,
        Registry::Logout(args) => logout(ctx, args).await,
    }
}

async fn login(ctx: &Ctx, args: LoginArgs) -> Result<ExitCode> {
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .map_err(|e| Error::Usage(format!("cannot read the password from stdin: {e}")))?;
    // One trailing newline is the shell's, not the password's.
    let password = password
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&password)
        .to_owned();
    if password.is_empty() {
        return Err(Error::Usage(
            "no password on stdin: pipe the password or access token in \
             (echo \"$TOKEN\" | hearth registry login REGISTRY --username USER)"
                .to_owned(),
        ));
    }
    let request = SetRegistryCredentialRequest {
        registry: args.registry,
        username: args.username,
        password,
    };
    let stored = ctx
        .call("Templates/SetRegistryCredential", Subject::None, |c| {
            let request = request.clone();
            async move { c.templates().set_registry_credential(request).await }
        })
        .await?;
    ctx.result(&stored, || {
        format!(
            "credentials for {} (user {}) stored; your sessions pull from it with them\n",
            stored.registry, stored.username
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Ctx) -> Result<ExitCode> {
    let listed = ctx
        .call(
            "Templates/ListRegistryCredentials",
            Subject::None,
            |c| async move {
                c.templates()
                    .list_registry_credentials(ListRegistryCredentialsRequest {})
                    .await
            },
        )
        .await?;
    ctx.result(&listed, || {
        credential_table(&listed.credentials, SystemTime::now())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn credential_table(credentials: &[RegistryCredential], now: SystemTime) -> String {
    let mut rows = Table::new(&["REGISTRY", "USERNAME", "SET"]);
    for c in credentials {
        rows.row(vec![
            c.registry.clone(),
            c.username.clone(),
            format!("{} ago", table::age(c.updated_at.as_ref(), now)),
        ]);
    }
    rows.render()
}

async fn logout(ctx: &Ctx, args: RegistryArg) -> Result<ExitCode> {
    let request = DeleteRegistryCredentialRequest {
        registry: args.registry.clone(),
    };
    let deleted = ctx
        .call("Templates/DeleteRegistryCredential", Subject::None, |c| {
            let request = request.clone();
            async move { c.templates().delete_registry_credential(request).await }
        })
        .await?;
    ctx.result(&deleted, || {
        format!("credentials for {} forgotten\n", args.registry)
    })?;
    Ok(ExitCode::SUCCESS)
}
