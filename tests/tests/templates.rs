//! Templates and warm pools end to end: a real broker and agent process, sessions run by
//! the process runtime (the static test worker as a child process), simulated GPUs.
//!
//! The promise under test: a template with `warm_pool: N` keeps N READY sessions that
//! nobody has touched; `CreateSession(template=…)` hands one out at once (warmed up
//! exactly once, with the caller's labels) and the pool refills; pools survive a broker
//! restart without growing; deleting the template stops its members and frees their GPUs.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use hearth_sdk::proto::v1::{
    AdminListSessionsRequest, CreateSessionRequest, CreateTemplateRequest, DeleteSessionRequest,
    DeleteTemplateRequest, Event, GetSessionRequest, GetTemplateRequest, GpuRequest,
    ListSessionsRequest, ListTemplatesRequest, PortSpec, ReadinessProbe, Session, SessionSpec,
    SessionState, Template, UpdateTemplateRequest, WatchEventsRequest, admin_client::AdminClient,
    create_session_request, readiness_probe, sessions_client::SessionsClient,
    templates_client::TemplatesClient,
};
use hearth_tests::{
    api,
    etcd::{etcd_or_skip, unique_prefix},
    eventually, images,
    process::{Agent, Broker},
};
use tonic::{Code, transport::Channel};

/// The label the broker puts on unclaimed pool members.
const POOL_LABEL: &str = "hearth.pool";

struct Fixture {
    broker: Broker,
    agent: Agent,
    sessions: SessionsClient<Channel>,
    templates: TemplatesClient<Channel>,
    admin: AdminClient<Channel>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A broker (embedded store unless `store_flags` say otherwise) and an agent with
    /// `gpus` simulated GPUs, node READY.
    async fn start(gpus: u32, store_flags: Option<Vec<String>>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let flags = store_flags.unwrap_or_else(|| {
            vec![
                "--store-path".to_owned(),
                dir.path().join("store").display().to_string(),
            ]
        });
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let broker = Broker::spawn(dir.path(), "broker", &flags)?;
        let gpus = gpus.to_string();
        let agent = Agent::spawn(
            dir.path(),
            "pool-node",
            &[&broker.url],
            &["--simulate-gpus", &gpus],
        )?;
        let channel = api::long_channel(&broker.url);
        let f = Self {
            sessions: SessionsClient::new(channel.clone()),
            templates: TemplatesClient::new(channel.clone()),
            admin: AdminClient::new(channel),
            broker,
            agent,
            _dir: dir,
        };
        f.node_ready().await?;
        Ok(f)
    }

    async fn node_ready(&self) -> anyhow::Result<()> {
        api::node_ready(&self.broker.url, &self.agent.node_id)
            .await
            .map(|_| ())
            .map_err(|e| self.with_logs(e))
    }

    fn with_logs(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "{e}\n{}\n{}",
            self.broker.proc.log_tail(),
            self.agent.proc.log_tail()
        )
    }

    async fn create_template(&mut self, t: Template) -> Result<Template, tonic::Status> {
        self.templates
            .create_template(CreateTemplateRequest { template: Some(t) })
            .await
            .map(|r| r.into_inner())
    }

    async fn get_template(&mut self, name: &str) -> Result<Template, tonic::Status> {
        self.templates
            .get_template(GetTemplateRequest {
                name: name.to_owned(),
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn claim(
        &mut self,
        template: &str,
        labels: &[(&str, &str)],
        request_id: &str,
    ) -> Result<Session, tonic::Status> {
        self.sessions
            .create_session(CreateSessionRequest {
                source: Some(create_session_request::Source::Template(
                    template.to_owned(),
                )),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                request_id: request_id.to_owned(),
                ..CreateSessionRequest::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Every live session, as an operator sees them.
    async fn all_sessions(&mut self) -> anyhow::Result<Vec<Session>> {
        Ok(self
            .admin
            .list_sessions(AdminListSessionsRequest::default())
            .await?
            .into_inner()
            .sessions)
    }

    /// Unclaimed members of `template`'s pool that are not stopping, by id.
    async fn members(&mut self, template: &str) -> anyhow::Result<Vec<Session>> {
        Ok(self
            .all_sessions()
            .await?
            .into_iter()
            .filter(|s| s.labels.get(POOL_LABEL).map(String::as_str) == Some(template))
            .filter(|s| s.state() != SessionState::Stopping)
            .collect())
    }

    /// Waits until `template` reports `n` READY members and exactly `n` members exist.
    async fn pool_settles(&mut self, template: &str, n: u32) -> anyhow::Result<Vec<Session>> {
        let (templates, admin) = (self.templates.clone(), self.admin.clone());
        eventually(
            &format!("{n} READY members in the pool of {template}"),
            Duration::from_secs(30),
            || {
                let (mut templates, mut admin) = (templates.clone(), admin.clone());
                async move {
                    let t = templates
                        .get_template(GetTemplateRequest {
                            name: template.to_owned(),
                        })
                        .await?
                        .into_inner();
                    let members: Vec<Session> = admin
                        .list_sessions(AdminListSessionsRequest::default())
                        .await?
                        .into_inner()
                        .sessions
                        .into_iter()
                        .filter(|s| {
                            s.labels.get(POOL_LABEL).map(String::as_str) == Some(template)
                                && s.state() != SessionState::Stopping
                        })
                        .collect();
                    let ready = members.iter().all(|s| s.state() == SessionState::Ready);
                    Ok((t.pool_ready == n && members.len() == n as usize && ready)
                        .then_some(members))
                }
            },
        )
        .await
        .map_err(|e| self.with_logs(e))
    }

    async fn worker_state(&mut self, id: &str) -> anyhow::Result<(u64, u64)> {
        let (status, body) = api::invoke(&mut self.sessions, id, "GET", "/state", vec![]).await?;
        assert_eq!(status, 200);
        let field = |name| -> anyhow::Result<u64> {
            Ok(api::json_field(&body, name)
                .ok_or_else(|| anyhow::anyhow!("no {name} in {body:?}"))?
                .parse()?)
        };
        Ok((field("warmups")?, field("counter")?))
    }
}

fn spec(warmup_ms: u32, gpus: u32) -> SessionSpec {
    SessionSpec {
        image: images::worker_binary().display().to_string(),
        env: [("WARMUP_MS".to_owned(), warmup_ms.to_string())].into(),
        gpus: Some(GpuRequest {
            count: gpus,
            ..GpuRequest::default()
        }),
        ports: vec![PortSpec {
            port: 8080,
            name: "http".into(),
        }],
        readiness: Some(ReadinessProbe {
            check: Some(readiness_probe::Check::TcpPort(8080)),
            timeout: Some(hearth_sdk::time::duration(Duration::from_secs(30))),
            ..ReadinessProbe::default()
        }),
        // Short, so the test would see an unclaimed member idle-paused if that happened.
        idle_timeout: Some(hearth_sdk::time::duration(Duration::from_secs(1))),
        ..SessionSpec::default()
    }
}

fn template(name: &str, warm_pool: u32, spec: SessionSpec) -> Template {
    Template {
        name: name.to_owned(),
        description: format!("{name} for tests"),
        spec: Some(spec),
        warm_pool,
        ..Template::default()
    }
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let err = result.expect_err("must be refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&format!("invalid {field}:")),
        "the error names {field}: {err:?}"
    );
}

#[tokio::test]
async fn templates_crud_validates_and_names_fields() -> anyhow::Result<()> {
    let mut f = Fixture::start(1, None).await?;

    // Validation: every error names its field.
    let t = |name: &str| template(name, 0, spec(0, 1));
    assert_invalid(
        f.templates
            .create_template(CreateTemplateRequest { template: None })
            .await,
        "template",
    );
    assert_invalid(f.create_template(t("Bad_Name")).await, "template.name");
    assert_invalid(f.create_template(t(&"a".repeat(64))).await, "template.name");
    let mut no_image = t("no-image");
    no_image.spec.as_mut().unwrap().image.clear();
    assert_invalid(f.create_template(no_image).await, "template.spec.image");
    let mut no_spec = t("no-spec");
    no_spec.spec = None;
    assert_invalid(f.create_template(no_spec).await, "template.spec");
    let mut bad_port = t("bad-port");
    bad_port.spec.as_mut().unwrap().ports[0].port = 70000;
    assert_invalid(
        f.create_template(bad_port).await,
        "template.spec.ports[0].port",
    );
    assert_invalid(
        f.create_template(template("huge", 1000, spec(0, 1))).await,
        "template.warm_pool",
    );
    assert_invalid(f.get_template("UPPER").await, "name");

    // Create, then the same name again.
    let created = f.create_template(t("beta")).await?;
    assert_eq!(created.name, "beta");
    assert_eq!(created.tenant, "default");
    assert_eq!(created.description, "beta for tests");
    assert_eq!(created.pool_ready, 0);
    assert!(created.created_at.is_some());
    let stored_spec = created.spec.clone().unwrap();
    assert_eq!(
        stored_spec.readiness.as_ref().unwrap().timeout,
        Some(hearth_sdk::time::duration(Duration::from_secs(30)))
    );
    assert_eq!(
        stored_spec.idle_action(),
        hearth_sdk::proto::v1::IdleAction::Pause,
        "the spec is stored with its defaults filled in, as CreateSession would"
    );
    let again = f.create_template(t("beta")).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    assert!(again.message().contains("beta"), "{again:?}");
    f.create_template(t("alpha")).await?;

    // Get and List (ordered by name).
    assert_eq!(f.get_template("beta").await?, created);
    let missing = f.get_template("gamma").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("gamma"));
    let names: Vec<String> = f
        .templates
        .list_templates(ListTemplatesRequest {})
        .await?
        .into_inner()
        .templates
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["alpha", "beta"]);

    // Update replaces description, spec and pool size; created_at stays.
    let mut changed = t("beta");
    changed.description = "second".into();
    changed
        .spec
        .as_mut()
        .unwrap()
        .env
        .insert("X".into(), "1".into());
    let updated = f
        .templates
        .update_template(UpdateTemplateRequest {
            template: Some(changed),
        })
        .await?
        .into_inner();
    assert_eq!(updated.description, "second");
    assert_eq!(updated.created_at, created.created_at);
    assert_eq!(
        updated.spec.unwrap().env.get("X").map(String::as_str),
        Some("1")
    );
    assert_eq!(f.get_template("beta").await?.description, "second");
    let err = f
        .templates
        .update_template(UpdateTemplateRequest {
            template: Some(t("gamma")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut bad_update = t("beta");
    bad_update
        .spec
        .as_mut()
        .unwrap()
        .gpus
        .as_mut()
        .unwrap()
        .count = 99;
    assert_invalid(
        f.templates
            .update_template(UpdateTemplateRequest {
                template: Some(bad_update),
            })
            .await,
        "template.spec.gpus.count",
    );

    // CreateSession from templates: bad or unknown names, reserved labels.
    let err = f.claim("gamma", &[], "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("template \"gamma\""), "{err:?}");
    assert_invalid(f.claim("No!", &[], "").await, "template");
    assert_invalid(
        f.claim("beta", &[(POOL_LABEL, "x")], "").await,
        "labels[hearth.pool]",
    );

    // A template without a pool starts sessions cold, and says where they came from.
    let cold = f
        .claim("alpha", &[("team", "a")], "")
        .await
        .map_err(|s| f.with_logs(s))?;
    assert_eq!(cold.state(), SessionState::Ready);
    assert_eq!(cold.template, "alpha");
    assert_eq!(cold.labels, HashMap::from([("team".into(), "a".into())]));
    assert_eq!(cold.cold_starts, 1);
    f.sessions
        .delete_session(DeleteSessionRequest { id: cold.id })
        .await?;

    // Delete: nothing pooled to stop; then it is gone.
    let deleted = f
        .templates
        .delete_template(DeleteTemplateRequest {
            name: "beta".into(),
        })
        .await?
        .into_inner();
    assert_eq!(deleted.pool_sessions_stopped, 0);
    assert_eq!(
        f.get_template("beta").await.unwrap_err().code(),
        Code::NotFound
    );
    let err = f
        .templates
        .delete_template(DeleteTemplateRequest {
            name: "beta".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    Ok(())
}

/// A pool of 2 fills, a claim is served from it at once and the pool refills; the pool
/// (and the claimed session) survive a broker restart without duplicate members; deleting
/// the template stops the members and frees their GPUs.
async fn pool_scenario(store_flags: Option<Vec<String>>) -> anyhow::Result<()> {
    // 3 GPUs: two pool members plus the one claimed, so a refill needs the claimed
    // member's GPU to stay booked and a third to be free.
    let mut f = Fixture::start(3, store_flags).await?;
    // A long warm-up, so a claim that took the cold path could not look fast.
    let warmup_ms = 1500;
    f.create_template(template("warm", 2, spec(warmup_ms, 1)))
        .await?;
    let members = f.pool_settles("warm", 2).await?;
    let member_ids: BTreeSet<String> = members.iter().map(|s| s.id.clone()).collect();
    for m in &members {
        assert_eq!(m.template, "warm");
        assert_eq!(m.gpu_uuids.len(), 1);
        assert_eq!(m.cold_starts, 1);
    }
    let gpus: BTreeSet<&String> = members.iter().flat_map(|m| &m.gpu_uuids).collect();
    assert_eq!(gpus.len(), 2, "each member holds its own GPU");

    // Unclaimed members stay warm: the spec's 1 s idle timeout does not pause them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = f.members("warm").await?;
    assert!(
        still.iter().all(|s| s.state() == SessionState::Ready),
        "unclaimed members are never idle-paused: {still:?}"
    );
    // Nobody can use an unclaimed member without claiming it.
    let err = api::invoke(&mut f.sessions, &members[0].id, "GET", "/state", vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("warm pool"), "{err:?}");

    // Claim: one of the warm members, at once, with the caller's labels.
    let started = Instant::now();
    let claimed = f
        .claim("warm", &[("owner", "agent-1")], "claim-1")
        .await
        .map_err(|s| f.with_logs(s))?;
    let took = started.elapsed();
    assert!(
        member_ids.contains(&claimed.id),
        "the claim handed out a pool member"
    );
    assert!(
        took < Duration::from_millis(u64::from(warmup_ms)),
        "a claim does not wait for a warm-up: took {took:?}"
    );
    assert_eq!(claimed.state(), SessionState::Ready);
    assert_eq!(claimed.template, "warm");
    assert_eq!(
        claimed.labels,
        HashMap::from([("owner".into(), "agent-1".into())]),
        "the caller's labels replace the pool marker"
    );
    // A retry of the same request gets the same session, not a second member.
    let retried = f.claim("warm", &[("owner", "agent-1")], "claim-1").await?;
    assert_eq!(retried.id, claimed.id);

    // The claimed session works, and its worker warmed up exactly once.
    let (status, body) = api::invoke(&mut f.sessions, &claimed.id, "POST", "/incr", vec![]).await?;
    assert_eq!((status, String::from_utf8(body)?.trim()), (200, "1"));
    assert_eq!(f.worker_state(&claimed.id).await?, (1, 1));

    // The pool refills to 2, with a new member; all three GPUs are now booked.
    let refilled = f.pool_settles("warm", 2).await?;
    let refilled_ids: BTreeSet<String> = refilled.iter().map(|s| s.id.clone()).collect();
    assert!(!refilled_ids.contains(&claimed.id));
    assert_eq!(refilled_ids.intersection(&member_ids).count(), 1);
    let all = f.all_sessions().await?;
    assert_eq!(all.len(), 3, "{all:?}");
    let booked: BTreeSet<&String> = all.iter().flat_map(|s| &s.gpu_uuids).collect();
    assert_eq!(booked.len(), 3);

    // Broker restart (kill -9): the pool is rebuilt from the store, not refilled again.
    f.broker.proc.kill();
    f.broker.proc.restart()?;
    f.node_ready().await?;
    let after = f.pool_settles("warm", 2).await?;
    let after_ids: BTreeSet<String> = after.iter().map(|s| s.id.clone()).collect();
    assert_eq!(after_ids, refilled_ids, "the same members, no new ones");
    // Several reconciler passes later there are still exactly these three sessions.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = f.all_sessions().await?;
    let ids: BTreeSet<String> = all.iter().map(|s| s.id.clone()).collect();
    let mut expected = refilled_ids.clone();
    expected.insert(claimed.id.clone());
    assert_eq!(ids, expected, "no duplicate refill after the restart");
    // The claimed session kept its state and its single warm-up.
    let (_, body) = api::invoke(&mut f.sessions, &claimed.id, "POST", "/incr", vec![]).await?;
    assert_eq!(String::from_utf8(body)?.trim(), "2");
    assert_eq!(f.worker_state(&claimed.id).await?.0, 1);

    // Delete the template: its two unclaimed members stop; the claimed one is the caller's.
    let deleted = f
        .templates
        .delete_template(DeleteTemplateRequest {
            name: "warm".into(),
        })
        .await?
        .into_inner();
    assert_eq!(deleted.pool_sessions_stopped, 2);
    for id in &after_ids {
        let s = f
            .sessions
            .get_session(GetSessionRequest { id: id.clone() })
            .await?
            .into_inner();
        assert_eq!(s.state(), SessionState::Stopped, "{s:?}");
        assert!(
            !std::path::Path::new(&format!("/proc/{}", s.container_id)).exists()
                || std::fs::read_to_string(format!("/proc/{}/stat", s.container_id))
                    .unwrap_or_default()
                    .contains(") Z "),
            "member {id}'s worker process is gone"
        );
    }
    let claimed_now = f
        .sessions
        .get_session(GetSessionRequest {
            id: claimed.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(claimed_now.state(), SessionState::Ready);
    // Their GPUs are free again: two plain sessions fit next to the claimed one.
    let mut extra = Vec::new();
    for _ in 0..2 {
        let s = f
            .sessions
            .create_session(CreateSessionRequest {
                source: Some(create_session_request::Source::Spec(spec(0, 1))),
                ..CreateSessionRequest::default()
            })
            .await
            .map_err(|s| f.with_logs(s))?
            .into_inner();
        extra.push(s.id);
    }
    for id in extra.into_iter().chain([claimed.id]) {
        f.sessions
            .delete_session(DeleteSessionRequest { id })
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn embedded_pool_fills_claims_refills_survives_restart_and_deletes() -> anyhow::Result<()> {
    pool_scenario(None).await
}

#[tokio::test]
async fn etcd_pool_fills_claims_refills_survives_restart_and_deletes() -> anyhow::Result<()> {
    let Some(etcd) = etcd_or_skip().await else {
        return Ok(());
    };
    let flags = vec![
        "--etcd".to_owned(),
        etcd.endpoint(),
        "--etcd-prefix".to_owned(),
        unique_prefix("pool"),
        // A killed leader's lease lapses quickly, so the restarted broker leads soon.
        "--leader-ttl".to_owned(),
        "2s".to_owned(),
    ];
    pool_scenario(Some(flags)).await
}

#[tokio::test]
async fn pool_updates_replace_stale_members_and_shrink() -> anyhow::Result<()> {
    let mut f = Fixture::start(4, None).await?;
    f.create_template(template("roll", 2, spec(0, 1))).await?;
    let first: BTreeSet<String> = f
        .pool_settles("roll", 2)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();

    // A new spec: the old members are stopped and replaced by members of the new spec.
    let mut new_spec = spec(0, 1);
    new_spec.env.insert("VERSION".into(), "2".into());
    f.templates
        .update_template(UpdateTemplateRequest {
            template: Some(template("roll", 2, new_spec)),
        })
        .await?;
    let second = eventually(
        "members of the new spec only",
        Duration::from_secs(30),
        || {
            let mut f2 = (f.templates.clone(), f.admin.clone());
            let first = first.clone();
            async move {
                let t =
                    f2.0.get_template(GetTemplateRequest {
                        name: "roll".into(),
                    })
                    .await?
                    .into_inner();
                let members: Vec<Session> =
                    f2.1.list_sessions(AdminListSessionsRequest::default())
                        .await?
                        .into_inner()
                        .sessions
                        .into_iter()
                        .filter(|s| s.labels.contains_key(POOL_LABEL))
                        .collect();
                let fresh = members.iter().all(|s| {
                    !first.contains(&s.id)
                        && s.state() == SessionState::Ready
                        && s.spec
                            .as_ref()
                            .unwrap()
                            .env
                            .get("VERSION")
                            .map(String::as_str)
                            == Some("2")
                });
                Ok((t.pool_ready == 2 && members.len() == 2 && fresh).then_some(members))
            }
        },
    )
    .await
    .map_err(|e| f.with_logs(e))?;
    for id in &first {
        let s = f
            .sessions
            .get_session(GetSessionRequest { id: id.clone() })
            .await?
            .into_inner();
        assert_eq!(s.state(), SessionState::Stopped, "stale member {id}");
        assert!(s.state_reason.contains("older spec"), "{}", s.state_reason);
    }

    // A smaller pool: one member is stopped, the other stays.
    f.templates
        .update_template(UpdateTemplateRequest {
            template: Some(template("roll", 1, second[0].spec.clone().unwrap())),
        })
        .await?;
    let kept = f.pool_settles("roll", 1).await?;
    assert!(second.iter().any(|s| s.id == kept[0].id));

    // Deleting a pool member by hand: the pool refills.
    f.sessions
        .delete_session(DeleteSessionRequest {
            id: kept[0].id.clone(),
        })
        .await?;
    let refilled = f.pool_settles("roll", 1).await?;
    assert_ne!(refilled[0].id, kept[0].id);

    // The tenant's own list shows pool members too, marked, and filterable by the label.
    let listed = f
        .sessions
        .list_sessions(ListSessionsRequest {
            labels: [(POOL_LABEL.to_owned(), "roll".to_owned())].into(),
            ..ListSessionsRequest::default()
        })
        .await?
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, refilled[0].id);
    Ok(())
}

#[tokio::test]
async fn a_pool_without_capacity_backs_off_and_says_why() -> anyhow::Result<()> {
    let mut f = Fixture::start(1, None).await?;
    let mut events = f
        .admin
        .watch_events(WatchEventsRequest {
            kinds: vec!["pool.".into()],
        })
        .await?
        .into_inner();
    // Three members wanted, room for one.
    f.create_template(template("tight", 3, spec(0, 1))).await?;
    f.pool_settles("tight", 1).await?;
    let watch_from = Instant::now();
    let mut failures: Vec<Event> = Vec::new();
    let window = Duration::from_secs(5);
    while let Ok(Ok(Some(event))) = tokio::time::timeout(
        window.saturating_sub(watch_from.elapsed()),
        events.message(),
    )
    .await
    {
        if event.kind == "pool.fill_failed" {
            failures.push(event);
        }
    }
    assert!(!failures.is_empty(), "a failure to fill is announced");
    assert!(
        failures[0].message.contains("tight") && failures[0].message.contains("no node can take"),
        "the event says which template and why: {:?}",
        failures[0]
    );
    assert!(
        failures[0].message.contains("next try in"),
        "{:?}",
        failures[0]
    );
    // Backoff 1 s, 2 s, 4 s...: a handful of tries in 5 s, not a hot loop.
    assert!(
        failures.len() <= 5,
        "{} fill failures in 5 s: {failures:?}",
        failures.len()
    );
    let t = f.get_template("tight").await?;
    assert_eq!(t.pool_ready, 1);
    assert_eq!(
        f.all_sessions().await?.len(),
        1,
        "no failed bookings linger"
    );

    // A claim takes the one member; with no capacity left, the next one is refused
    // clearly rather than hanging.
    let claimed = f.claim("tight", &[], "").await?;
    assert_eq!(claimed.template, "tight");
    let err = f.claim("tight", &[], "").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    Ok(())
}

#[tokio::test]
async fn concurrent_claims_never_share_a_member() -> anyhow::Result<()> {
    // Room for the two members, their two refills and two cold sessions.
    let mut f = Fixture::start(6, None).await?;
    f.create_template(template("race", 2, spec(0, 1))).await?;
    let members: BTreeSet<String> = f
        .pool_settles("race", 2)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    // Four claims at once against two free members: each member goes to one caller only,
    // and the others start cold (or from refills), each a different session.
    let claims = (0..4).map(|i| {
        let mut sessions = f.sessions.clone();
        async move {
            sessions
                .create_session(CreateSessionRequest {
                    source: Some(create_session_request::Source::Template("race".into())),
                    labels: [("caller".to_owned(), i.to_string())].into(),
                    ..CreateSessionRequest::default()
                })
                .await
                .map(|r| r.into_inner())
        }
    });
    let mut got = Vec::new();
    for result in futures::future::join_all(claims).await {
        got.push(result.map_err(|s| f.with_logs(s))?);
    }
    let ids: BTreeSet<&String> = got.iter().map(|s| &s.id).collect();
    assert_eq!(ids.len(), 4, "every caller got its own session: {got:?}");
    let from_pool = got.iter().filter(|s| members.contains(&s.id)).count();
    assert_eq!(from_pool, 2, "both warm members were handed out, once each");
    for s in &got {
        assert_eq!(s.state(), SessionState::Ready);
        assert_eq!(s.template, "race");
        assert!(!s.labels.contains_key(POOL_LABEL), "{s:?}");
    }
    Ok(())
}
