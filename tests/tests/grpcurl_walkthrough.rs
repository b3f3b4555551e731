//! Runs the README's grpcurl walkthrough as written, in one shell (the session id one
//! command keeps is used by the next), with the real grpcurl binary against a live
//! broker and an agent on Docker, and checks each command's output. Only the address is
//! changed (tests never share fixed ports).

use std::{process::Command, time::Duration};

use hearth_sdk::proto::v1::NodeState;
use hearth_tests::{
    api, eventually, images,
    process::{Agent, Broker},
    readme::{self, grpcurl_available},
};

/// What each walkthrough command must print, keyed by a fragment of the command.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        " list",
        &[
            "hearth.v1.Sessions",
            "hearth.v1.Templates",
            "hearth.v1.Admin",
            "hearth.v1.NodeAgent",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ],
    ),
    (
        "describe hearth.v1.Admin",
        &["service Admin", "rpc ListNodes", "// Lists every node"],
    ),
    (
        "Admin/ListNodes",
        &[
            "\"id\": \"sim-node\"",
            "GPU_SOURCE_SIMULATED",
            "\"simulated\": true",
            "\"telemetry\"",
            "NODE_STATE_READY",
        ],
    ),
    (
        "Admin/GetClusterInfo",
        &[
            "\"isLeader\": true",
            "\"store\": \"embedded\"",
            "\"nodesReady\": 1",
        ],
    ),
    ("Admin/CordonNode", &["\"id\": \"sim-node\""]),
    ("Admin/UncordonNode", &["\"schedulable\": true"]),
    ("Health/Check", &["SERVING"]),
    ("Sessions/CreateSession", &["session 0"]),
    (
        "Sessions/Exec",
        // "hello\n" in base64, then the exit status.
        &["\"stdout\": \"aGVsbG8K\"", "\"exit\""],
    ),
    (
        "Sessions/Invoke",
        // The status, then the body "1" in base64.
        &["\"status\": 200", "\"body\": \"MQ==\""],
    ),
    (
        "Sessions/GetSession",
        &[
            "SESSION_STATE_READY",
            "\"nodeId\": \"sim-node\"",
            "\"turnsServed\": \"2\"",
            "\"coldStarts\": 1",
        ],
    ),
    ("Sessions/DeleteSession", &["SESSION_STATE_STOPPED"]),
];

fn walkthrough() -> Vec<String> {
    readme::section("walkthrough")
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("grpcurl ") || l.starts_with("ID=$(grpcurl "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn readme_grpcurl_walkthrough_runs_as_written() -> anyhow::Result<()> {
    let commands = walkthrough();
    assert!(
        commands.len() >= 10,
        "the walkthrough lost its commands: {commands:?}"
    );
    if !grpcurl_available() || !images::docker_or_skip() {
        return Ok(());
    }
    images::worker_image()?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    let _agent = Agent::spawn_docker(dir.path(), "sim-node", &[&broker.url], "2")?;
    eventually(
        "sim-node READY with telemetry",
        Duration::from_secs(20),
        || async {
            Ok(api::node(&broker.url, "sim-node")
                .await
                .ok()
                .filter(|n| n.state() == NodeState::Ready && n.telemetry.is_some()))
        },
    )
    .await?;

    // One shell for the whole walkthrough, as a reader would paste it, with a marker
    // before each command so its output can be told apart.
    let address = broker.url.trim_start_matches("http://");
    let mut script = String::new();
    for (i, command) in commands.iter().enumerate() {
        let runnable = command.replace("127.0.0.1:7700", address);
        script += &format!("echo '@@@ {i}'\n{runnable} || echo \"@@@ failed $?\"\n");
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let sections: Vec<&str> = stdout.split("@@@ ").skip(1).collect();
    assert_eq!(
        sections.len(),
        commands.len(),
        "the walkthrough did not run through:\n{stdout}\n{stderr}"
    );
    for (command, section) in commands.iter().zip(sections) {
        let printed = section.split_once('\n').map_or("", |(_, rest)| rest);
        assert!(
            !printed.contains("@@@ failed") && !section.starts_with("failed"),
            "{command}\nfailed:\n{printed}\n{stderr}"
        );
        let expected = EXPECTED
            .iter()
            .find(|(fragment, _)| command.contains(fragment))
            .map(|(_, e)| *e)
            .unwrap_or_else(|| panic!("no expectation for README command {command:?}: add one"));
        for want in expected {
            assert!(
                printed.contains(want),
                "{command}\nprinted:\n{printed}\nwithout {want:?}\n{stderr}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn bad_input_through_grpcurl_names_the_field() -> anyhow::Result<()> {
    if !grpcurl_available() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store").display().to_string();
    let broker = Broker::spawn(dir.path(), "broker", &["--store-path", &store])?;
    eventually("broker leads", Duration::from_secs(20), || async {
        Ok(api::cluster_info(&broker.url)
            .await
            .ok()
            .filter(|i| i.is_leader))
    })
    .await?;
    let address = broker.url.trim_start_matches("http://");
    let cases = [
        (
            "hearth.v1.Admin/GetNode",
            r#"{"id": "a/b"}"#,
            "InvalidArgument",
            "invalid id",
        ),
        (
            "hearth.v1.Admin/GetNode",
            r#"{"id": "nope"}"#,
            "NotFound",
            "node \"nope\" not found",
        ),
        (
            "hearth.v1.Admin/CordonNode",
            r#"{}"#,
            "InvalidArgument",
            "invalid id: must not be empty",
        ),
        (
            "hearth.v1.Admin/ListNodes",
            r#"{"states": [42]}"#,
            "InvalidArgument",
            "states[0]",
        ),
        (
            "hearth.v1.Sessions/CreateSession",
            r#"{}"#,
            "InvalidArgument",
            "invalid spec: is required",
        ),
        (
            "hearth.v1.Sessions/CreateSession",
            r#"{"spec": {"image": "x", "gpus": {"count": 99}}}"#,
            "InvalidArgument",
            "invalid spec.gpus.count",
        ),
        (
            "hearth.v1.Sessions/GetSession",
            r#"{"id": "nope"}"#,
            "InvalidArgument",
            "invalid id",
        ),
        (
            "hearth.v1.Sessions/GetSession",
            r#"{"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}"#,
            "NotFound",
            "not found",
        ),
        (
            "hearth.v1.Templates/CreateTemplate",
            r#"{"template": {"name": "Not_Valid"}}"#,
            "InvalidArgument",
            "invalid template.name",
        ),
        (
            "hearth.v1.Templates/CreateTemplate",
            r#"{"template": {"name": "no-image", "spec": {}}}"#,
            "InvalidArgument",
            "invalid template.spec.image",
        ),
        (
            "hearth.v1.Templates/GetTemplate",
            r#"{"name": "nope"}"#,
            "NotFound",
            "template \"nope\" not found",
        ),
    ];
    for (method, body, code, message) in cases {
        let out = Command::new("grpcurl")
            .args(["-plaintext", "-d", body, address, method])
            .output()?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{method} {body} should fail: {text}");
        assert!(
            text.contains(&format!("Code: {code}")),
            "{method} {body}: {text}"
        );
        assert!(text.contains(message), "{method} {body}: {text}");
    }
    Ok(())
}
