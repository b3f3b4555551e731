//! TLS on the gRPC port, and the node identity agents prove with their certificates.
//!
//! One port serves clients and agents (DESIGN section 12), so when `[tls]` is configured
//! the port speaks TLS to everyone. Client certificates are optional at the handshake:
//! token-only clients need just the CA. A certificate that is presented must chain to
//! `tls.client_ca`, or the handshake fails. `NodeAgent.Connect` then requires one
//! ([`agent_identity`]), and the node id is taken from it: an agent registers only as the
//! node its certificate names ([`check_hello`]).
//!
//! Without TLS the broker listens on loopback addresses only, unless `insecure_listen`
//! says otherwise ([`check_listen`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::Deserialize;
use tonic::{
    Status,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName};

use crate::config::{Config, ConfigError};

/// `[tls]`: the broker's certificate and key, and the CA that signs agents' certificates.
/// All three or none.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the broker's certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM file with the broker's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// PEM file with the CA certificates that node agents' certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

/// The loaded files, checked.
struct Loaded {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Vec<u8>,
}

fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_owned(),
        reason: reason.into(),
    }
}

impl TlsConfig {
    /// Whether any TLS setting is given (validation then requires all of them).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.client_ca.is_some()
    }

    /// Checks that all three files are given, readable and parse, and that the key
    /// belongs to the certificate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.load().map(drop)
    }

    fn load(&self) -> Result<Option<Loaded>, ConfigError> {
        if !self.enabled() {
            return Ok(None);
        }
        let path = |setting: &str, value: &Option<PathBuf>| -> Result<PathBuf, ConfigError> {
            value.clone().ok_or_else(|| {
                invalid(
                    setting,
                    "must be set with the other tls settings: TLS needs tls.cert, tls.key \
                     and tls.client_ca (`hearth certs init` makes all three)",
                )
            })
        };
        let (cert_path, key_path, ca_path) = (
            path("tls.cert", &self.cert)?,
            path("tls.key", &self.key)?,
            path("tls.client_ca", &self.client_ca)?,
        );
        let cert = read("tls.cert", &cert_path)?;
        let key = read("tls.key", &key_path)?;
        let client_ca = read("tls.client_ca", &ca_path)?;

        let chain = certificates("tls.cert", &cert_path, &cert)?;
        certificates("tls.client_ca", &ca_path, &client_ca)?;
        let private = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            invalid(
                "tls.key",
                format!("{}: no usable PEM private key: {e}", key_path.display()),
            )
        })?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| {
            invalid(
                "tls.key",
                format!("{}: unsupported private key: {e}", key_path.display()),
            )
        })?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
            invalid(
                "tls.cert",
                format!("{}: not an X.509 certificate: {e}", cert_path.display()),
            )
        })?;
        let matches = signing
            .public_key()
            .is_some_and(|spki| spki.as_ref() == leaf.public_key().raw);
        if !matches {
            return Err(invalid(
                "tls.key",
                format!(
                    "{} does not belong to the certificate in tls.cert ({})",
                    key_path.display(),
                    cert_path.display()
                ),
            ));
        }
        Ok(Some(Loaded {
            cert,
            key,
            client_ca,
        }))
    }

    /// A server builder that speaks TLS when `[tls]` is configured: client certificates
    /// are optional at the handshake and, when presented, must chain to `client_ca`.
    pub fn server(&self) -> anyhow::Result<Server> {
        let builder = Server::builder();
        let Some(loaded) = self.load()? else {
            return Ok(builder);
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(loaded.cert, loaded.key))
            .client_ca_root(Certificate::from_pem(loaded.client_ca))
            .client_auth_optional(true);
        Ok(builder.tls_config(tls)?)
    }
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| invalid(setting, format!("cannot read {}: {e}", path.display())))
}

fn certificates(
    setting: &str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(setting, format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            setting,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert).map_err(|e| {
            invalid(
                setting,
                format!("{}: not an X.509 certificate: {e}", path.display()),
            )
        })?;
    }
    Ok(certs)
}

/// Refuses a plaintext gRPC port on a non-loopback address unless `insecure_listen` is
/// set: tokens and session traffic would cross the network in the clear.
pub fn check_listen(config: &Config) -> Result<(), ConfigError> {
    if config.tls.enabled() || config.insecure_listen || config.grpc_addr.ip().is_loopback() {
        return Ok(());
    }
    Err(invalid(
        "grpc_addr",
        format!(
            "{} is not a loopback address and no [tls] is configured, so tokens and session \
             traffic would cross the network unencrypted. Configure TLS (--tls-cert, --tls-key, \
             --tls-client-ca; `hearth certs init` makes a development CA), or pass \
             --insecure-listen (HEARTH_INSECURE_LISTEN, insecure_listen = true) to listen \
             without TLS anyway",
            config.grpc_addr
        ),
    ))
}

/// Logs loudly when the broker listens in plaintext beyond loopback.
pub fn warn_if_insecure(config: &Config) {
    if !config.tls.enabled() && !config.grpc_addr.ip().is_loopback() {
        tracing::warn!(
            grpc = %config.grpc_addr,
            "INSECURE: listening without TLS on a non-loopback address (insecure_listen); \
             tokens, session traffic and agent streams are unencrypted and agents are not \
             authenticated"
        );
    }
}

/// What the handshake proved about the peer of an agent stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentIdentity {
    /// The broker runs without TLS: agents are not authenticated (development).
    Unauthenticated,
    /// The node named by the agent's verified certificate.
    Node(String),
}

/// The identity an agent stream may register as. With TLS on, the agent must have
/// presented a certificate (which the handshake already verified against `client_ca`);
/// the node id is its subject CN, or, when it has no CN, its first DNS name.
pub fn agent_identity(
    tls: &TlsConfig,
    peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
) -> Result<AgentIdentity, Status> {
    if !tls.enabled() {
        return Ok(AgentIdentity::Unauthenticated);
    }
    let leaf = peer_certs
        .as_deref()
        .and_then(|certs| certs.first().cloned())
        .ok_or_else(|| {
            Status::unauthenticated(
                "NodeAgent.Connect needs a client certificate signed by the broker's \
                 tls.client_ca; start the agent with --tls-cert and --tls-key \
                 (`hearth certs node` makes them)",
            )
        })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
    node_name(&cert).map(AgentIdentity::Node).ok_or_else(|| {
        Status::unauthenticated(
            "the client certificate names no node: it needs a subject CN or a DNS name \
             equal to the node id",
        )
    })
}

/// The node a certificate names: its subject CN, else its first DNS subject
/// alternative name.
pub fn node_name(cert: &X509Certificate<'_>) -> Option<String> {
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Some(cn.to_owned());
    }
    let sans = cert.subject_alternative_name().ok().flatten()?;
    sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        _ => None,
    })
}

/// Refuses a `Hello` for another node than the certificate names: one host's key must
/// not be able to impersonate (and take the sessions of) another.
pub fn check_hello(identity: &AgentIdentity, hello_node_id: &str) -> Result<(), Status> {
    match identity {
        AgentIdentity::Node(certified) if certified != hello_node_id => {
            Err(Status::permission_denied(format!(
                "the client certificate is for node {certified:?}, but Hello names node \
                 {hello_node_id:?}; an agent registers only as the node its certificate \
                 names (set the agent's node_id to {certified:?} or give it that node's \
                 certificate)"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_must_name_the_certified_node() {
        let node = AgentIdentity::Node("gpu-1".into());
        check_hello(&node, "gpu-1").unwrap();
        let err = check_hello(&node, "gpu-2").unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("\"gpu-1\"") && err.message().contains("\"gpu-2\""));
        check_hello(&AgentIdentity::Unauthenticated, "anything").unwrap();
    }

    #[test]
    fn with_tls_an_agent_needs_a_certificate() {
        let tls = TlsConfig {
            cert: Some("c".into()),
            key: Some("k".into()),
            client_ca: Some("ca".into()),
        };
        let err = agent_identity(&tls, None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("--tls-cert"), "{}", err.message());
        assert_eq!(
            agent_identity(&TlsConfig::default(), None).unwrap(),
            AgentIdentity::Unauthenticated
        );
    }

    #[test]
    fn plaintext_beyond_loopback_needs_insecure_listen() {
        let mut c = Config {
            grpc_addr: "0.0.0.0:7700".parse().unwrap(),
            ..Config::default()
        };
        let err = check_listen(&c).unwrap_err();
        assert_eq!(err.setting, "grpc_addr");
        assert!(err.to_string().contains("--insecure-listen"), "{err}");
        c.insecure_listen = true;
        check_listen(&c).unwrap();
        c.insecure_listen = false;
        c.grpc_addr = "[::1]:7700".parse().unwrap();
        check_listen(&c).unwrap();
    }

    /// A CA-signed broker certificate in `dir`: (cert, key, ca) paths.
    fn certificate_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let paths = (
            dir.join("broker.pem"),
            dir.join("broker-key.pem"),
            dir.join("ca.pem"),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        std::fs::write(&paths.2, ca_cert.pem()).unwrap();
        paths
    }

    #[test]
    fn the_key_must_belong_to_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = certificate_files(dir.path());
        let mut tls = TlsConfig {
            cert: Some(cert),
            key: Some(key),
            client_ca: Some(ca.clone()),
        };
        tls.validate().unwrap();
        tls.server().unwrap();

        let other = dir.path().join("other-key.pem");
        let other_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&other, other_key.serialize_pem()).unwrap();
        tls.key = Some(other);
        let err = tls.validate().unwrap_err();
        assert_eq!(err.setting, "tls.key");
        assert!(err.reason.contains("does not belong"), "{err}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = TlsConfig {
            client_ca: Some(garbage),
            ..tls.clone()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "tls.client_ca");
        assert!(err.reason.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn partial_or_unreadable_tls_settings_name_the_setting() {
        let only_cert = TlsConfig {
            cert: Some("/nonexistent/broker.pem".into()),
            ..TlsConfig::default()
        };
        assert_eq!(only_cert.validate().unwrap_err().setting, "tls.key");
        let missing = TlsConfig {
            cert: Some("/nonexistent/broker.pem".into()),
            key: Some("/nonexistent/broker-key.pem".into()),
            client_ca: Some("/nonexistent/ca.pem".into()),
        };
        let err = missing.validate().unwrap_err();
        assert_eq!(err.setting, "tls.cert");
        assert!(err.reason.contains("/nonexistent/broker.pem"), "{err}");
    }
}
