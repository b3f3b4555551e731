//! TLS to the broker: the agent verifies the broker against `tls.ca` and presents its own
//! certificate, which the broker verifies and takes the node id from.
//!
//! The files are read on every dial, so certificates renewed on disk are picked up at
//! the next reconnect without a restart.

use std::path::{Path, PathBuf};

use rustls::pki_types::{PrivateKeyDer, pem::PemObject as _};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use x509_parser::{extensions::GeneralName, pem::Pem};

use crate::Error;

/// `[tls]`: how the agent trusts the broker and proves who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificates the broker's certificate must chain to. Unset
    /// with an `https://` broker: the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM file with this node's client certificate (`hearth certs node` makes one).
    pub cert: Option<PathBuf>,
    /// PEM file with the private key of `cert`.
    pub key: Option<PathBuf>,
    /// The name every broker's certificate must hold, whatever host the URL names.
    /// Unset: the URL's host. Needed where brokers advertise addresses their certificate
    /// cannot name, such as pod IPs behind a Kubernetes Service.
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Problems with these settings, each naming its setting: `cert` and `key` come
    /// together, every file given is readable PEM, with TLS configured no broker is
    /// dialled in plaintext, and an `https://` broker gets a client certificate (the
    /// broker takes the node's identity from it and refuses agents without one).
    pub fn problems(&self, brokers: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        if self.cert.is_none()
            && let Some(url) = brokers.iter().find(|u| u.starts_with("https://"))
        {
            problems.push(format!(
                "tls.cert is required: broker URL {url:?} is https://, and brokers accept \
                 agents only with a client certificate naming the node (--tls-cert and \
                 --tls-key; `hearth certs node <node-id>` makes them)"
            ));
        }
        if let Some(name) = &self.server_name
            && (name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/'))
        {
            problems.push(format!(
                "tls.server_name {name:?} must be a host name, such as hearth-broker.hearth.svc"
            ));
        }
        if self.ca.is_some() || self.cert.is_some() {
            for url in brokers.iter().filter(|u| u.starts_with("http://")) {
                problems.push(format!(
                    "broker URL {url:?} is plaintext, but [tls] is configured; use https://"
                ));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            problems.push(
                "tls.cert and tls.key must be set together (--tls-cert, --tls-key)".to_owned(),
            );
        }
        for (setting, path) in [
            ("tls.ca", &self.ca),
            ("tls.cert", &self.cert),
            ("tls.key", &self.key),
        ] {
            if let Some(path) = path
                && let Err(why) = read_pem(path)
            {
                problems.push(format!("{setting}: {why}"));
            }
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key)
            && let Err(why) = key_matches(cert, key)
        {
            problems.push(why);
        }
        problems
    }

    /// The node id the certificate names (subject CN, else its first DNS name), as the
    /// broker reads it; `None` without a readable certificate.
    pub fn node_id(&self) -> Option<String> {
        let pem = read_pem(self.cert.as_ref()?).ok()?;
        let cert = pem.parse_x509().ok()?;
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

    /// Applies TLS to the endpoint of an `https://` broker URL (validation refuses
    /// `http://` ones when TLS is configured).
    pub fn apply(&self, url: &str, endpoint: Endpoint) -> Result<Endpoint, Error> {
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("tls.ca", ca)?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(
                read("tls.cert", cert)?,
                read("tls.key", key)?,
            ));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name);
        }
        endpoint.tls_config(tls).map_err(|source| Error::BrokerUrl {
            url: url.to_owned(),
            source,
        })
    }
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::TlsFile {
        setting,
        path: path.to_owned(),
        source,
    })
}

/// Whether the key in `key` belongs to the certificate in `cert` (unreadable files are
/// reported on their own).
fn key_matches(cert: &Path, key: &Path) -> Result<(), String> {
    let (Ok(cert_pem), Ok(key_pem)) = (read_pem(cert), std::fs::read(key)) else {
        return Ok(());
    };
    let cert_x509 = cert_pem.parse_x509().map_err(|e| {
        format!(
            "tls.cert: {} is not an X.509 certificate: {e}",
            cert.display()
        )
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("tls.key: {}: no usable private key: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("tls.key: {}: unsupported private key: {e}", key.display()))?;
    let matches = signing
        .public_key()
        .is_some_and(|spki| spki.as_ref() == cert_x509.public_key().raw);
    if matches {
        Ok(())
    } else {
        Err(format!(
            "tls.key: {} does not belong to the certificate in tls.cert ({})",
            key.display(),
            cert.display()
        ))
    }
}

fn read_pem(path: &Path) -> Result<Pem, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match Pem::iter_from_buffer(&bytes).next() {
        Some(Ok(pem)) => Ok(pem),
        Some(Err(e)) => Err(format!("{}: bad PEM: {e}", path.display())),
        None => Err(format!("{} holds no PEM block", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_and_key_come_together_and_must_be_readable() {
        let tls = TlsConfig {
            cert: Some("/nonexistent/node.pem".into()),
            ..TlsConfig::default()
        };
        let problems = tls.problems(&["https://b:7700".to_owned()]).join("; ");
        assert!(problems.contains("tls.cert and tls.key"), "{problems}");
        assert!(
            problems.contains("tls.cert: cannot read /nonexistent/node.pem"),
            "{problems}"
        );
        let no_cert = TlsConfig {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        }
        .problems(&["https://b:7700".to_owned()])
        .join("; ");
        assert!(
            no_cert.contains("tls.cert is required: broker URL \"https://b:7700\" is https://"),
            "{no_cert}"
        );
        let bad_name = TlsConfig {
            server_name: Some("a b".into()),
            ..TlsConfig::default()
        }
        .problems(&[])
        .join("; ");
        assert!(bad_name.contains("tls.server_name \"a b\""), "{bad_name}");
        assert!(
            TlsConfig::default()
                .problems(&["http://b:7700".to_owned()])
                .is_empty()
        );
        let plaintext = TlsConfig {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        }
        .problems(&["http://b:7700".to_owned()])
        .join("; ");
        assert!(plaintext.contains("use https://"), "{plaintext}");
        assert_eq!(tls.node_id(), None);
    }
}
