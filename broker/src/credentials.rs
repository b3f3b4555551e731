//! Registry credentials per tenant: kept in the store encrypted, handed to an agent only
//! in the start command whose pull needs them.
//!
//! - **At rest.** A record holds the user name and password sealed with AES-256-GCM under
//!   the key in `registry_credentials.key_file` (32 random bytes, base64), with a fresh
//!   nonce per write. The record's store key (`credentials/<tenant>/<registry>`) is the
//!   associated data, so a record copied under another tenant's key does not open.
//! - **In use.** A start reads the tenant's record for the registry of the session's
//!   image and puts the credentials in its `StartSessionCommand`; nothing else carries
//!   them, and neither the API nor a log line shows the password.
//! - **Per tenant.** Records are found by the caller's tenant only, so one tenant's
//!   credentials never pull for another's session.
//!
//! A broker without the key refuses to store credentials (FAILED_PRECONDITION naming the
//! setting), and a start whose tenant has a record it cannot open fails with the reason.

use std::{path::PathBuf, time::SystemTime};

use base64::Engine as _;
use hearth_sdk::proto::v1::{RegistryAuth, RegistryCredential};
use prost::Message as _;
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};
use serde::Deserialize;

use crate::{
    cluster::{Cluster, LeaderState},
    config::ConfigError,
    error::{Error, Result},
    sessions::fenced_write,
    store::{Compare, Txn},
};

/// Key prefix of credential records.
pub const CREDENTIALS_PREFIX: &str = "credentials/";
/// Longest registry name (a DNS name and a port).
pub const MAX_REGISTRY_LEN: usize = 253 + 6;
/// Longest user name or password.
pub const MAX_SECRET_LEN: usize = 4096;

/// `[registry_credentials]` in the broker's config.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CredentialsConfig {
    /// File holding the key that seals credentials in the store: 32 random bytes in
    /// base64 (`head -c 32 /dev/urandom | base64 > credentials.key`). Every broker of a
    /// cluster needs the same one. Unset: registry credentials cannot be stored.
    pub key_file: Option<PathBuf>,
}

/// A stored record: the credentials sealed, and when they were set.
#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    /// The registry, as in the key.
    #[prost(string, tag = "1")]
    registry: String,
    /// The AEAD nonce.
    #[prost(bytes = "vec", tag = "2")]
    nonce: Vec<u8>,
    /// `Secret`, encoded then sealed (with its tag).
    #[prost(bytes = "vec", tag = "3")]
    sealed: Vec<u8>,
    /// When they were set.
    #[prost(message, optional, tag = "4")]
    updated_at: Option<prost_types::Timestamp>,
}

/// What is sealed.
#[derive(Clone, PartialEq, prost::Message)]
struct Secret {
    #[prost(string, tag = "1")]
    username: String,
    #[prost(string, tag = "2")]
    password: String,
}

/// The sealing key, if the broker has one.
pub struct Credentials {
    key: Option<LessSafeKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("key", &self.key.as_ref().map(|_| "set"))
            .finish()
    }
}

fn key_error(reason: String) -> ConfigError {
    ConfigError {
        setting: "registry_credentials.key_file".to_owned(),
        reason,
    }
}

impl Credentials {
    /// Reads the key `config` names, if any.
    pub fn load(config: &CredentialsConfig) -> std::result::Result<Self, ConfigError> {
        let key = match &config.key_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| key_error(format!("cannot read {}: {e}", path.display())))?;
                Some(
                    Self::key_from_base64(text.trim())
                        .map_err(|reason| key_error(format!("{}: {reason}", path.display())))?,
                )
            }
        };
        Ok(Self {
            key,
            random: SystemRandom::new(),
        })
    }

    fn key_from_base64(text: &str) -> std::result::Result<LessSafeKey, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("is not base64 ({e})"))?;
        if bytes.len() != 32 {
            return Err(format!(
                "holds {} bytes; the key is 32 random bytes in base64 \
                 (head -c 32 /dev/urandom | base64)",
                bytes.len()
            ));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "is not a key".to_owned())?;
        Ok(LessSafeKey::new(key))
    }

    fn key(&self) -> Result<&LessSafeKey> {
        self.key.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(
                "this broker has no registry_credentials.key_file, so it cannot store or use \
                 registry credentials"
                    .to_owned(),
            )
        })
    }

    fn seal(&self, store_key: &str, secret: &Secret) -> Result<(Vec<u8>, Vec<u8>)> {
        let key = self.key()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| Error::Unavailable("no randomness for a nonce; retry".to_owned()))?;
        let mut sealed = secret.encode_to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(store_key.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| Error::FailedPrecondition("sealing credentials failed".to_owned()))?;
        Ok((nonce.to_vec(), sealed))
    }

    fn open(&self, store_key: &str, record: &Record) -> Result<Secret> {
        let key = self.key()?;
        let cannot = || {
            Error::FailedPrecondition(format!(
                "the stored credentials for registry {} do not open with this broker's \
                 registry_credentials.key_file (another key sealed them); set them again",
                record.registry
            ))
        };
        let nonce = Nonce::try_assume_unique_for_key(&record.nonce).map_err(|_| cannot())?;
        let mut sealed = record.sealed.clone();
        let plain = key
            .open_in_place(nonce, Aad::from(store_key.as_bytes()), &mut sealed)
            .map_err(|_| cannot())?;
        Secret::decode(&*plain).map_err(|_| cannot())
    }

    /// Stores `tenant`'s credentials for `registry`, replacing any.
    pub async fn set(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        tenant: &str,
        registry: &str,
        username: String,
        password: String,
    ) -> Result<RegistryCredential> {
        let registry = registry_name("registry", registry)?;
        secret_field("username", &username)?;
        secret_field("password", &password)?;
        let key = record_key(tenant, &registry);
        let (nonce, sealed) = self.seal(
            &key,
            &Secret {
                username: username.clone(),
                password,
            },
        )?;
        let updated_at = hearth_sdk::time::timestamp(SystemTime::now());
        let record = Record {
            registry: registry.clone(),
            nonce,
            sealed,
            updated_at: Some(updated_at),
        };
        fenced_write(
            cluster,
            leader,
            Txn::fenced(leader.epoch).put(key, record.encode_to_vec()),
        )
        .await?;
        Ok(RegistryCredential {
            registry,
            username,
            updated_at: Some(updated_at),
        })
    }

    /// `tenant`'s credentials, without passwords, ordered by registry.
    pub async fn list(&self, cluster: &Cluster, tenant: &str) -> Result<Vec<RegistryCredential>> {
        let prefix = format!("{CREDENTIALS_PREFIX}{tenant}/");
        let mut shown = Vec::new();
        for kv in cluster.store.list(&prefix).await? {
            let record = decode(&kv.key, &kv.value)?;
            let username = self.open(&kv.key, &record).map(|s| s.username)?;
            shown.push(RegistryCredential {
                registry: record.registry,
                username,
                updated_at: record.updated_at,
            });
        }
        shown.sort_by(|a, b| a.registry.cmp(&b.registry));
        Ok(shown)
    }

    /// Forgets `tenant`'s credentials for `registry`; NOT_FOUND when it has none.
    pub async fn delete(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        tenant: &str,
        registry: &str,
    ) -> Result<()> {
        let registry = registry_name("registry", registry)?;
        let key = record_key(tenant, &registry);
        let not_found = || Error::NotFound {
            kind: "registry credential",
            id: registry.clone(),
        };
        let Some(kv) = cluster.store.get(&key).await? else {
            return Err(not_found());
        };
        let txn = Txn::fenced(leader.epoch)
            .when(Compare::ModRevision(key.clone(), kv.mod_revision))
            .delete(key);
        if !fenced_write(cluster, leader, txn).await?.succeeded {
            // Replaced or deleted meanwhile: whoever did it decided.
            return Err(Error::FailedPrecondition(format!(
                "the credentials for registry {registry} changed while being deleted; retry"
            )));
        }
        Ok(())
    }

    /// The credentials a start of `tenant`'s session needs to pull `image`, if the tenant
    /// set any for its registry.
    pub async fn for_image(
        &self,
        cluster: &Cluster,
        tenant: &str,
        image: &str,
    ) -> Result<Option<RegistryAuth>> {
        let registry = hearth_sdk::image::registry(image).to_ascii_lowercase();
        let key = record_key(tenant, &registry);
        let Some(kv) = cluster.store.get(&key).await? else {
            return Ok(None);
        };
        let secret = self.open(&key, &decode(&key, &kv.value)?)?;
        Ok(Some(RegistryAuth {
            registry,
            username: secret.username,
            password: secret.password,
        }))
    }
}

fn record_key(tenant: &str, registry: &str) -> String {
    format!("{CREDENTIALS_PREFIX}{tenant}/{registry}")
}

fn decode(key: &str, value: &[u8]) -> Result<Record> {
    Record::decode(value).map_err(|e| {
        Error::Store(crate::store::StoreError::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    })
}

/// Checks a registry name (`host`, `host:port`) and spells it as references do: lower
/// case, with Docker Hub's other names as `docker.io`.
pub fn registry_name(field: &str, registry: &str) -> Result<String> {
    let name = registry.trim().to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_REGISTRY_LEN {
        return Err(Error::invalid(
            field,
            format!("must be 1-{MAX_REGISTRY_LEN} characters"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')))
    {
        return Err(Error::invalid(
            field,
            format!(
                "{registry:?} has {bad:?}: name the registry's host and port only, as image \
                 references do (registry.example.com, 127.0.0.1:5000, docker.io)"
            ),
        ));
    }
    Ok(match name.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            hearth_sdk::image::DOCKER_HUB.to_owned()
        }
        _ => name,
    })
}

fn secret_field(field: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_SECRET_LEN {
        return Err(Error::invalid(
            field,
            format!("must be 1-{MAX_SECRET_LEN} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key() -> Credentials {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]) + "\n",
        )
        .unwrap();
        Credentials::load(&CredentialsConfig {
            key_file: Some(path),
        })
        .unwrap()
    }

    #[test]
    fn sealed_credentials_open_only_under_their_own_key() {
        let c = with_key();
        let secret = Secret {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let key = record_key("team-a", "127.0.0.1:5000");
        let (nonce, sealed) = c.seal(&key, &secret).unwrap();
        assert!(
            !sealed.windows(6).any(|w| w == b"s3cret"),
            "the password is not stored in clear"
        );
        let record = Record {
            registry: "127.0.0.1:5000".into(),
            nonce,
            sealed,
            updated_at: None,
        };
        assert_eq!(c.open(&key, &record).unwrap(), secret);
        // The same record under another tenant's key does not open.
        let moved = record_key("team-b", "127.0.0.1:5000");
        let err = c.open(&moved, &record).unwrap_err().to_string();
        assert!(err.contains("do not open"), "{err}");
        // Nor under another broker key.
        let other = Credentials {
            key: Some(
                Credentials::key_from_base64(
                    &base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
                )
                .unwrap(),
            ),
            random: SystemRandom::new(),
        };
        assert!(other.open(&key, &record).is_err());
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(
            c.seal(&key, &secret).unwrap(),
            c.seal(&key, &secret).unwrap()
        );
    }

    #[test]
    fn keys_are_checked_and_errors_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        for (content, says) in [
            ("not base64!", "is not base64"),
            ("c2hvcnQ=", "holds 5 bytes"),
        ] {
            let path = dir.path().join("key");
            std::fs::write(&path, content).unwrap();
            let err = Credentials::load(&CredentialsConfig {
                key_file: Some(path),
            })
            .unwrap_err();
            assert_eq!(err.setting, "registry_credentials.key_file");
            assert!(err.reason.contains(says), "{}", err.reason);
        }
        let err = Credentials::load(&CredentialsConfig {
            key_file: Some(dir.path().join("absent")),
        })
        .unwrap_err();
        assert!(err.reason.contains("cannot read"), "{}", err.reason);
        // Without a key nothing can be sealed, and the error names the setting.
        let none = Credentials::load(&CredentialsConfig::default()).unwrap();
        let err = none.seal("k", &Secret::default()).unwrap_err().to_string();
        assert!(err.contains("registry_credentials.key_file"), "{err}");
    }

    #[test]
    fn registry_names_are_hosts_and_ports() {
        for (given, name) in [
            ("127.0.0.1:5000", "127.0.0.1:5000"),
            ("Registry.Example.com", "registry.example.com"),
            ("index.docker.io", "docker.io"),
            ("localhost:5000", "localhost:5000"),
        ] {
            assert_eq!(registry_name("registry", given).unwrap(), name);
        }
        for bad in [
            "",
            "https://registry.example.com",
            "registry.example.com/team",
            "a b",
        ] {
            assert!(
                matches!(
                    registry_name("registry", bad),
                    Err(Error::InvalidArgument { ref field, .. }) if field == "registry"
                ),
                "{bad:?}"
            );
        }
    }
}
