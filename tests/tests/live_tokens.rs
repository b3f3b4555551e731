//! Tokens made and revoked on a running cluster, with no restart: real brokers (a leader
//! and a standby on a real etcd) and the real `hearth` CLI.
//!
//! - `hearth token create` through the leader gives a token that the leader accepts, and
//!   the standby too (it answers UNAVAILABLE, naming the leader, where a token it does not
//!   know gets UNAUTHENTICATED).
//! - `hearth token ls` shows store and config tokens, never a token.
//! - `hearth token revoke` makes every broker refuse it, and the standby that takes over
//!   after a `kill -9` of the leader still refuses it while taking the other tokens.
//! - Config tokens cannot be revoked through the API, and a cluster without authentication
//!   makes no tokens; both say why.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use hearth_sdk::proto::v1::{ListSessionsRequest, sessions_client::SessionsClient};
use hearth_tests::{
    api, cluster,
    etcd::{etcd_or_skip, unique_prefix},
    eventually,
    process::{Broker, binary},
    tenants::create_token,
};
use tonic::{Code, metadata::MetadataValue};

/// What `url` answers a ListSessions with `token`: `None` for success, else the code.
async fn answer(url: &str, token: &str) -> Option<Code> {
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    let mut client = SessionsClient::with_interceptor(
        api::channel(url),
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
            Ok(request)
        },
    );
    client
        .list_sessions(ListSessionsRequest::default())
        .await
        .err()
        .map(|s| s.code())
}

/// Runs `hearth --broker URL --token TOKEN args...`; its stdout, or an error with stderr.
fn hearth(url: &str, token: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary("hearth")?)
        .args(["--broker", url, "--token", token])
        .args(args)
        .env_remove("HEARTH_BROKER")
        .env_remove("HEARTH_TOKEN")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "hearth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `hearth token create --json`: the token and its id.
fn create(url: &str, admin: &str, tenant: &str) -> anyhow::Result<(String, String)> {
    let out = hearth(
        url,
        admin,
        &[
            "--json",
            "token",
            "create",
            "--tenant",
            tenant,
            "--description",
            "made by the live-token test",
        ],
    )?;
    let made: serde_json::Value = serde_json::from_str(&out)?;
    let token = made["token"].as_str().unwrap_or_default().to_owned();
    let id = made["info"]["id"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(token.starts_with("hth_") && id.starts_with("tok_"), "{out}");
    Ok((token, id))
}

#[tokio::test]
async fn tokens_are_made_and_revoked_live_on_every_broker() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broker.toml");
    let admin = create_token(&config, "ops", "admin")?;
    let endpoint = etcd.endpoint();
    let prefix = unique_prefix("live-tokens");
    let config_flag = config.display().to_string();
    let flags = [
        "--etcd",
        &endpoint,
        "--etcd-prefix",
        &prefix,
        "--config",
        &config_flag,
    ];
    let (mut a, _, b) = cluster::leader_and_standby_as(dir.path(), &flags, &admin).await?;
    let logs =
        |e: anyhow::Error| anyhow::anyhow!("{e:#}\n{}\n{}", a.proc.log_tail(), b.proc.log_tail());

    let made = Instant::now();
    let (kept, kept_id) = create(&a.url, &admin, "team-x")?;
    let (doomed, doomed_id) = create(&a.url, &admin, "team-x")?;
    assert_eq!(
        answer(&a.url, &kept).await,
        None,
        "the leader takes a new token"
    );
    assert_eq!(
        answer(&a.url, "hth_unknown").await,
        Some(Code::Unauthenticated)
    );
    // The standby knows it too: it gets past authentication to the standby's refusal.
    eventually(
        "the standby knows the new tokens",
        Duration::from_secs(10),
        || async {
            Ok((answer(&b.url, &kept).await == Some(Code::Unavailable)
                && answer(&b.url, &doomed).await == Some(Code::Unavailable))
            .then_some(()))
        },
    )
    .await
    .map_err(logs)?;
    let known_everywhere = made.elapsed();
    assert_eq!(
        answer(&b.url, "hth_unknown").await,
        Some(Code::Unauthenticated)
    );

    // The list: both store tokens and the config's admin; no token, no hash.
    let listed = hearth(&a.url, &admin, &["token", "ls"])?;
    for needle in [
        kept_id.as_str(),
        doomed_id.as_str(),
        "team-x",
        "store",
        "config",
        "ops",
    ] {
        assert!(listed.contains(needle), "ls lacks {needle:?}:\n{listed}");
    }
    assert!(
        !listed.contains("hth_") && !listed.contains(&hearth_broker::auth::sha256_hex(&kept)),
        "ls shows no token and no hash:\n{listed}"
    );
    let only_ops = hearth(&a.url, &admin, &["token", "ls", "--tenant", "ops"])?;
    assert!(!only_ops.contains("team-x"), "{only_ops}");

    // Revoke: every broker refuses it, and the other token still works.
    let revoked_at = Instant::now();
    let said = hearth(&a.url, &admin, &["token", "revoke", &doomed_id])?;
    assert!(
        said.contains(&doomed_id) && said.contains("revoked"),
        "{said}"
    );
    eventually(
        "every broker refuses the revoked token",
        Duration::from_secs(10),
        || async {
            Ok(
                (answer(&a.url, &doomed).await == Some(Code::Unauthenticated)
                    && answer(&b.url, &doomed).await == Some(Code::Unauthenticated))
                .then_some(()),
            )
        },
    )
    .await
    .map_err(logs)?;
    let refused_everywhere = revoked_at.elapsed();
    assert_eq!(answer(&a.url, &kept).await, None);

    // The standby that takes over refuses it as well, and takes the kept one.
    a.proc.kill();
    cluster::until_leads_as("broker-b takes over", &b.url, &admin)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", b.proc.log_tail()))?;
    assert_eq!(answer(&b.url, &doomed).await, Some(Code::Unauthenticated));
    assert_eq!(
        answer(&b.url, &kept).await,
        None,
        "the new leader takes the kept token"
    );
    assert_eq!(answer(&b.url, &admin).await, None);

    // What cannot be revoked, and what does not exist.
    let config_id = hearth(&b.url, &admin, &["token", "ls", "--tenant", "ops"])?
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .next()
                .filter(|w| w.starts_with("cfg_"))
        })
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no config token listed"))?;
    let refused = hearth(&b.url, &admin, &["token", "revoke", &config_id])
        .expect_err("a config token is not revoked through the API")
        .to_string();
    assert!(refused.contains("config file"), "{refused}");
    let missing = hearth(&b.url, &admin, &["token", "revoke", &doomed_id])
        .expect_err("revoked already")
        .to_string();
    assert!(
        missing.contains("not found") && missing.contains("hearth token ls"),
        "{missing}"
    );
    let user = hearth(&b.url, &kept, &["token", "ls"])
        .expect_err("a user token may not list tokens")
        .to_string();
    assert!(user.contains("admin role"), "{user}");

    eprintln!(
        "live tokens: known on both brokers {known_everywhere:?} after create, refused on \
         both {refused_everywhere:?} after revoke (target 1 s)"
    );
    Ok(())
}

#[tokio::test]
async fn without_authentication_no_token_is_made() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "open", &["--store-path", &store])?;
    cluster::until_leads("the broker leads", &broker.url).await?;
    let out = Command::new(binary("hearth")?)
        .args(["--broker", &broker.url, "token", "create", "--tenant", "x"])
        .env_remove("HEARTH_BROKER")
        .env_remove("HEARTH_TOKEN")
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("authentication is off") && said.contains("--append"),
        "{said}"
    );
    Ok(())
}
