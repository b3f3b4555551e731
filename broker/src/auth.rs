//! Client authentication: a bearer token names a tenant and a role.
//!
//! Tokens are configured as `[[auth.tokens]]` entries holding the SHA-256 of the token
//! (hex), never the token itself, so a leaked config file grants nothing. A request's
//! `authorization: Bearer <token>` is hashed and compared with every configured hash in
//! constant time, without stopping at a match, so the time taken says nothing about
//! which hashes exist or how close a guess came.
//!
//! [`Authenticate`] is a tonic interceptor on `Sessions`, `Templates` and `Admin`: it
//! runs before a request is decoded into its message, so an unauthenticated caller costs
//! no work beyond one hash, and it puts the [`Caller`] into the request's extensions for
//! the service to scope by. Health and reflection carry no interceptor (probes and
//! grpcurl `list` need no token); `NodeAgent` is authenticated by its client certificate.
//!
//! With no tokens configured authentication is off: every caller is tenant `default`
//! with the admin role, for local development.

use std::{collections::HashSet, fmt, sync::Arc};

use serde::Deserialize;
use subtle::{ConditionallySelectable as _, ConstantTimeEq as _};
use tonic::{Request, Status, metadata::MetadataMap};

use crate::config::ConfigError;

/// The tenant every caller belongs to while authentication is off.
pub const DEFAULT_TENANT: &str = "default";
/// Longest tenant name: tenants appear in store keys and in messages.
pub const MAX_TENANT_LEN: usize = 63;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sessions and templates of its own tenant.
    User,
    /// Also the `Admin` service (every tenant, nodes, events).
    Admin,
}

impl Role {
    /// The name used in config and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a request, as the interceptor found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenant whose objects the request sees and changes.
    pub tenant: String,
    /// What the caller may do.
    pub role: Role,
}

impl Caller {
    /// The caller while authentication is off.
    pub fn anonymous_admin() -> Self {
        Self {
            tenant: DEFAULT_TENANT.to_owned(),
            role: Role::Admin,
        }
    }
}

/// `[auth]`: client authentication.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `[[auth.tokens]]`: the accepted tokens. Empty: authentication is off.
    pub tokens: Vec<TokenEntry>,
}

/// One `[[auth.tokens]]` entry, as `hearth token create` prints it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenEntry {
    /// The tenant the token acts for.
    pub tenant: String,
    /// `user` (default) or `admin`.
    pub role: Option<String>,
    /// Hex SHA-256 of the token (64 characters).
    pub sha256: String,
}

impl AuthConfig {
    /// Checks every entry; errors name the entry and field (`auth.tokens[2].sha256`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        Tokens::from_config(self).map(drop)
    }
}

/// Checks a tenant name: 1-63 letters, digits, '.', '-' or '_', starting with a letter
/// or digit. Tenants appear in store keys, so '/' in particular is refused.
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    if tenant.is_empty() || tenant.len() > MAX_TENANT_LEN {
        return Err(format!(
            "{tenant:?} must be 1-{MAX_TENANT_LEN} characters long"
        ));
    }
    if !tenant.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{tenant:?} must start with a letter or digit"));
    }
    if let Some(c) = tenant
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{tenant:?} contains {c:?}; use letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// The SHA-256 of `token`.
pub fn sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 of `token` as lowercase hex, as `[[auth.tokens]] sha256` holds it.
pub fn sha256_hex(token: &str) -> String {
    sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The accepted tokens, by hash: those of the config file, fixed at start-up, and those
/// made through `Admin.CreateToken`, which [`crate::tokens::follow`] keeps in step with
/// the store on every broker.
#[derive(Debug, Default)]
pub struct Tokens {
    hashes: Vec<[u8; 32]>,
    callers: Vec<Caller>,
    /// Tokens from the store: hashes and callers, replaced whole on every change.
    store: std::sync::RwLock<(Vec<[u8; 32]>, Vec<Caller>)>,
}

impl Tokens {
    /// Checks and loads `[[auth.tokens]]`.
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut tokens = Tokens::default();
        let mut seen = HashSet::new();
        for (i, entry) in config.tokens.iter().enumerate() {
            let field = |name: &str| format!("auth.tokens[{i}].{name}");
            let invalid = |name: &str, reason: String| ConfigError {
                setting: field(name),
                reason,
            };
            check_tenant(&entry.tenant).map_err(|r| invalid("tenant", r))?;
            let role = match entry.role.as_deref() {
                None | Some("user") => Role::User,
                Some("admin") => Role::Admin,
                Some(other) => {
                    return Err(invalid(
                        "role",
                        format!("{other:?} is not a role; use \"user\" or \"admin\""),
                    ));
                }
            };
            let hash = parse_hex(&entry.sha256).ok_or_else(|| {
                invalid(
                    "sha256",
                    format!(
                        "must be the token's SHA-256 as 64 hex characters (got {} characters); \
                         `hearth token create` prints the entry",
                        entry.sha256.len()
                    ),
                )
            })?;
            if !seen.insert(hash) {
                return Err(invalid(
                    "sha256",
                    "repeats the hash of an earlier entry; each token may name one tenant"
                        .to_owned(),
                ));
            }
            tokens.hashes.push(hash);
            tokens.callers.push(Caller {
                tenant: entry.tenant.clone(),
                role,
            });
        }
        Ok(tokens)
    }

    /// True when at least one token is configured, so every request must carry one.
    /// Tokens in the store do not turn authentication on: the first admin token comes
    /// from the config file, so an operator cannot lock the cluster by making a user token.
    pub fn enabled(&self) -> bool {
        !self.hashes.is_empty()
    }

    /// How many tokens are configured.
    pub fn count(&self) -> usize {
        self.hashes.len()
    }

    /// The configured tokens' hashes and callers, in config order.
    pub fn configured(&self) -> impl Iterator<Item = (&[u8; 32], &Caller)> {
        self.hashes.iter().zip(&self.callers)
    }

    /// Replaces the tokens from the store.
    pub fn set_stored(&self, tokens: Vec<([u8; 32], Caller)>) {
        let (hashes, callers) = tokens.into_iter().unzip();
        *self.store.write().unwrap_or_else(|e| e.into_inner()) = (hashes, callers);
    }

    /// The caller `token` belongs to. Every hash, configured and stored, is compared in
    /// constant time, whether or not an earlier one matched.
    pub fn lookup(&self, token: &str) -> Option<Caller> {
        let digest = sha256(token);
        let stored = self.store.read().unwrap_or_else(|e| e.into_inner());
        // Index of the match, plus one; 0 for none. Selected without branching.
        let mut found = 0u32;
        for (i, hash) in self.hashes.iter().chain(&stored.0).enumerate() {
            let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
            found.conditional_assign(&index, hash.ct_eq(&digest));
        }
        (found as usize)
            .checked_sub(1)
            .and_then(|i| self.callers.iter().chain(&stored.1).nth(i))
            .cloned()
    }

    /// The caller a request's metadata names; UNAUTHENTICATED when it names none. The
    /// token is never part of a message.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        if !self.enabled() {
            return Ok(Caller::anonymous_admin());
        }
        let header = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "this broker requires a token: send `authorization: Bearer <token>` \
                 (hearth --token, HEARTH_TOKEN)",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "malformed authorization metadata: it must be `Bearer <token>`",
                )
            })?;
        self.lookup(token).ok_or_else(|| {
            Status::unauthenticated(
                "the bearer token is not valid for this broker (unknown or revoked)",
            )
        })
    }
}

/// The interceptor on `Sessions`, `Templates` and `Admin`: authenticates, then records
/// the [`Caller`] in the request's extensions.
#[derive(Clone, Debug)]
pub struct Authenticate {
    tokens: Arc<Tokens>,
    /// `Some(service)`: only the admin role may call this service.
    admin_only: Option<&'static str>,
}

impl Authenticate {
    /// For a service every authenticated caller may use.
    pub fn any_role(tokens: Arc<Tokens>) -> Self {
        Self {
            tokens,
            admin_only: None,
        }
    }

    /// For a service only the admin role may use, named in the refusal.
    pub fn admin_only(tokens: Arc<Tokens>, service: &'static str) -> Self {
        Self {
            tokens,
            admin_only: Some(service),
        }
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.tokens.authenticate(request.metadata())?;
        if let Some(service) = self.admin_only
            && caller.role != Role::Admin
        {
            return Err(Status::permission_denied(format!(
                "{service} needs the admin role; this token has role {} (tenant {})",
                caller.role, caller.tenant
            )));
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the interceptor recorded for `request`.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    fn entry(tenant: &str, role: Option<&str>, token: &str) -> TokenEntry {
        TokenEntry {
            tenant: tenant.to_owned(),
            role: role.map(str::to_owned),
            sha256: sha256_hex(token),
        }
    }

    fn tokens() -> Tokens {
        Tokens::from_config(&AuthConfig {
            tokens: vec![
                entry("team-a", None, "hth_a"),
                entry("team-b", Some("user"), "hth_b"),
                entry("ops", Some("admin"), "hth_admin"),
            ],
        })
        .unwrap()
    }

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(v) = authorization {
            r.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        r
    }

    #[test]
    fn hashes_are_sha256() {
        // Known answers (FIPS 180-2).
        assert_eq!(
            sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_hex(&sha256_hex("abc")), Some(sha256("abc")));
        assert_eq!(
            parse_hex(&sha256_hex("abc").to_uppercase()),
            Some(sha256("abc"))
        );
    }

    #[test]
    fn lookup_finds_every_token_and_nothing_else() {
        let t = tokens();
        assert_eq!(t.lookup("hth_a").unwrap().tenant, "team-a");
        assert_eq!(t.lookup("hth_a").unwrap().role, Role::User);
        assert_eq!(t.lookup("hth_b").unwrap().tenant, "team-b");
        assert_eq!(t.lookup("hth_admin").unwrap().role, Role::Admin);
        for wrong in ["", "hth_", "hth_a ", "HTH_A", "hth_c"] {
            assert!(t.lookup(wrong).is_none(), "{wrong:?}");
        }
        // The hash itself is not a token.
        assert!(t.lookup(&sha256_hex("hth_a")).is_none());
    }

    #[test]
    fn the_header_must_be_a_known_bearer_token() {
        let t = tokens();
        let ok = t
            .authenticate(request(Some("Bearer hth_b")).metadata())
            .unwrap();
        assert_eq!(ok.tenant, "team-b");
        assert_eq!(
            t.authenticate(request(Some("bearer  hth_b")).metadata())
                .unwrap()
                .tenant,
            "team-b"
        );
        for (header, expect) in [
            (None, "requires a token"),
            (Some("hth_a"), "malformed"),
            (Some("Basic hth_a"), "malformed"),
            (Some("Bearer "), "malformed"),
            (Some("Bearer hth_secret_guess"), "not valid"),
        ] {
            let err = t.authenticate(request(header).metadata()).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{header:?}");
            assert!(err.message().contains(expect), "{header:?}: {err:?}");
            assert!(!err.message().contains("hth_"), "echoes the token: {err:?}");
        }
    }

    #[test]
    fn no_tokens_means_default_tenant_and_admin() {
        let t = Tokens::default();
        assert!(!t.enabled());
        assert_eq!(
            t.authenticate(request(None).metadata()).unwrap(),
            Caller::anonymous_admin()
        );
        assert_eq!(Caller::anonymous_admin().tenant, "default");
    }

    #[test]
    fn the_interceptor_records_the_caller_and_guards_admin() {
        let t = Arc::new(tokens());
        let r = Authenticate::any_role(t.clone())
            .call(request(Some("Bearer hth_a")))
            .unwrap();
        assert_eq!(caller(&r).unwrap().tenant, "team-a");
        let err = Authenticate::admin_only(t.clone(), "hearth.v1.Admin")
            .call(request(Some("Bearer hth_a")))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("admin role"), "{err:?}");
        assert!(err.message().contains("role user"), "{err:?}");
        let r = Authenticate::admin_only(t, "hearth.v1.Admin")
            .call(request(Some("Bearer hth_admin")))
            .unwrap();
        assert_eq!(caller(&r).unwrap().role, Role::Admin);
        assert!(caller(&request(None)).is_err());
    }

    #[test]
    fn config_errors_name_the_entry_and_field() {
        let good = || {
            vec![
                entry("team-a", None, "1"),
                entry("team-b", Some("admin"), "2"),
                entry("team-c", None, "3"),
            ]
        };
        type Breaker = fn(&mut Vec<TokenEntry>);
        let cases: Vec<(Breaker, &str, &str)> = vec![
            (
                |t| t[2].sha256.truncate(63),
                "auth.tokens[2].sha256",
                "64 hex",
            ),
            (
                |t| t[2].sha256 = "g".repeat(64),
                "auth.tokens[2].sha256",
                "64 hex",
            ),
            (
                |t| t[2].sha256 = t[0].sha256.to_uppercase(),
                "auth.tokens[2].sha256",
                "repeats",
            ),
            (
                |t| t[1].role = Some("root".into()),
                "auth.tokens[1].role",
                "\"user\" or \"admin\"",
            ),
            (|t| t[0].tenant.clear(), "auth.tokens[0].tenant", "1-63"),
            (
                |t| t[0].tenant = "a/b".into(),
                "auth.tokens[0].tenant",
                "'/'",
            ),
            (
                |t| t[0].tenant = "-a".into(),
                "auth.tokens[0].tenant",
                "start with",
            ),
            (
                |t| t[0].tenant = "a".repeat(64),
                "auth.tokens[0].tenant",
                "1-63",
            ),
        ];
        assert!(AuthConfig { tokens: good() }.validate().is_ok());
        for (break_it, setting, reason) in cases {
            let mut tokens = good();
            break_it(&mut tokens);
            let err = AuthConfig { tokens }.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(err.reason.contains(reason), "{err}");
        }
    }

    #[test]
    fn the_toml_shape_parses() {
        let config: AuthConfig = toml::from_str(&format!(
            "[[tokens]]\ntenant = \"team-a\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            sha256_hex("x")
        ))
        .unwrap();
        let t = Tokens::from_config(&config).unwrap();
        assert_eq!(t.lookup("x").unwrap().role, Role::Admin);
    }
}
