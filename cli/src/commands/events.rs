//! `hearth events`: cluster events as they happen, until Ctrl-C.

use std::process::ExitCode;

use futures::StreamExt as _;
use hearth_sdk::proto::v1::{Event, WatchEventsRequest};

use super::{Ctx, stderr};
use crate::{
    args::EventsArgs,
    error::{Error, Result, Subject},
    table,
};

/// Streams events until the broker ends the stream or the user stops the CLI.
pub async fn run(ctx: &Ctx, args: EventsArgs) -> Result<ExitCode> {
    let request = WatchEventsRequest { kinds: args.kinds };
    let mut events = ctx
        .call("Admin/WatchEvents", Subject::None, |c| {
            let request = request.clone();
            async move { c.admin().watch_events(request).await }
        })
        .await?;
    // On stderr in every mode: it tells a person (and a script) that the stream is open.
    stderr(b"watching cluster events; Ctrl-C stops\n");
    while let Some(event) = events.next().await {
        let event = event.map_err(|s| ctx.status("Admin/WatchEvents", s, Subject::None))?;
        ctx.item(&event, || event_line(&event))?;
    }
    Err(Error::Other(
        "the broker ended the event stream (it shut down or lost leadership); \
         run `hearth events` again to follow the new leader"
            .to_owned(),
    ))
}

/// `TIME  KIND  node=X session=Y  message`.
pub fn event_line(event: &Event) -> String {
    let time = table::time_of(event.time.as_ref())
        .map(|t| humantime::format_rfc3339_millis(t).to_string())
        .unwrap_or_else(|| "-".to_owned());
    let mut about = Vec::new();
    if !event.node_id.is_empty() {
        about.push(format!("node={}", event.node_id));
    }
    if !event.session_id.is_empty() {
        about.push(format!("session={}", event.session_id));
    }
    let mut parts = vec![time, format!("{:<18}", event.kind)];
    parts.extend([about.join(" "), event.message.clone()]);
    parts.retain(|p| !p.trim().is_empty());
    format!("{}\n", parts.join("  ").trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_what_the_event_is_about() {
        let event = Event {
            seq: 4,
            time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 250_000_000,
            }),
            kind: "node.cordoned".into(),
            node_id: "gpu-1".into(),
            session_id: String::new(),
            message: "cordoned: no new placements".into(),
        };
        assert_eq!(
            event_line(&event),
            "1970-01-01T00:00:00.250Z  node.cordoned       node=gpu-1  cordoned: no new placements\n"
        );
    }
}
