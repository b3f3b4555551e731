//! Client tokens made through `Admin.CreateToken`, kept in the store under `tokens/<id>`
//! beside the config file's `[[auth.tokens]]`.
//!
//! - **Only the hash is stored.** A token is `hth_` and 32 random bytes (unpadded
//!   base64url), as `hearth token create` makes them; the record holds its SHA-256,
//!   tenant, role, creator and description, and the token is returned once, in the
//!   CreateToken answer.
//! - **Writes are the leader's,** fenced like every other write. Reads of the list are
//!   every broker's: [`follow`] watches `tokens/` and replaces the tokens
//!   [`crate::auth::Tokens`] accepts after every change, so a revocation holds on the
//!   standbys too (a standby's refusal of a valid token is UNAVAILABLE, of a revoked one
//!   UNAUTHENTICATED), and a standby that takes over has them already.
//! - **Authentication must be on** (a token in the config file) for CreateToken: tokens in
//!   the store never turn it on, so an operator cannot lock everyone out by making a user
//!   token on a cluster that had none.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hearth_sdk::proto::v1::{
    CreateTokenRequest, CreateTokenResponse, ListTokensRequest, TokenInfo, TokenSource,
};
use prost::Message as _;
use ring::rand::SecureRandom as _;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{self, Caller, Role},
    cluster::Cluster,
    error::{Error, Result},
    store::{Compare, Txn},
};

/// Where the store keeps tokens: `tokens/<id>`.
pub const TOKENS_PREFIX: &str = "tokens/";

/// What every token starts with, as `hearth token create` writes them.
pub const TOKEN_PREFIX: &str = "hth_";

/// Most bytes of a token's description.
pub const MAX_DESCRIPTION: usize = 256;

/// Between full re-reads of the store's tokens, should a watch miss a change silently.
const RESYNC: Duration = Duration::from_secs(30);

/// Pause before watching again after a watch broke or could not start.
const REWATCH: Duration = Duration::from_millis(500);

/// A token in the store; never the token itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenRecord {
    /// `tok_` and a ULID.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The tenant it acts for.
    #[prost(string, tag = "2")]
    pub tenant: String,
    /// "user" or "admin".
    #[prost(string, tag = "3")]
    pub role: String,
    /// The token's SHA-256.
    #[prost(bytes = "vec", tag = "4")]
    pub sha256: Vec<u8>,
    /// When it was made.
    #[prost(message, optional, tag = "5")]
    pub created_at: Option<prost_types::Timestamp>,
    /// The tenant of the admin who made it.
    #[prost(string, tag = "6")]
    pub created_by: String,
    /// What it is for.
    #[prost(string, tag = "7")]
    pub description: String,
}

impl TokenRecord {
    fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            role: self.role.clone(),
            source: TokenSource::Store as i32,
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            description: self.description.clone(),
        }
    }

    fn caller(&self) -> Option<([u8; 32], Caller)> {
        let hash: [u8; 32] = self.sha256.as_slice().try_into().ok()?;
        let role = match self.role.as_str() {
            "admin" => Role::Admin,
            _ => Role::User,
        };
        Some((
            hash,
            Caller {
                tenant: self.tenant.clone(),
                role,
            },
        ))
    }
}

fn key(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

/// The id `ListTokens` shows for a config token: `cfg_` and its hash's first 12 hex.
fn config_id(hash: &[u8; 32]) -> String {
    let hex: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("cfg_{hex}")
}

/// A new token: `hth_` and 32 bytes from the operating system's generator.
fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Unavailable("the system's random generator failed".to_owned()))?;
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// Every token record in the store, by id (corrupt ones are skipped and logged).
async fn stored(cluster: &Cluster) -> Result<Vec<TokenRecord>> {
    let mut records = Vec::new();
    for kv in cluster.store.list(TOKENS_PREFIX).await? {
        match TokenRecord::decode(kv.value.as_slice()) {
            Ok(record) => records.push(record),
            Err(e) => tracing::warn!(key = kv.key, error = %e, "skipping a corrupt token record"),
        }
    }
    Ok(records)
}

/// Reads the store's tokens into the ones this broker accepts.
async fn sync(cluster: &Cluster) -> Result<usize> {
    let callers: Vec<_> = stored(cluster)
        .await?
        .iter()
        .filter_map(TokenRecord::caller)
        .collect();
    let count = callers.len();
    cluster.tokens.set_stored(callers);
    Ok(count)
}

/// `Admin.CreateToken`, by `caller` (an admin).
pub async fn create(
    cluster: &Cluster,
    caller: &Caller,
    request: CreateTokenRequest,
) -> Result<CreateTokenResponse> {
    auth::check_tenant(&request.tenant).map_err(|r| Error::invalid("tenant", r))?;
    let role = match request.role.as_str() {
        "" | "user" => Role::User,
        "admin" => Role::Admin,
        other => {
            return Err(Error::invalid(
                "role",
                format!("{other:?} is not a role; use \"user\" or \"admin\""),
            ));
        }
    };
    if request.description.len() > MAX_DESCRIPTION || request.description.contains('\0') {
        return Err(Error::invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION} bytes, without NUL"),
        ));
    }
    if !cluster.tokens.enabled() {
        return Err(Error::FailedPrecondition(
            "authentication is off on this broker (no [[auth.tokens]] in its config), so a \
             token would be ignored; add an admin token to the config first \
             (`hearth token create --role admin --append broker.toml`) and restart"
                .to_owned(),
        ));
    }
    let leader = cluster.require_leader().await?;
    let token = new_token()?;
    let record = TokenRecord {
        id: format!("tok_{}", ulid::Ulid::new()),
        tenant: request.tenant,
        role: role.as_str().to_owned(),
        sha256: auth::sha256(&token).to_vec(),
        created_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        created_by: caller.tenant.clone(),
        description: request.description,
    };
    let txn = Txn::fenced(leader.epoch)
        .when(Compare::Absent(key(&record.id)))
        .put(key(&record.id), record.encode_to_vec());
    if !cluster.store.txn(txn).await?.succeeded {
        return Err(Error::Deposed);
    }
    // This broker at once; the others through their watch.
    if let Err(e) = sync(cluster).await {
        tracing::warn!(error = %e, "re-reading tokens after a create");
    }
    cluster.events.emit(
        "token.created",
        "",
        "",
        format!(
            "token {} for tenant {} (role {}) made by {}",
            record.id, record.tenant, record.role, caller.tenant
        ),
    );
    Ok(CreateTokenResponse {
        token,
        info: Some(record.info()),
    })
}

/// `Admin.ListTokens`: store tokens by id, then config tokens in config order.
pub async fn list(cluster: &Cluster, request: &ListTokensRequest) -> Result<Vec<TokenInfo>> {
    if !request.tenant.is_empty() {
        auth::check_tenant(&request.tenant).map_err(|r| Error::invalid("tenant", r))?;
    }
    cluster.require_leader().await?;
    let wanted = |tenant: &str| request.tenant.is_empty() || request.tenant == tenant;
    let mut tokens: Vec<TokenInfo> = stored(cluster)
        .await?
        .iter()
        .filter(|r| wanted(&r.tenant))
        .map(TokenRecord::info)
        .collect();
    tokens.extend(
        cluster
            .tokens
            .configured()
            .filter(|(_, c)| wanted(&c.tenant))
            .map(|(hash, c)| TokenInfo {
                id: config_id(hash),
                tenant: c.tenant.clone(),
                role: c.role.as_str().to_owned(),
                source: TokenSource::Config as i32,
                ..TokenInfo::default()
            }),
    );
    Ok(tokens)
}

/// `Admin.RevokeToken`, by `caller` (an admin).
pub async fn revoke(cluster: &Cluster, caller: &Caller, id: &str) -> Result<TokenInfo> {
    if id.is_empty() || id.len() > 64 || id.contains('/') {
        return Err(Error::invalid(
            "id",
            "must be a token id as ListTokens shows it (tok_... or cfg_...)",
        ));
    }
    if let Some((_, c)) = cluster
        .tokens
        .configured()
        .find(|(hash, _)| config_id(hash) == id)
    {
        return Err(Error::FailedPrecondition(format!(
            "token {id} (tenant {}) is in the brokers' config file ([[auth.tokens]]): remove \
             it there and restart the brokers",
            c.tenant
        )));
    }
    let leader = cluster.require_leader().await?;
    let Some(kv) = cluster.store.get(&key(id)).await? else {
        return Err(Error::NotFound {
            kind: "token",
            id: id.to_owned(),
        });
    };
    let record = TokenRecord::decode(kv.value.as_slice()).map_err(|e| {
        Error::FailedPrecondition(format!("token {id} has a corrupt record ({e}); delete it"))
    })?;
    let txn = Txn::fenced(leader.epoch)
        .when(Compare::ModRevision(key(id), kv.mod_revision))
        .delete(key(id));
    if !cluster.store.txn(txn).await?.succeeded {
        // Revoked meanwhile by another call, or this broker no longer leads.
        return match cluster.store.get(&key(id)).await? {
            None => Err(Error::NotFound {
                kind: "token",
                id: id.to_owned(),
            }),
            Some(_) => Err(Error::Deposed),
        };
    }
    if let Err(e) = sync(cluster).await {
        tracing::warn!(error = %e, "re-reading tokens after a revoke");
    }
    cluster.events.emit(
        "token.revoked",
        "",
        "",
        format!(
            "token {id} of tenant {} revoked by {}",
            record.tenant, caller.tenant
        ),
    );
    Ok(record.info())
}

/// Keeps this broker's accepted tokens in step with the store until `shutdown`: watches
/// `tokens/`, then reads them all, and reads them again after every change (and every
/// 30 s, in case a watch misses one silently). Runs on every broker.
pub async fn follow(cluster: std::sync::Arc<Cluster>, shutdown: CancellationToken) {
    loop {
        let mut changes = match cluster.store.watch(TOKENS_PREFIX).await {
            Ok(changes) => Some(changes),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the store's tokens; reading them periodically");
                None
            }
        };
        match sync(&cluster).await {
            Ok(n) => tracing::debug!(tokens = n, "tokens read from the store"),
            Err(e) => tracing::warn!(error = %e, "cannot read the store's tokens"),
        }
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
        loop {
            let changed = async {
                match changes.as_mut() {
                    Some(c) => c.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = changed => if changed.is_none() { break },
                _ = resync.tick() => {}
            }
            if let Err(e) = sync(&cluster).await {
                tracing::warn!(error = %e, "cannot read the store's tokens");
            }
        }
        // The watch broke: watch again, then read again.
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REWATCH) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_look_like_the_clis_and_ids_say_where_they_are_kept() {
        let token = new_token().unwrap();
        assert!(token.starts_with("hth_") && token.len() == 47, "{token}");
        assert_ne!(token, new_token().unwrap());
        assert_eq!(config_id(&[0xab; 32]), "cfg_abababababab");
        let record = TokenRecord {
            id: "tok_1".into(),
            tenant: "team-a".into(),
            role: "admin".into(),
            sha256: vec![7; 32],
            ..TokenRecord::default()
        };
        let (hash, caller) = record.caller().unwrap();
        assert_eq!(hash, [7; 32]);
        assert_eq!(caller.role, Role::Admin);
        assert_eq!(record.info().source, TokenSource::Store as i32);
        let short = TokenRecord {
            sha256: vec![1; 5],
            ..record
        };
        assert!(
            short.caller().is_none(),
            "a record with a bad hash is no token"
        );
    }
}
