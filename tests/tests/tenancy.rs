//! Tenancy end to end: one broker whose config holds tokens (made by `hearth token
//! create`) for users of tenants A and B and for an admin; an agent with simulated GPUs
//! runs sessions as processes.
//!
//! One table has a row for every RPC of `hearth.v1.Sessions`, `Templates` and `Admin`,
//! and the test checks it against the services' methods in the SDK's descriptor set, so
//! an RPC added without a row fails here. For every row: no token and a wrong token get
//! UNAUTHENTICATED; B cannot see or change A's objects (NOT_FOUND, or a list without
//! them); A still can; a user calling Admin gets PERMISSION_DENIED and the admin gets
//! through.

use std::{collections::BTreeSet, future::Future, path::Path, pin::Pin, time::Duration};

use hearth_sdk::proto::v1::{
    AdminListSessionsRequest, CordonNodeRequest, CreateSessionRequest, CreateTemplateRequest,
    CreateTokenRequest, DeleteRegistryCredentialRequest, DeleteSessionRequest,
    DeleteTemplateRequest, DrainNodeRequest, ExecRequest, FILE_DESCRIPTOR_SET,
    GetClusterInfoRequest, GetNodeRequest, GetSessionRequest, GetTemplateRequest, InvokeRequest,
    KeepAliveRequest, ListNodesRequest, ListRegistryCredentialsRequest, ListSessionsRequest,
    ListTemplatesRequest, ListTokensRequest, NodeState, PauseSessionRequest, ResumeSessionRequest,
    RevokeTokenRequest, Session, SessionSpec, SessionState, SetRegistryCredentialRequest, Template,
    UncordonNodeRequest, UpdateTemplateRequest, WatchEventsRequest, WatchSessionRequest,
    admin_client::AdminClient, create_session_request, exec_response,
    sessions_client::SessionsClient, templates_client::TemplatesClient,
};
use hearth_tests::{
    api, eventually, images,
    process::binary,
    tenants::{self, TokenCluster},
};
use prost::Message as _;
use tonic::{
    Code, Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Adds `authorization: Bearer <token>` when it has a token.
#[derive(Clone)]
struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::internal("token is not valid metadata"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

type Svc = InterceptedService<Channel, Bearer>;

/// The three client services, calling as one token (or none).
#[derive(Clone)]
struct Clients {
    sessions: SessionsClient<Svc>,
    templates: TemplatesClient<Svc>,
    admin: AdminClient<Svc>,
}

impl Clients {
    fn new(channel: &Channel, token: Option<&str>) -> Self {
        let bearer = Bearer(token.map(str::to_owned));
        Self {
            sessions: SessionsClient::with_interceptor(channel.clone(), bearer.clone()),
            templates: TemplatesClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminClient::with_interceptor(channel.clone(), bearer),
        }
    }
}

/// `hearth token create`, appending its entry to `config`; returns the token.
/// A token from `hearth token create`, checked: it looks like one, and the config holds
/// only its hash.
fn create_token(config: &Path, tenant: &str, role: &str) -> anyhow::Result<String> {
    let token = tenants::create_token(config, tenant, role)?;
    anyhow::ensure!(token.starts_with("hth_"), "unexpected token {token:?}");
    let text = std::fs::read_to_string(config)?;
    anyhow::ensure!(!text.contains(&token), "the config must hold only the hash");
    Ok(token)
}

fn spec() -> SessionSpec {
    images::worker_spec(images::worker_binary().display().to_string())
}

/// What a call returned: the ids or names it showed, for list checks.
type Outcome = Result<Vec<String>, Status>;
type Call = Box<dyn Fn(Clients) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

fn call<F, Fut>(f: F) -> Call
where
    F: Fn(Clients) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Box::new(move |c| Box::pin(f(c)))
}

/// What one caller must get from a row.
#[derive(Clone, Debug)]
enum Expect {
    /// Success.
    Ok,
    /// Success, showing this id or name.
    Sees(String),
    /// Success, without this id or name.
    Hides(String),
    /// This error code.
    Fails(Code),
}

struct Row {
    /// `hearth.v1.Service/Method`.
    rpc: &'static str,
    /// The call, aimed at A's objects.
    call: Call,
    /// What tenant B's user gets.
    b: Expect,
    /// What tenant A's user (the owner) gets.
    a: Expect,
    /// What the admin gets; `None`: not tried (a Sessions or Templates row).
    admin: Option<Expect>,
}

fn check(rpc: &str, who: &str, expect: &Expect, outcome: Outcome) -> anyhow::Result<()> {
    let ok = match (expect, &outcome) {
        (Expect::Ok, Ok(_)) => true,
        (Expect::Sees(id), Ok(seen)) => seen.contains(id),
        (Expect::Hides(id), Ok(seen)) => !seen.contains(id),
        (Expect::Fails(code), Err(status)) => status.code() == *code,
        _ => false,
    };
    anyhow::ensure!(ok, "{rpc} as {who}: expected {expect:?}, got {outcome:?}");
    if let (Expect::Fails(Code::Unauthenticated), Err(status)) = (expect, &outcome) {
        anyhow::ensure!(
            !status.message().contains("hth_"),
            "{rpc}: the error echoes a token: {status:?}"
        );
    }
    if let (Expect::Fails(Code::PermissionDenied), Err(status)) = (expect, &outcome) {
        anyhow::ensure!(
            status.message().contains("admin role"),
            "{rpc}: the refusal must name the role it needs: {status:?}"
        );
    }
    Ok(())
}

/// Every method of the client services, from the descriptor set the SDK exports.
fn methods() -> anyhow::Result<BTreeSet<String>> {
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)?;
    let mut out = BTreeSet::new();
    for file in set.file {
        if file.package() != "hearth.v1" {
            continue;
        }
        for service in file.service {
            if matches!(service.name(), "Sessions" | "Templates" | "Admin") {
                for method in &service.method {
                    out.insert(format!("hearth.v1.{}/{}", service.name(), method.name()));
                }
            }
        }
    }
    anyhow::ensure!(out.len() > 20, "too few methods found: {out:?}");
    Ok(out)
}

fn ids(sessions: &[Session]) -> Vec<String> {
    sessions.iter().map(|s| s.id.clone()).collect()
}

#[tokio::test]
async fn tenants_see_only_their_own_objects_and_admin_needs_the_admin_role() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broker.toml");
    let token_a = create_token(&config, "team-a", "user")?;
    let token_b = create_token(&config, "team-b", "user")?;
    let token_admin = create_token(&config, "ops", "admin")?;
    // A key for registry credentials, which the Templates rows store.
    let key = dir.path().join("credentials.key");
    std::fs::write(&key, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")?;
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new().append(true).open(&config)?;
        writeln!(
            file,
            "\n[registry_credentials]\nkey_file = {:?}",
            key.display().to_string()
        )?;
    }
    let cluster = TokenCluster::spawn(dir.path(), &config, "tenancy-node", "2")?;
    let (broker, agent) = (&cluster.broker, &cluster.agent);
    let logs = |e: anyhow::Error| cluster.logs(e);
    let channel = api::long_channel(&broker.url);
    let a = Clients::new(&channel, Some(&token_a));
    let b = Clients::new(&channel, Some(&token_b));
    let admin = Clients::new(&channel, Some(&token_admin));
    let nobody = Clients::new(&channel, None);
    let wrong = Clients::new(&channel, Some("hth_not-a-token-this-broker-knows"));
    let node = agent.node_id.clone();

    eventually("node READY", Duration::from_secs(30), || {
        let mut admin = admin.admin.clone();
        let node = node.clone();
        async move {
            Ok(admin
                .get_node(GetNodeRequest { id: node })
                .await
                .ok()
                .map(|r| r.into_inner())
                .filter(|n| n.state() == NodeState::Ready))
        }
    })
    .await
    .map_err(logs)?;

    // Health stays open: probes carry no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;

    // A's objects: a session the rows use, one to delete, and a template.
    let create = |mut c: Clients, request_id: &'static str| async move {
        c.sessions
            .create_session(CreateSessionRequest {
                source: Some(create_session_request::Source::Spec(spec())),
                request_id: request_id.to_owned(),
                ..CreateSessionRequest::default()
            })
            .await
            .map(|r| r.into_inner())
    };
    let main = create(a.clone(), "req-a")
        .await
        .map_err(|e| logs(e.into()))?;
    let doomed = create(a.clone(), "").await.map_err(|e| logs(e.into()))?;
    let b_own = create(b.clone(), "").await.map_err(|e| logs(e.into()))?;
    assert_eq!(main.tenant, "team-a");
    assert_eq!(b_own.tenant, "team-b");
    let template = Template {
        name: "model-a".to_owned(),
        description: "A's model".to_owned(),
        spec: Some(spec()),
        warm_pool: 0,
        ..Template::default()
    };
    a.templates
        .clone()
        .create_template(CreateTemplateRequest {
            template: Some(template.clone()),
        })
        .await?;
    a.templates
        .clone()
        .set_registry_credential(SetRegistryCredentialRequest {
            registry: "a-only.example.com".to_owned(),
            username: "alice".to_owned(),
            password: "a-secret".to_owned(),
        })
        .await?;

    // The same request id in B's namespace is a different request.
    let b_same_request = create(b.clone(), "req-a").await?;
    assert_ne!(b_same_request.id, main.id, "request ids are per tenant");
    assert_eq!(b_same_request.tenant, "team-b");

    let sid = main.id.clone();
    let worker = images::worker_binary().display().to_string();
    let not_found = || Expect::Fails(Code::NotFound);
    let denied = || Expect::Fails(Code::PermissionDenied);
    let mut rows = vec![
        // --- hearth.v1.Sessions ---
        Row {
            rpc: "hearth.v1.Sessions/CreateSession",
            // From A's template, retrying A's request: A gets its session back; B has
            // no such template.
            call: call(|mut c| async move {
                let s = c
                    .sessions
                    .create_session(CreateSessionRequest {
                        source: Some(create_session_request::Source::Template(
                            "model-a".to_owned(),
                        )),
                        request_id: "req-a".to_owned(),
                        ..CreateSessionRequest::default()
                    })
                    .await?
                    .into_inner();
                Ok(vec![s.id])
            }),
            b: not_found(),
            a: Expect::Sees(sid.clone()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/GetSession",
            call: call({
                let sid = sid.clone();
                move |mut c| {
                    let id = sid.clone();
                    async move {
                        let s = c.sessions.get_session(GetSessionRequest { id }).await?;
                        Ok(vec![s.into_inner().id])
                    }
                }
            }),
            b: not_found(),
            a: Expect::Sees(sid.clone()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/ListSessions",
            call: call(|mut c| async move {
                let r = c
                    .sessions
                    .list_sessions(ListSessionsRequest::default())
                    .await?;
                Ok(ids(&r.into_inner().sessions))
            }),
            b: Expect::Hides(sid.clone()),
            a: Expect::Sees(sid.clone()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/WatchSession",
            call: call({
                let sid = sid.clone();
                move |mut c| {
                    let id = sid.clone();
                    async move {
                        let mut stream = c
                            .sessions
                            .watch_session(WatchSessionRequest { id })
                            .await?
                            .into_inner();
                        let first = stream.message().await?;
                        Ok(first.into_iter().map(|e| e.session_id).collect())
                    }
                }
            }),
            b: not_found(),
            a: Expect::Sees(sid.clone()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/KeepAlive",
            call: call({
                let sid = sid.clone();
                move |mut c| {
                    let id = sid.clone();
                    async move {
                        c.sessions.keep_alive(KeepAliveRequest { id }).await?;
                        Ok(vec![])
                    }
                }
            }),
            b: not_found(),
            a: Expect::Ok,
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/Exec",
            call: call({
                let (sid, worker) = (sid.clone(), worker.clone());
                move |mut c| {
                    let (session_id, worker) = (sid.clone(), worker.clone());
                    async move {
                        let mut stream = c
                            .sessions
                            .exec(ExecRequest {
                                session_id,
                                argv: vec![worker, "echo".into(), "tenant-a".into()],
                                ..ExecRequest::default()
                            })
                            .await?
                            .into_inner();
                        let mut out = Vec::new();
                        while let Some(piece) = stream.message().await? {
                            if let Some(exec_response::Event::Stdout(bytes)) = piece.event {
                                out.extend(bytes);
                            }
                        }
                        Ok(vec![String::from_utf8_lossy(&out).trim().to_owned()])
                    }
                }
            }),
            b: not_found(),
            a: Expect::Sees("tenant-a".to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/Invoke",
            call: call({
                let sid = sid.clone();
                move |mut c| {
                    let session_id = sid.clone();
                    async move {
                        let mut stream = c
                            .sessions
                            .invoke(InvokeRequest {
                                session_id,
                                port: 8080,
                                method: "GET".into(),
                                path: "/state".into(),
                                ..InvokeRequest::default()
                            })
                            .await?
                            .into_inner();
                        while stream.message().await?.is_some() {}
                        Ok(vec![])
                    }
                }
            }),
            b: not_found(),
            a: Expect::Ok,
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/PauseSession",
            call: call({
                let sid = sid.clone();
                move |mut c| {
                    let id = sid.clone();
                    async move {
                        let s = c.sessions.pause_session(PauseSessionRequest { id }).await?;
                        Ok(vec![s.into_inner().state().as_str_name().to_owned()])
                    }
                }
            }),
            b: not_found(),
            a: Expect::Sees(SessionState::Paused.as_str_name().to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/ResumeSession",
            call: call({
                let sid = sid.clone();
                move |mut c| {
                    let id = sid.clone();
                    async move {
                        let s = c
                            .sessions
                            .resume_session(ResumeSessionRequest { id })
                            .await?;
                        Ok(vec![s.into_inner().state().as_str_name().to_owned()])
                    }
                }
            }),
            b: not_found(),
            a: Expect::Sees(SessionState::Ready.as_str_name().to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Sessions/DeleteSession",
            call: call({
                let doomed = doomed.id.clone();
                move |mut c| {
                    let id = doomed.clone();
                    async move {
                        let s = c
                            .sessions
                            .delete_session(DeleteSessionRequest { id })
                            .await?;
                        Ok(vec![s.into_inner().state().as_str_name().to_owned()])
                    }
                }
            }),
            b: not_found(),
            a: Expect::Sees(SessionState::Stopped.as_str_name().to_owned()),
            admin: None,
        },
        // --- hearth.v1.Templates ---
        Row {
            rpc: "hearth.v1.Templates/CreateTemplate",
            // The same name in two tenants: two templates. B creates first, so A's
            // create succeeding shows B's did not land in A's namespace.
            call: call(|mut c| async move {
                let t = c
                    .templates
                    .create_template(CreateTemplateRequest {
                        template: Some(Template {
                            name: "shared-name".to_owned(),
                            spec: Some(spec()),
                            ..Template::default()
                        }),
                    })
                    .await?;
                Ok(vec![t.into_inner().name])
            }),
            b: Expect::Sees("shared-name".to_owned()),
            a: Expect::Sees("shared-name".to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Templates/GetTemplate",
            call: call(|mut c| async move {
                let t = c
                    .templates
                    .get_template(GetTemplateRequest {
                        name: "model-a".to_owned(),
                    })
                    .await?;
                Ok(vec![t.into_inner().description])
            }),
            b: not_found(),
            a: Expect::Sees("A's model".to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Templates/ListTemplates",
            call: call(|mut c| async move {
                let r = c
                    .templates
                    .list_templates(ListTemplatesRequest::default())
                    .await?;
                Ok(r.into_inner()
                    .templates
                    .into_iter()
                    .map(|t| t.name)
                    .collect())
            }),
            b: Expect::Hides("model-a".to_owned()),
            a: Expect::Sees("model-a".to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Templates/UpdateTemplate",
            call: call({
                let template = template.clone();
                move |mut c| {
                    let mut t = template.clone();
                    t.description = "updated".to_owned();
                    async move {
                        let t = c
                            .templates
                            .update_template(UpdateTemplateRequest { template: Some(t) })
                            .await?;
                        Ok(vec![t.into_inner().description])
                    }
                }
            }),
            b: not_found(),
            a: Expect::Sees("updated".to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Templates/DeleteTemplate",
            call: call(|mut c| async move {
                c.templates
                    .delete_template(DeleteTemplateRequest {
                        name: "model-a".to_owned(),
                    })
                    .await?;
                Ok(vec![])
            }),
            b: not_found(),
            a: Expect::Ok,
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Templates/SetRegistryCredential",
            // One registry, two tenants: two records, each its own.
            call: call(|mut c| async move {
                let r = c
                    .templates
                    .set_registry_credential(SetRegistryCredentialRequest {
                        registry: "shared.example.com".to_owned(),
                        username: "someone".to_owned(),
                        password: "p".to_owned(),
                    })
                    .await?;
                Ok(vec![r.into_inner().registry])
            }),
            b: Expect::Sees("shared.example.com".to_owned()),
            a: Expect::Sees("shared.example.com".to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Templates/ListRegistryCredentials",
            call: call(|mut c| async move {
                let r = c
                    .templates
                    .list_registry_credentials(ListRegistryCredentialsRequest::default())
                    .await?;
                Ok(r.into_inner()
                    .credentials
                    .into_iter()
                    .map(|c| c.registry)
                    .collect())
            }),
            b: Expect::Hides("a-only.example.com".to_owned()),
            a: Expect::Sees("a-only.example.com".to_owned()),
            admin: None,
        },
        Row {
            rpc: "hearth.v1.Templates/DeleteRegistryCredential",
            call: call(|mut c| async move {
                c.templates
                    .delete_registry_credential(DeleteRegistryCredentialRequest {
                        registry: "a-only.example.com".to_owned(),
                    })
                    .await?;
                Ok(vec![])
            }),
            b: not_found(),
            a: Expect::Ok,
            admin: None,
        },
    ];
    // --- hearth.v1.Admin: users are refused, the admin gets through ---
    let admin_row = |rpc, call, admin: Expect| Row {
        rpc,
        call,
        b: denied(),
        a: denied(),
        admin: Some(admin),
    };
    rows.extend([
        admin_row(
            "hearth.v1.Admin/ListNodes",
            call(|mut c| async move {
                let r = c.admin.list_nodes(ListNodesRequest::default()).await?;
                Ok(r.into_inner().nodes.into_iter().map(|n| n.id).collect())
            }),
            Expect::Sees(node.clone()),
        ),
        admin_row(
            "hearth.v1.Admin/GetNode",
            call({
                let node = node.clone();
                move |mut c| {
                    let id = node.clone();
                    async move {
                        let n = c.admin.get_node(GetNodeRequest { id }).await?;
                        Ok(vec![n.into_inner().id])
                    }
                }
            }),
            Expect::Sees(node.clone()),
        ),
        admin_row(
            "hearth.v1.Admin/CordonNode",
            call({
                let node = node.clone();
                move |mut c| {
                    let id = node.clone();
                    async move {
                        let n = c.admin.cordon_node(CordonNodeRequest { id }).await?;
                        Ok(vec![n.into_inner().schedulable.to_string()])
                    }
                }
            }),
            Expect::Sees("false".to_owned()),
        ),
        admin_row(
            "hearth.v1.Admin/UncordonNode",
            call({
                let node = node.clone();
                move |mut c| {
                    let id = node.clone();
                    async move {
                        let n = c.admin.uncordon_node(UncordonNodeRequest { id }).await?;
                        Ok(vec![n.into_inner().schedulable.to_string()])
                    }
                }
            }),
            Expect::Sees("true".to_owned()),
        ),
        admin_row(
            "hearth.v1.Admin/ListSessions",
            // Every tenant's sessions.
            call(|mut c| async move {
                let r = c
                    .admin
                    .list_sessions(AdminListSessionsRequest::default())
                    .await?;
                Ok(r.into_inner()
                    .sessions
                    .iter()
                    .map(|s| format!("{}/{}", s.tenant, s.id))
                    .collect())
            }),
            Expect::Sees(format!("team-b/{}", b_own.id)),
        ),
        admin_row(
            "hearth.v1.Admin/WatchEvents",
            call(|mut c| async move {
                c.admin.watch_events(WatchEventsRequest::default()).await?;
                Ok(vec![])
            }),
            Expect::Ok,
        ),
        admin_row(
            "hearth.v1.Admin/GetClusterInfo",
            call(|mut c| async move {
                c.admin.get_cluster_info(GetClusterInfoRequest {}).await?;
                Ok(vec![])
            }),
            Expect::Ok,
        ),
        admin_row(
            "hearth.v1.Admin/CreateToken",
            call(|mut c| async move {
                let made = c
                    .admin
                    .create_token(CreateTokenRequest {
                        tenant: "tenancy-made".into(),
                        ..CreateTokenRequest::default()
                    })
                    .await?
                    .into_inner();
                Ok(made.info.into_iter().map(|i| i.tenant).collect())
            }),
            Expect::Sees("tenancy-made".into()),
        ),
        admin_row(
            "hearth.v1.Admin/ListTokens",
            call(|mut c| async move {
                let r = c.admin.list_tokens(ListTokensRequest::default()).await?;
                Ok(r.into_inner()
                    .tokens
                    .into_iter()
                    .map(|t| t.tenant)
                    .collect())
            }),
            Expect::Sees("tenancy-made".into()),
        ),
        admin_row(
            "hearth.v1.Admin/RevokeToken",
            call(|mut c| async move {
                c.admin
                    .revoke_token(RevokeTokenRequest {
                        id: "tok_01NOSUCHTOKEN000000000000".into(),
                    })
                    .await?;
                Ok(vec![])
            }),
            Expect::Fails(Code::NotFound),
        ),
        // Last: it stops every session on the node.
        admin_row(
            "hearth.v1.Admin/DrainNode",
            call({
                let node = node.clone();
                move |mut c| {
                    let id = node.clone();
                    async move {
                        let n = c
                            .admin
                            .drain_node(DrainNodeRequest {
                                id,
                                ..DrainNodeRequest::default()
                            })
                            .await?;
                        Ok(vec![n.into_inner().id])
                    }
                }
            }),
            Expect::Sees(node.clone()),
        ),
    ]);

    // The table covers every method, and each once.
    let covered: Vec<&str> = rows.iter().map(|r| r.rpc).collect();
    let covered_set: BTreeSet<String> = covered.iter().map(|s| s.to_string()).collect();
    assert_eq!(covered.len(), covered_set.len(), "a method has two rows");
    assert_eq!(
        covered_set,
        methods()?,
        "every RPC of Sessions, Templates and Admin needs a row in this table"
    );

    let unauthenticated = Expect::Fails(Code::Unauthenticated);
    for row in &rows {
        let run = |c: &Clients| (row.call)(c.clone());
        check(row.rpc, "no token", &unauthenticated, run(&nobody).await)?;
        check(
            row.rpc,
            "a wrong token",
            &unauthenticated,
            run(&wrong).await,
        )?;
        check(row.rpc, "tenant B", &row.b, run(&b).await).map_err(logs)?;
        check(row.rpc, "tenant A", &row.a, run(&a).await).map_err(logs)?;
        if let Some(expect) = &row.admin {
            check(row.rpc, "the admin", expect, run(&admin).await).map_err(logs)?;
        }
    }

    // Ended sessions stay private too (they are read from the store).
    let gone = doomed.id.clone();
    for outcome in [
        b.sessions
            .clone()
            .get_session(GetSessionRequest { id: gone.clone() })
            .await
            .map(drop),
        b.sessions
            .clone()
            .delete_session(DeleteSessionRequest { id: gone.clone() })
            .await
            .map(drop),
        b.sessions
            .clone()
            .watch_session(WatchSessionRequest { id: gone.clone() })
            .await
            .map(drop),
    ] {
        let err = outcome.expect_err("B must not see A's ended session");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    let ended = a
        .sessions
        .clone()
        .get_session(GetSessionRequest { id: gone })
        .await?
        .into_inner();
    assert_eq!(ended.state(), SessionState::Stopped);

    // Same template name, two tenants, two templates.
    let mut tb = b.templates.clone();
    let shared_b = tb
        .get_template(GetTemplateRequest {
            name: "shared-name".to_owned(),
        })
        .await?
        .into_inner();
    assert_eq!(shared_b.tenant, "team-b");
    Ok(())
}

#[test]
fn token_create_prints_the_token_alone_and_the_entry_on_stderr() -> anyhow::Result<()> {
    let out = std::process::Command::new(binary("hearth")?)
        .args([
            "token",
            "create",
            "--tenant",
            "team-a",
            "--role",
            "admin",
            "--offline",
        ])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout)?;
    let token = stdout.trim_end();
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout is the token alone: {stdout:?}"
    );
    assert!(token.starts_with("hth_") && token.len() == 47, "{token:?}");
    let stderr = String::from_utf8(out.stderr)?;
    let entry = stderr
        .split_once("[[auth.tokens]]")
        .map(|(_, rest)| format!("[[auth.tokens]]{rest}"))
        .ok_or_else(|| anyhow::anyhow!("no entry on stderr: {stderr:?}"))?;
    assert!(!stderr.contains(token), "the entry must not hold the token");
    // The entry is what the broker loads, and it accepts the token.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, entry)?;
    let config = hearth_broker::config::Config::from_file(&path)?;
    config.validate()?;
    let tokens = hearth_broker::auth::Tokens::from_config(&config.auth)?;
    let caller = tokens
        .lookup(token)
        .ok_or_else(|| anyhow::anyhow!("the broker does not accept the token"))?;
    assert_eq!(caller.tenant, "team-a");
    assert_eq!(caller.role, hearth_broker::auth::Role::Admin);
    Ok(())
}

#[test]
fn a_broker_refuses_a_bad_token_entry_and_names_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("broker.toml");
    std::fs::write(
        &config,
        "[[auth.tokens]]\ntenant = \"team-a\"\nrole = \"user\"\nsha256 = \"not-a-hash\"\n",
    )?;
    let out = std::process::Command::new(binary("hearth-broker")?)
        .arg("--config")
        .arg(&config)
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.tokens[0].sha256"),
        "the error names the field: {stderr}"
    );
    Ok(())
}
