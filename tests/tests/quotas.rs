//! Quotas and the create rate limit end to end: one broker with `[quota]` defaults and
//! per-tenant overrides, tokens for each tenant, and an agent with simulated GPUs
//! running sessions as processes.
//!
//! Each limit answers RESOURCE_EXHAUSTED with a message naming the limit and the tenant;
//! deleting a session frees its share; concurrent creates never overshoot; unclaimed
//! warm-pool members count, and claiming one is not refused.

use std::time::Duration;

use hearth_sdk::proto::v1::{
    CreateSessionRequest, CreateTemplateRequest, DeleteSessionRequest, GetNodeRequest, GpuRequest,
    ListSessionsRequest, NodeState, Session, SessionSpec, SessionState, Template,
    admin_client::AdminClient, create_session_request, sessions_client::SessionsClient,
    templates_client::TemplatesClient,
};
use hearth_tests::{
    api, eventually, images,
    tenants::{TokenCluster, create_token},
};
use tonic::{
    Code, Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

#[derive(Clone)]
struct Bearer(String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| Status::internal("token is not valid metadata"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

fn spec(gpus: u32) -> SessionSpec {
    let mut spec = images::worker_spec(images::worker_binary().display().to_string());
    spec.gpus = Some(GpuRequest {
        count: gpus,
        ..GpuRequest::default()
    });
    spec
}

struct Tenant {
    sessions: SessionsClient<Svc>,
    templates: TemplatesClient<Svc>,
}

impl Tenant {
    async fn create(&self, gpus: u32) -> Result<Session, Status> {
        self.sessions
            .clone()
            .create_session(CreateSessionRequest {
                source: Some(create_session_request::Source::Spec(spec(gpus))),
                ..CreateSessionRequest::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn delete(&self, id: &str) -> Result<(), Status> {
        self.sessions
            .clone()
            .delete_session(DeleteSessionRequest { id: id.to_owned() })
            .await
            .map(drop)
    }

    async fn live(&self) -> Result<Vec<Session>, Status> {
        Ok(self
            .sessions
            .clone()
            .list_sessions(ListSessionsRequest::default())
            .await?
            .into_inner()
            .sessions)
    }
}

fn exhausted(result: Result<Session, Status>, names: &str) {
    let err = result.expect_err("must be over quota");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains(names),
        "the message names {names:?}: {err:?}"
    );
}

const CONFIG: &str = r#"
[quota]
max_sessions = 100

[quota.tenants.team-a]
max_sessions = 2

[quota.tenants.team-b]
max_gpus = 2

[quota.tenants.team-c]
creates_per_minute = 2

[quota.tenants.team-d]
max_sessions = 2
"#;

#[tokio::test]
async fn quotas_and_the_rate_limit_refuse_with_the_limit_named_and_free_on_delete()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, CONFIG)?;
    let mut tokens = Vec::new();
    for tenant in ["team-a", "team-b", "team-c", "team-d"] {
        tokens.push(create_token(&config, tenant, "user")?);
    }
    let admin_token = create_token(&config, "ops", "admin")?;
    let cluster = TokenCluster::spawn(dir.path(), &config, "quota-node", "4")?;
    let (broker, agent) = (&cluster.broker, &cluster.agent);
    let logs = |e: anyhow::Error| cluster.logs(e);
    let channel = api::long_channel(&broker.url);
    let tenant = |token: &str| Tenant {
        sessions: SessionsClient::with_interceptor(channel.clone(), Bearer(token.to_owned())),
        templates: TemplatesClient::with_interceptor(channel.clone(), Bearer(token.to_owned())),
    };
    let (a, b, c, d) = (
        tenant(&tokens[0]),
        tenant(&tokens[1]),
        tenant(&tokens[2]),
        tenant(&tokens[3]),
    );
    let admin = AdminClient::with_interceptor(channel.clone(), Bearer(admin_token));
    let node = agent.node_id.clone();
    eventually("node READY", Duration::from_secs(30), || {
        let (mut admin, id) = (admin.clone(), node.clone());
        async move {
            Ok(admin
                .get_node(GetNodeRequest { id })
                .await
                .ok()
                .filter(|n| n.get_ref().state() == NodeState::Ready))
        }
    })
    .await
    .map_err(logs)?;

    // max_sessions: two live sessions, the third refused; a delete frees a slot.
    let first = a.create(0).await.map_err(|e| logs(e.into()))?;
    a.create(0).await?;
    exhausted(
        a.create(0).await,
        "tenant team-a: max_sessions 2 reached (2 live)",
    );
    // Other tenants are not limited by team-a's quota.
    let other = d.create(0).await?;
    d.delete(&other.id).await?;
    a.delete(&first.id).await?;
    let third = a.create(0).await.map_err(|e| logs(e.into()))?;
    assert_eq!(third.state(), SessionState::Ready);
    exhausted(a.create(0).await, "max_sessions 2");

    // Concurrent creates never overshoot: with one slot free, exactly one of several
    // simultaneous creates gets it.
    a.delete(&third.id).await?;
    let racers = (0..6).map(|_| {
        let mut sessions = a.sessions.clone();
        tokio::spawn(async move {
            sessions
                .create_session(CreateSessionRequest {
                    source: Some(create_session_request::Source::Spec(spec(0))),
                    no_wait: true,
                    ..CreateSessionRequest::default()
                })
                .await
        })
    });
    let mut won = 0;
    for racer in futures::future::join_all(racers).await {
        match racer? {
            Ok(_) => won += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(won, 1, "one free slot, one winner");
    assert_eq!(a.live().await?.len(), 2);

    // max_gpus: two GPUs booked, one more refused (CPU-only sessions still fit); a
    // delete frees them.
    let big = b.create(2).await.map_err(|e| logs(e.into()))?;
    assert_eq!(big.gpu_uuids.len(), 2);
    exhausted(
        b.create(1).await,
        "tenant team-b: max_gpus 2 reached (2 booked, 1 requested)",
    );
    b.create(0).await?;
    b.delete(&big.id).await?;
    let after = b.create(1).await.map_err(|e| logs(e.into()))?;
    assert_eq!(after.gpu_uuids.len(), 1);

    // creates_per_minute: a burst of two, then refused with when to retry; deleting
    // does not give creates back. A retry of an earlier create (its request_id) is
    // answered with that session, limit or not.
    let one = c.create(0).await?;
    let retried = CreateSessionRequest {
        source: Some(create_session_request::Source::Spec(spec(0))),
        request_id: "quota-retry".to_owned(),
        ..CreateSessionRequest::default()
    };
    let two = c
        .sessions
        .clone()
        .create_session(retried.clone())
        .await?
        .into_inner();
    c.delete(&one.id).await?;
    exhausted(
        c.create(0).await,
        "tenant team-c: creates_per_minute 2 reached; retry in",
    );
    let again = c
        .sessions
        .clone()
        .create_session(retried)
        .await?
        .into_inner();
    assert_eq!(again.id, two.id, "a retry is not a new create");

    // Unclaimed warm-pool members count: a pool of two fills team-d's quota, so a cold
    // create is refused, but claiming a member (no new session) is not.
    d.templates
        .clone()
        .create_template(CreateTemplateRequest {
            template: Some(Template {
                name: "warm".to_owned(),
                spec: Some(spec(0)),
                warm_pool: 2,
                ..Template::default()
            }),
        })
        .await?;
    eventually(
        "two READY pool members",
        Duration::from_secs(60),
        || async {
            let live = d.live().await?;
            Ok(
                (live.len() == 2 && live.iter().all(|s| s.state() == SessionState::Ready))
                    .then_some(()),
            )
        },
    )
    .await
    .map_err(logs)?;
    exhausted(d.create(0).await, "tenant team-d: max_sessions 2 reached");
    let claimed = d
        .sessions
        .clone()
        .create_session(CreateSessionRequest {
            source: Some(create_session_request::Source::Template("warm".to_owned())),
            ..CreateSessionRequest::default()
        })
        .await
        .map_err(|e| logs(e.into()))?
        .into_inner();
    assert_eq!(claimed.template, "warm");
    assert_eq!(claimed.state(), SessionState::Ready);
    Ok(())
}

/// The create rate limit holds right after a `kill -9` of the leader: the standby that
/// takes over reads the bucket the old leader left in etcd, instead of starting full.
#[tokio::test]
async fn the_rate_limit_holds_across_a_leader_kill() -> anyhow::Result<()> {
    let Some(etcd) = hearth_tests::etcd::etcd_or_skip().await else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broker.toml");
    // Three creates, then one every 20 s: the test ends long before a token comes back.
    std::fs::write(&config, "[quota.tenants.team-r]\ncreates_per_minute = 3\n")?;
    let team = create_token(&config, "team-r", "user")?;
    let admin = create_token(&config, "ops", "admin")?;
    let endpoint = etcd.endpoint();
    let prefix = hearth_tests::etcd::unique_prefix("rate-failover");
    let config_flag = config.display().to_string();
    let flags = [
        "--etcd",
        &endpoint,
        "--etcd-prefix",
        &prefix,
        "--config",
        &config_flag,
    ];
    let (mut a, _, b) =
        hearth_tests::cluster::leader_and_standby_as(dir.path(), &flags, &admin).await?;
    let agent = hearth_tests::process::Agent::spawn(
        dir.path(),
        "rate-node",
        &[&a.url, &b.url],
        &["--simulate-gpus", "1"],
    )?;
    let client = hearth_sdk::Client::builder(format!("{},{}", a.url, b.url))
        .token(team)
        .build()?;
    let logs = |e: anyhow::Error| anyhow::anyhow!("{e:#}\n{}", agent.proc.log_tail());
    let ops = hearth_sdk::Client::builder(&a.url)
        .token(admin.clone())
        .build()?;
    api::node_ready_as(&ops, "rate-node").await.map_err(logs)?;
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(
            client
                .create(spec(0))
                .await
                .map_err(anyhow::Error::from)
                .map_err(logs)?,
        );
    }
    let over = client
        .create(spec(0))
        .await
        .expect_err("a fourth create in the minute");
    assert!(
        over.to_string().contains("creates_per_minute 3 reached"),
        "{over}"
    );

    a.proc.kill();
    hearth_tests::cluster::until_leads_as("broker-b takes over", &b.url, &admin).await?;
    let after = client
        .create(spec(0))
        .await
        .expect_err("the new leader keeps the bucket the old one emptied");
    let said = after.to_string();
    assert!(
        said.contains("tenant team-r: creates_per_minute 3 reached") && said.contains("retry in"),
        "the refusal is the rate limit's, not a missing node's: {said}"
    );
    // The sessions made before the kill are still there, on the new leader.
    for session in &made {
        assert_eq!(session.get().await?.state, SessionState::Ready as i32);
    }
    Ok(())
}
