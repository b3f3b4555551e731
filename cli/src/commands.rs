//! What every command gets: a connected client, the output mode, and helpers that turn
//! SDK errors into the CLI's. One file per command group lives under `commands/`.

pub mod certs;
pub mod events;
pub mod nodes;
pub mod registry;
pub mod sessions;
pub mod templates;
pub mod token;

use std::{future::Future, io::Write as _};

use hearth_sdk::Client;

use crate::{
    args::{Command, DEFAULT_BROKER, Global, Sessions, Templates},
    error::{Error, Result, Subject},
    json::{self, ProtoMessage},
};

/// Flag combinations that clap cannot express, checked before dialling so that a usage
/// error never waits on the network.
pub fn check(command: &Command) -> Result<()> {
    match command {
        Command::Sessions(Sessions::Create(args)) => sessions::source(args).map(drop),
        Command::Templates(Templates::Create(args)) => templates::check_create(args),
        Command::Templates(Templates::Update(args)) => templates::check_update(args),
        _ => Ok(()),
    }
}

/// A connected client and how to print.
pub struct Ctx {
    /// The broker connection.
    pub client: Client,
    /// `--json` was given.
    pub json: bool,
    url: String,
}

impl Ctx {
    /// Dials the brokers in turn until one answers, so a wrong address fails here with the
    /// URL named.
    pub async fn connect(global: &Global) -> Result<Self> {
        // An empty HEARTH_BROKER counts as unset.
        let url = match global.broker.trim() {
            "" => DEFAULT_BROKER.to_owned(),
            url => url.to_owned(),
        };
        let mut builder = Client::builder(url.clone());
        if let Some(token) = &global.token {
            builder = builder.token(token.clone());
        }
        // HEARTH_CA and HEARTH_TLS_SERVER_NAME may be set for a whole shell; they only
        // matter for https:// brokers.
        let tls = url.split(',').any(|u| u.trim().starts_with("https://"));
        if let Some(path) = &global.ca
            && tls
        {
            let pem = std::fs::read(path).map_err(|source| Error::Read {
                path: format!("--ca {}", path.display()),
                source,
            })?;
            builder = builder.ca_pem(pem);
        }
        if let Some(name) = global.tls_server_name.as_deref().map(str::trim)
            && !name.is_empty()
            && tls
        {
            builder = builder.tls_domain(name);
        }
        let client = builder
            .connect()
            .await
            .map_err(|e| Error::from_sdk(e, &url, Subject::None))?;
        Ok(Self {
            client,
            json: global.json,
            url,
        })
    }

    /// Runs one unary call (retrying `UNAVAILABLE` as the SDK does) and maps its error
    /// for `subject`.
    pub async fn call<T, F, Fut>(&self, rpc: &'static str, subject: Subject<'_>, f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.client
            .call(rpc, f)
            .await
            .map_err(|e| self.error(e, subject))
    }

    /// Maps an SDK error about `subject`.
    pub fn error(&self, e: hearth_sdk::Error, subject: Subject<'_>) -> Error {
        Error::from_sdk(e, &self.url, subject)
    }

    /// Maps a status that arrived inside a stream.
    pub fn status(&self, rpc: &'static str, status: tonic::Status, subject: Subject<'_>) -> Error {
        Error::from_status(rpc, &status, &self.url, subject)
    }

    /// Prints a command's one result: indented JSON with `--json`, else `text()`.
    pub fn result<M: ProtoMessage>(
        &self,
        message: &M,
        text: impl FnOnce() -> String,
    ) -> Result<()> {
        if self.json {
            stdout(format!("{}\n", json::pretty(message)).as_bytes())
        } else {
            stdout(text().as_bytes())
        }
    }

    /// Prints one item of a stream: a JSON line with `--json`, else `text()`.
    pub fn item<M: ProtoMessage>(&self, message: &M, text: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            stdout(format!("{}\n", json::line(message)).as_bytes())
        } else {
            stdout(text().as_bytes())
        }
    }
}

/// Writes to stdout at once (turn output streams as it arrives). A reader that went
/// away (`hearth ... | head`) ends the CLI quietly, as it does other Unix tools.
pub fn stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(Error::Other(format!("cannot write to stdout: {e}"))),
    }
}

/// Writes to stderr at once; progress that cannot be shown is not worth failing for.
pub fn stderr(bytes: &[u8]) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(bytes).and_then(|()| err.flush());
}

/// Reads `-` (stdin) or a file, for `--stdin` and `-d @FILE`.
pub fn read_input(path: &str, flag: &str) -> Result<Vec<u8>> {
    let read = if path == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(path)
    };
    read.map_err(|source| Error::Read {
        path: format!("{flag} {path}"),
        source,
    })
}
