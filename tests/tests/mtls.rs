//! mTLS between agents and the broker, end to end: real `hearth-broker` and `hearth-agent`
//! processes, certificates made by `hearth certs`. The broker's one gRPC port speaks TLS
//! to everyone; an agent registers only with a certificate from the broker's client CA,
//! and only as the node that certificate names. Without TLS the broker refuses to listen
//! beyond loopback unless told `--insecure-listen`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use hearth_sdk::{
    Client,
    proto::v1::{AgentMessage, ListNodesRequest, node_agent_client::NodeAgentClient},
};
use hearth_tests::{
    api, eventually, images,
    process::{Agent, Broker, binary, free_port},
};

/// Runs `hearth` with `args`; fails with its stderr if it exits non-zero.
fn hearth(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(binary("hearth")?).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "hearth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A CA made by `hearth certs init` in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn init(dir: &Path) -> anyhow::Result<Self> {
        hearth(&["certs", "init", "--dir", &dir.display().to_string()])?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `hearth certs node`; returns the agent's TLS flags for that node's certificate,
    /// trusting `broker_ca` for the broker.
    fn node(&self, id: &str, broker_ca: &str) -> anyhow::Result<Vec<String>> {
        hearth(&[
            "certs",
            "node",
            "--dir",
            &self.dir.display().to_string(),
            id,
        ])?;
        Ok(vec![
            "--tls-ca".into(),
            broker_ca.to_owned(),
            "--tls-cert".into(),
            self.file(&format!("node-{id}.pem")),
            "--tls-key".into(),
            self.file(&format!("node-{id}-key.pem")),
        ])
    }
}

/// A broker with `[tls]` from `pki`, and its https:// URL.
fn tls_broker(dir: &Path, pki: &Pki) -> anyhow::Result<(Broker, String)> {
    let store = dir.join("store").display().to_string();
    let broker = Broker::spawn(
        dir,
        "broker",
        &[
            "--store-path",
            &store,
            "--tls-cert",
            &pki.file("broker.pem"),
            "--tls-key",
            &pki.file("broker-key.pem"),
            "--tls-client-ca",
            &pki.file("ca.pem"),
        ],
    )?;
    let https = broker.url.replace("http://", "https://");
    Ok((broker, https))
}

fn agent(dir: &Path, node_id: &str, https: &str, tls: &[String]) -> anyhow::Result<Agent> {
    let mut extra: Vec<&str> = vec!["--simulate-gpus", "1", "--reconnect-backoff-max", "1s"];
    extra.extend(tls.iter().map(String::as_str));
    Agent::spawn(dir, node_id, &[https], &extra)
}

/// A TLS client trusting the broker's CA.
async fn client(https: &str, pki: &Pki) -> anyhow::Result<Client> {
    Ok(Client::builder(https)
        .ca_pem(std::fs::read(pki.file("ca.pem"))?)
        .connect()
        .await?)
}

async fn node_ids(client: &Client) -> anyhow::Result<Vec<String>> {
    let nodes = client
        .admin()
        .list_nodes(ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes;
    Ok(nodes.into_iter().map(|n| n.id).collect())
}

fn log(agent: &Agent) -> String {
    agent.proc.log_tail()
}

/// Waits until `agent`'s log shows `needle` (its link logs every refusal).
async fn agent_logged(agent: &Agent, needle: &str) -> anyhow::Result<()> {
    eventually(
        &format!("{} to log {needle:?}", agent.node_id),
        Duration::from_secs(30),
        || async { Ok(log(agent).contains(needle).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", log(agent)))
}

#[tokio::test]
async fn agents_without_the_right_certificate_never_register() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::init(&dir.path().join("pki"))?;
    let foreign = Pki::init(&dir.path().join("foreign"))?;
    let (broker, https) = tls_broker(dir.path(), &pki)?;
    let ca = pki.file("ca.pem");

    // No certificate at all: the agent refuses to start, naming the setting it lacks.
    let mut no_cert = agent(
        dir.path(),
        "no-cert",
        &https,
        &["--tls-ca".into(), ca.clone()],
    )?;
    eventually(
        "the agent without a certificate to exit",
        Duration::from_secs(30),
        || {
            let running = no_cert.proc.running();
            async move { Ok((!running).then_some(())) }
        },
    )
    .await?;
    let refused = log(&no_cert);
    assert!(
        refused.contains("tls.cert is required") && refused.contains("hearth certs node"),
        "the agent names tls.cert and how to make one:\n{refused}"
    );
    // The broker refuses such a stream too: the handshake passes (clients need no
    // certificate), Connect does not.
    let channel = tonic::transport::Endpoint::from_shared(https.clone())?
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&ca)?)),
        )?
        .connect()
        .await?;
    let refusal = NodeAgentClient::new(channel)
        .connect(futures::stream::pending::<AgentMessage>())
        .await
        .expect_err("Connect without a client certificate is refused");
    assert_eq!(refusal.code(), tonic::Code::Unauthenticated, "{refusal:?}");
    assert!(
        refusal.message().contains(
            "NodeAgent.Connect needs a client certificate signed by the broker's tls.client_ca"
        ),
        "{refusal:?}"
    );
    // A certificate from another CA: the broker ends the TLS session (with TLS 1.3 the
    // agent sees it only as a broken connection).
    let foreign_flags = foreign.node("foreign", &ca)?;
    let foreign_agent = agent(dir.path(), "foreign", &https, &foreign_flags)?;
    // node-a's certificate, but Hello says node-b.
    let node_a_flags = pki.node("node-a", &ca)?;
    let impostor = agent(dir.path(), "node-b", &https, &node_a_flags)?;

    agent_logged(
        &impostor,
        "the client certificate is for node \"node-a\", but Hello names node \"node-b\"",
    )
    .await?;
    // Two refused attempts, so the refusal is not a race with start-up.
    eventually(
        "the foreign-CA agent to fail twice",
        Duration::from_secs(30),
        || async {
            Ok((log(&foreign_agent).matches("broker link down").count() >= 2).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", log(&foreign_agent)))?;

    let client = client(&https, &pki).await?;
    let nodes = node_ids(&client).await?;
    assert!(
        nodes.is_empty(),
        "no agent may register, yet the broker lists {nodes:?}\n{}",
        broker.proc.log_tail()
    );
    for agent in [&foreign_agent, &impostor] {
        assert!(
            !log(agent).contains("connected to broker"),
            "{} reached Welcome\n{}",
            agent.node_id,
            log(agent)
        );
    }
    let broker_log = broker.proc.log_tail();
    assert!(
        broker_log.contains("refused an agent stream"),
        "the broker logs each refusal\n{broker_log}"
    );
    Ok(())
}

#[tokio::test]
async fn the_right_certificate_registers_and_serves_a_session() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::init(&dir.path().join("pki"))?;
    let (broker, https) = tls_broker(dir.path(), &pki)?;
    let ca = pki.file("ca.pem");
    let flags = pki.node("gpu-1", &ca)?;
    let agent = agent(dir.path(), "gpu-1", &https, &flags)?;

    let client = client(&https, &pki).await?;
    eventually("gpu-1 registered", Duration::from_secs(30), || async {
        Ok(node_ids(&client)
            .await
            .ok()
            .filter(|ids| ids == &["gpu-1".to_owned()]))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}\n{}", broker.proc.log_tail(), log(&agent)))?;

    // A session on it, through the SDK over TLS.
    let worker = images::worker_binary().display().to_string();
    let session = client
        .create(images::worker_spec(worker.clone()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", log(&agent)))?;
    assert_eq!(session.info().node_id, "gpu-1");
    let out = session
        .exec([worker.as_str(), "echo", "over", "tls"])
        .await?;
    assert_eq!(out.stdout_text(), "over tls\n");
    session.delete().await?;

    // A client may present a certificate too (the handshake verifies it).
    let with_identity = Client::builder(&https)
        .ca_pem(std::fs::read(&ca)?)
        .identity_pem(
            std::fs::read(pki.file("node-gpu-1.pem"))?,
            std::fs::read(pki.file("node-gpu-1-key.pem"))?,
        )
        .connect()
        .await?;
    assert_eq!(node_ids(&with_identity).await?, ["gpu-1"]);

    // The CLI over TLS.
    let listed = hearth(&["--broker", &https, "--ca", &ca, "nodes", "ls"])?;
    assert!(listed.contains("gpu-1"), "{listed}");

    // A plaintext client gets nothing from the TLS port.
    let plain = api::admin(&broker.url)
        .list_nodes(ListNodesRequest::default())
        .await;
    assert!(plain.is_err(), "a plaintext call must fail: {plain:?}");
    // Nor does a TLS client that does not trust the broker's CA.
    let other = Pki::init(&dir.path().join("other"))?;
    let untrusting = Client::builder(&https)
        .ca_pem(std::fs::read(other.file("ca.pem"))?)
        .connect()
        .await;
    assert!(
        untrusting.is_err(),
        "a client trusting another CA connected"
    );

    // With a certificate and no --node-id, the agent takes its node id from it.
    let printed = Command::new(binary("hearth-agent")?)
        .args(["--print-config", "--simulate-gpus", "1", "--broker", &https])
        .args(&flags)
        .env_remove("HEARTH_NODE_ID")
        .output()?;
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains("node_id = \"gpu-1\""),
        "node id from the certificate:\n{printed}"
    );
    // A key that does not belong to the certificate stops the agent, naming tls.key.
    let mismatched = Command::new(binary("hearth-agent")?)
        .args(["--print-config", "--simulate-gpus", "1", "--broker", &https])
        .args(["--tls-ca", &ca, "--tls-cert", &pki.file("node-gpu-1.pem")])
        .args(["--tls-key", &pki.file("broker-key.pem")])
        .output()?;
    let stderr = String::from_utf8_lossy(&mismatched.stderr);
    assert!(!mismatched.status.success(), "{stderr}");
    assert!(
        stderr.contains("tls.key") && stderr.contains("does not belong"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn plaintext_beyond_loopback_needs_insecure_listen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let broker = |extra: &[&str], log: &str| -> anyhow::Result<std::process::Child> {
        let store = dir
            .path()
            .join(format!("{log}-store"))
            .display()
            .to_string();
        let log = std::fs::File::create(dir.path().join(log))?;
        Ok(Command::new(binary("hearth-broker")?)
            .args([
                "--grpc-addr",
                &format!("0.0.0.0:{}", free_port()),
                "--admin-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--store-path",
                &store,
            ])
            .args(extra)
            .env_remove("HEARTH_INSECURE_LISTEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?)
    };

    let mut refused = broker(&[], "refused.log")?;
    let status = eventually("the broker to exit", Duration::from_secs(30), || {
        let status = refused.try_wait();
        async move { Ok(status?) }
    })
    .await;
    let _ = refused.kill();
    let text = std::fs::read_to_string(dir.path().join("refused.log"))?;
    let status = status.map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
    assert!(!status.success(), "exit status {status}");
    assert!(text.contains("--insecure-listen"), "{text}");
    assert!(text.contains("grpc_addr"), "{text}");

    let mut allowed = broker(&["--insecure-listen"], "allowed.log")?;
    let warned = eventually("the INSECURE warning", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(dir.path().join("allowed.log"))?;
        Ok(text.contains("INSECURE").then_some(()))
    })
    .await;
    let running = allowed.try_wait()?.is_none();
    let _ = allowed.kill();
    let _ = allowed.wait();
    let text = std::fs::read_to_string(dir.path().join("allowed.log"))?;
    warned.map_err(|e| anyhow::anyhow!("{e}\n{text}"))?;
    assert!(
        running,
        "the broker exited despite --insecure-listen\n{text}"
    );
    Ok(())
}
