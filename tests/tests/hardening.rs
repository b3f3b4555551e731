//! Limits and hardened containers end to end: a real broker with a `[limits]` section, a
//! real agent on the docker runtime, and the test worker as a real container inspected
//! with `docker inspect`.
//!
//! - A default session runs unprivileged, with every capability dropped,
//!   no-new-privileges, and pids, memory and CPU limits although its spec sets none.
//! - A capability the tenant may add shows in `CapAdd`; one it may not is
//!   PERMISSION_DENIED naming the field.
//! - An image outside the allowlist is PERMISSION_DENIED naming `limits.images`; too many
//!   GPUs are INVALID_ARGUMENT naming `limits.max_gpus_per_session`.
//! - A request over a field limit is INVALID_ARGUMENT naming the field and the limit; one
//!   over the gRPC message limit is OUT_OF_RANGE from tonic, naming the limit in bytes.

use std::{process::Command, time::Duration};

use hearth_sdk::proto::v1::{
    CreateSessionRequest, CreateTemplateRequest, DeleteSessionRequest, ExecRequest, GpuRequest,
    SecuritySpec, Session, SessionSpec, Template, create_session_request,
    sessions_client::SessionsClient, templates_client::TemplatesClient,
};
use hearth_tests::{
    api, images,
    process::{Agent, Broker},
};
use tonic::{Code, transport::Channel};

/// The broker's `[limits]` for these tests. With no tokens configured every caller is
/// tenant `default`, which may add SYS_PTRACE and nothing else.
const LIMITS: &str = r#"
[limits]
max_gpus_per_session = 1
images = ["hearth-test-worker:*"]

[limits.tenant_capabilities]
default = ["SYS_PTRACE"]
"#;

struct Fixture {
    broker: Broker,
    agent: Agent,
    client: SessionsClient<Channel>,
    image: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> anyhow::Result<Option<Self>> {
        if !images::docker_or_skip() {
            return Ok(None);
        }
        let image = images::worker_image()?.to_owned();
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("broker.toml");
        std::fs::write(&config, LIMITS)?;
        let store = dir.path().join("store").display().to_string();
        let broker = Broker::spawn(
            dir.path(),
            "broker",
            &[
                "--store-path",
                &store,
                "--config",
                &config.display().to_string(),
            ],
        )?;
        let agent = Agent::spawn_docker(dir.path(), "hardened-node", &[&broker.url], "2")?;
        api::node_ready_within(&broker.url, &agent.node_id, Duration::from_secs(60))
            .await
            .map_err(|e| {
                anyhow::anyhow!("{e}\n{}\n{}", broker.proc.log_tail(), agent.proc.log_tail())
            })?;
        // Room for the oversized request below: the SDK's own channel stops at 16 MiB.
        let client = SessionsClient::new(api::long_channel(&broker.url))
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20);
        Ok(Some(Self {
            broker,
            agent,
            client,
            image,
            _dir: dir,
        }))
    }

    fn spec(&self) -> SessionSpec {
        let mut spec = images::worker_spec(self.image.clone());
        spec.env = [("WARMUP_MS".to_owned(), "0".to_owned())].into();
        spec.readiness.get_or_insert_default().timeout =
            Some(hearth_sdk::time::duration(Duration::from_secs(60)));
        spec
    }

    async fn create(&mut self, spec: SessionSpec) -> Result<Session, tonic::Status> {
        self.client
            .create_session(CreateSessionRequest {
                source: Some(create_session_request::Source::Spec(spec)),
                ..CreateSessionRequest::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn delete(&mut self, id: &str) {
        let _ = self
            .client
            .delete_session(DeleteSessionRequest { id: id.to_owned() })
            .await;
    }

    fn logs(&self) -> String {
        format!(
            "broker:\n{}\nagent:\n{}",
            self.broker.proc.log_tail(),
            self.agent.proc.log_tail()
        )
    }
}

/// `docker inspect` of a session's container: its `HostConfig`.
fn host_config(session_id: &str) -> serde_json::Value {
    let output = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .HostConfig}}",
            &format!("hearth-{session_id}"),
        ])
        .output()
        .expect("docker inspect");
    assert!(
        output.status.success(),
        "docker inspect: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("HostConfig as JSON")
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_refused(result: Result<Session, tonic::Status>, code: Code, fragments: &[&str]) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            for fragment in fragments {
                assert!(
                    status.message().contains(fragment),
                    "{fragment:?} missing from {:?}",
                    status.message()
                );
            }
        }
        Ok(s) => panic!("expected {code:?}, but session {} was created", s.id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_hardened_and_limits_are_enforced() -> anyhow::Result<()> {
    let Some(mut f) = Fixture::start().await? else {
        return Ok(());
    };

    // A session whose spec says nothing about security or resources.
    let session = f
        .create(f.spec())
        .await
        .map_err(|e| anyhow::anyhow!("default session: {e:?}\n{}", f.logs()))?;
    let host = host_config(&session.id);
    assert_eq!(host["Privileged"], false, "{host}");
    assert!(
        strings(&host["CapDrop"]).contains(&"ALL".to_owned()),
        "{host}"
    );
    assert!(strings(&host["CapAdd"]).is_empty(), "{host}");
    assert!(
        strings(&host["SecurityOpt"])
            .iter()
            .any(|o| o.starts_with("no-new-privileges")),
        "{host}"
    );
    assert!(host["PidsLimit"].as_i64().unwrap_or(0) > 0, "{host}");
    assert!(host["Memory"].as_i64().unwrap_or(0) > 0, "{host}");
    assert!(
        host["NanoCpus"].as_i64().unwrap_or(0) > 0 || host["CpuQuota"].as_i64().unwrap_or(0) > 0,
        "{host}"
    );
    f.delete(&session.id).await;

    // A capability the tenant may add shows in CapAdd, still on top of dropping ALL.
    let mut spec = f.spec();
    spec.security = Some(SecuritySpec {
        add_capabilities: vec!["SYS_PTRACE".into()],
    });
    let session = f
        .create(spec)
        .await
        .map_err(|e| anyhow::anyhow!("allowed capability: {e:?}\n{}", f.logs()))?;
    let host = host_config(&session.id);
    assert_eq!(strings(&host["CapAdd"]), ["SYS_PTRACE"], "{host}");
    assert!(
        strings(&host["CapDrop"]).contains(&"ALL".to_owned()),
        "{host}"
    );
    f.delete(&session.id).await;

    // One it may not add is refused before anything is placed.
    let mut spec = f.spec();
    spec.security = Some(SecuritySpec {
        add_capabilities: vec!["SYS_PTRACE".into(), "NET_ADMIN".into()],
    });
    assert_refused(
        f.create(spec).await,
        Code::PermissionDenied,
        &[
            "spec.security.add_capabilities[1]",
            "NET_ADMIN",
            "limits.tenant_capabilities",
        ],
    );

    // An image outside the allowlist.
    let mut spec = f.spec();
    spec.image = "evil:latest".into();
    assert_refused(
        f.create(spec).await,
        Code::PermissionDenied,
        &["spec.image", "\"evil:latest\"", "limits.images"],
    );

    // More GPUs than a session may have (the node has two).
    let mut spec = f.spec();
    spec.gpus = Some(GpuRequest {
        count: 2,
        ..GpuRequest::default()
    });
    assert_refused(
        f.create(spec).await,
        Code::InvalidArgument,
        &[
            "spec.gpus.count",
            "2 is more than the limit 1",
            "limits.max_gpus_per_session",
        ],
    );

    // Templates are held to the same limits, named under `template.`.
    let mut spec = f.spec();
    spec.image = "evil:latest".into();
    let status = TemplatesClient::new(api::channel(&f.broker.url))
        .create_template(CreateTemplateRequest {
            template: Some(Template {
                name: "evil".into(),
                spec: Some(spec),
                warm_pool: 1,
                ..Template::default()
            }),
        })
        .await
        .expect_err("a template with a disallowed image");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("template.spec.image")
            && status.message().contains("limits.images"),
        "{status:?}"
    );

    // A field over its limit, inside the message limit: the field and the limit are named.
    let id = ulid::Ulid::new().to_string();
    let status = f
        .client
        .exec(ExecRequest {
            session_id: id.clone(),
            argv: vec!["true".into()],
            stdin: vec![0; 5 << 20],
            ..ExecRequest::default()
        })
        .await
        .expect_err("5 MiB of stdin is over the limit");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("stdin") && status.message().contains("4194304"),
        "{status:?}"
    );

    // A message over the broker's 16 MiB decoding limit: tonic refuses it before the
    // handler runs, with OUT_OF_RANGE and the limit in bytes (its own words; they do not
    // name a setting, since the limit is the broker's constant MAX_MESSAGE).
    let status = f
        .client
        .exec(ExecRequest {
            session_id: id,
            argv: vec!["true".into()],
            stdin: vec![0; 17 << 20],
            ..ExecRequest::default()
        })
        .await
        .expect_err("17 MiB is over the message limit");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status
            .message()
            .contains(&hearth_broker::MAX_MESSAGE.to_string()),
        "{status:?}"
    );
    Ok(())
}
