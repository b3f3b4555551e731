//! `hearth certs`: a small certificate authority for development and small clusters.
//!
//! `init` makes a CA and the broker's server certificate; `node` signs one agent's client
//! certificate with that CA. The broker trusts the CA for agents (`tls.client_ca`), the
//! agents and clients trust it for the broker (`tls.ca`, `--ca`). Keys are ECDSA P-256 and
//! written with mode 0600; existing files are never overwritten, so a second `init` cannot
//! silently replace a CA that issued live certificates.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long broker and node certificates are valid.
const LEAF_VALIDITY: Duration = Duration::days(825);

/// `hearth certs ...`
#[derive(Debug, Subcommand)]
pub enum Certs {
    /// Create a CA and the broker's certificate in a directory.
    ///
    /// Writes ca.pem (the CA certificate: give it to agents as --tls-ca, to clients as
    /// --ca, and to the broker as --tls-client-ca), ca-key.pem (the CA's key; keep it
    /// safe, `hearth certs node` signs with it), broker.pem and broker-key.pem (the
    /// broker's --tls-cert and --tls-key). Keys are written with mode 0600. Existing
    /// files are never overwritten.
    #[command(after_help = "Examples:\n  \
        hearth certs init --dir certs\n  \
        hearth certs init --dir certs --broker-name broker-a.internal --broker-name 10.0.0.5")]
    Init(InitArgs),

    /// Sign a client certificate for one node agent with the CA in --dir.
    ///
    /// Writes node-NODE_ID.pem and node-NODE_ID-key.pem (mode 0600): the agent's
    /// --tls-cert and --tls-key. The certificate names the node (subject CN and a DNS
    /// name), and the broker lets an agent register only as the node its certificate
    /// names.
    #[command(after_help = "Example:\n  \
        hearth certs node --dir certs gpu-host-1\n  \
        hearth-agent --broker https://broker-a.internal:7700 --tls-ca certs/ca.pem \\\n      \
        --tls-cert certs/node-gpu-host-1.pem --tls-key certs/node-gpu-host-1-key.pem")]
    Node(NodeArgs),
}

/// `hearth certs init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory for the files; created if missing.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A DNS name or IP address clients and agents use to reach the broker; repeat for
    /// more [default: localhost and 127.0.0.1].
    #[arg(long = "broker-name", value_name = "NAME")]
    pub broker_names: Vec<String>,
}

/// `hearth certs node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Directory holding ca.pem and ca-key.pem (from `hearth certs init`); the node's files
    /// are written there too.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The node's id, as the agent registers it (1-63 characters of a-z, 0-9, '.', '-').
    #[arg(value_name = "NODE_ID")]
    pub node_id: String,
}

/// Runs a `certs` command. It needs no broker.
pub fn run(command: &Certs) -> Result<ExitCode> {
    match command {
        Certs::Init(args) => init(args),
        Certs::Node(args) => node(args),
    }
    .map(|()| ExitCode::SUCCESS)
}

fn init(args: &InitArgs) -> Result<()> {
    let names = if args.broker_names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        args.broker_names.clone()
    };
    std::fs::create_dir_all(&args.dir).map_err(|e| {
        Error::Other(format!(
            "cannot create the directory {}: {e}",
            args.dir.display()
        ))
    })?;
    for file in ["ca.pem", "ca-key.pem", "broker.pem", "broker-key.pem"] {
        refuse_existing(&args.dir.join(file))?;
    }

    let ca_key = KeyPair::generate().map_err(certs_error("generate the CA key"))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Hearth development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca, CA_VALIDITY);
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(certs_error("sign the CA certificate"))?;
    let issuer = Issuer::new(ca, ca_key);

    let broker_key = KeyPair::generate().map_err(certs_error("generate the broker key"))?;
    let mut broker = CertificateParams::new(names.clone())
        .map_err(|e| Error::Usage(format!("invalid --broker-name in {names:?}: {e}")))?;
    broker
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    leaf(&mut broker, ExtendedKeyUsagePurpose::ServerAuth);
    let broker_cert = broker
        .signed_by(&broker_key, &issuer)
        .map_err(certs_error("sign the broker certificate"))?;

    write(&args.dir.join("ca.pem"), &ca_cert.pem(), 0o644)?;
    write(
        &args.dir.join("ca-key.pem"),
        &issuer.key().serialize_pem(),
        0o600,
    )?;
    write(&args.dir.join("broker.pem"), &broker_cert.pem(), 0o644)?;
    write(
        &args.dir.join("broker-key.pem"),
        &broker_key.serialize_pem(),
        0o600,
    )?;
    eprintln!(
        "wrote {dir}/ca.pem, ca-key.pem, broker.pem (for {names}) and broker-key.pem\n\
         broker: --tls-cert {dir}/broker.pem --tls-key {dir}/broker-key.pem --tls-client-ca {dir}/ca.pem",
        dir = args.dir.display(),
        names = names.join(", "),
    );
    Ok(())
}

fn node(args: &NodeArgs) -> Result<()> {
    let id = &args.node_id;
    if !valid_node_id(id) {
        return Err(Error::Usage(format!(
            "NODE_ID {id:?} must be 1-63 characters of a-z, 0-9, '.' and '-', starting and \
             ending with a letter or digit"
        )));
    }
    let ca_pem = read(&args.dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&args.dir.join("ca-key.pem"))?).map_err(|e| {
        Error::Other(format!(
            "{}/ca-key.pem is not a usable private key: {e}",
            args.dir.display()
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| {
        Error::Other(format!(
            "{}/ca.pem is not a usable CA certificate: {e}",
            args.dir.display()
        ))
    })?;
    let cert_path = args.dir.join(format!("node-{id}.pem"));
    let key_path = args.dir.join(format!("node-{id}-key.pem"));
    refuse_existing(&cert_path)?;
    refuse_existing(&key_path)?;

    let key = KeyPair::generate().map_err(certs_error("generate the node key"))?;
    let mut params = CertificateParams::new(vec![id.clone()])
        .map_err(|e| Error::Usage(format!("invalid NODE_ID {id:?}: {e}")))?;
    params
        .distinguished_name
        .push(DnType::CommonName, id.clone());
    leaf(&mut params, ExtendedKeyUsagePurpose::ClientAuth);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(certs_error("sign the node certificate"))?;
    write(&cert_path, &cert.pem(), 0o644)?;
    write(&key_path, &key.serialize_pem(), 0o600)?;
    eprintln!(
        "wrote {} and {} for node {id}\n\
         agent: --tls-ca {}/ca.pem --tls-cert {} --tls-key {}",
        cert_path.display(),
        key_path.display(),
        args.dir.display(),
        cert_path.display(),
        key_path.display(),
    );
    Ok(())
}

/// The agent's rule for node ids, so a certificate is never made for a name no agent
/// could register.
fn valid_node_id(id: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (1..=63).contains(&id.len())
        && id.chars().all(ok_char)
        && edge(id.chars().next())
        && edge(id.chars().last())
}

/// Settings every broker and node certificate shares.
fn leaf(params: &mut CertificateParams, usage: ExtendedKeyUsagePurpose) {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    validity(params, LEAF_VALIDITY);
}

/// Valid from an hour ago (clock skew between hosts) for `days`.
fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + valid_for;
}

fn certs_error(what: &'static str) -> impl Fn(rcgen::Error) -> Error {
    move |e| Error::Other(format!("cannot {what}: {e}"))
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::Other(format!(
            "{} already exists; remove it first or choose another --dir (files are never \
             overwritten)",
            path.display()
        )));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: format!(
            "{} (run `hearth certs init --dir DIR` first)",
            path.display()
        ),
        source,
    })
}

/// Creates `path` with `mode` (never replacing a file), so a key is never readable by
/// others, not even for a moment.
fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Error::Other(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_node_writes_private_keys_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("hearth-certs-{}", ulid::Ulid::new()));
        init(&InitArgs {
            dir: dir.clone(),
            broker_names: vec![],
        })
        .unwrap();
        node(&NodeArgs {
            dir: dir.clone(),
            node_id: "gpu-1".into(),
        })
        .unwrap();
        for (file, mode) in [
            ("ca.pem", 0o644),
            ("ca-key.pem", 0o600),
            ("broker.pem", 0o644),
            ("broker-key.pem", 0o600),
            ("node-gpu-1.pem", 0o644),
            ("node-gpu-1-key.pem", 0o600),
        ] {
            let meta = std::fs::metadata(dir.join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        // A second init never replaces the CA.
        let again = init(&InitArgs {
            dir: dir.clone(),
            broker_names: vec![],
        });
        assert!(again.unwrap_err().to_string().contains("already exists"));
        let bad = node(&NodeArgs {
            dir: dir.clone(),
            node_id: "Bad_Name".into(),
        });
        assert_eq!(bad.unwrap_err().exit_code(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
