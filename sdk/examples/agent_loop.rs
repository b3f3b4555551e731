//! An agent loop against one warm session: open it once, then run tool-call turns
//! (Exec) and model calls (Invoke) that all reach the same container, with the session
//! kept alive in the background between them.
//!
//! ```sh
//! scripts/dev.sh &                      # a broker and an agent on this machine
//! scripts/build-test-image.sh           # the test worker image, hearth-test-worker:latest
//! cargo run -p hearth-sdk --example agent_loop -- http://127.0.0.1:7700 hearth-test-worker:latest
//! ```
//!
//! With the process runtime, pass the worker binary's path as the image.

use std::time::Duration;

use hearth_sdk::{
    Client,
    proto::v1::{PortSpec, ReadinessProbe, SessionSpec, readiness_probe},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let broker = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7700".into());
    let image = args
        .next()
        .unwrap_or_else(|| "hearth-test-worker:latest".into());
    // The worker's tool mode: /worker inside its image, or the binary itself as a process.
    let tool = if image.starts_with('/') {
        image.clone()
    } else {
        "/worker".to_owned()
    };

    let client = Client::connect(&broker).await?;
    let session = client
        .create(SessionSpec {
            image,
            ports: vec![PortSpec {
                port: 8080,
                name: "http".into(),
            }],
            readiness: Some(ReadinessProbe {
                check: Some(readiness_probe::Check::TcpPort(8080)),
                ..Default::default()
            }),
            idle_timeout: Some(hearth_sdk::time::duration(Duration::from_secs(60))),
            ..Default::default()
        })
        .label("example", "agent-loop")
        .await?;
    println!(
        "session {} READY on {} (cold starts: {})",
        session.id(),
        session.info().node_id,
        session.info().cold_starts
    );

    for turn in 1..=3 {
        // A model call: the worker's counter lives in its memory, so it only grows if
        // every turn reaches the same warm process.
        let counter = session.invoke(8080, "/incr").method("POST").await?;
        // A tool call inside the same session.
        let tool_out = session
            .exec([tool.as_str(), "echo", &format!("tool call {turn}")])
            .await?;
        println!(
            "turn {turn}: counter={} tool said {:?} (exit {})",
            counter.text().trim(),
            tool_out.stdout_text().trim(),
            tool_out.code
        );
        // The agent "thinks" here; the handle's keep-alive keeps the session warm.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let deadline = session.keep_alive().await?;
    let left = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    println!("kept alive: idle deadline in {}s", left.as_secs());
    let done = session.delete().await?;
    println!("deleted: {}", done.state().as_str_name());
    Ok(())
}
