//! `--json`: the canonical proto3 JSON mapping, as grpcurl prints it (lowerCamelCase
//! fields, enum names, RFC 3339 timestamps, `"1.5s"` durations, 64-bit integers as
//! strings, base64 bytes, fields at their default value left out).
//!
//! The generated types carry no reflection, so a message is re-read as a
//! `prost_reflect::DynamicMessage` through the descriptors the SDK embeds, and that is what
//! serde writes.

use std::sync::LazyLock;

use hearth_sdk::proto::v1;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(v1::FILE_DESCRIPTOR_SET)
        .expect("the SDK's embedded descriptor set decodes")
});

/// A generated message and its full protobuf name.
pub trait ProtoMessage: prost::Message + Sized {
    /// Such as `hearth.v1.Session`.
    const NAME: &'static str;
}

macro_rules! proto_messages {
    ($($name:ident),* $(,)?) => {
        $(impl ProtoMessage for v1::$name {
            const NAME: &'static str = concat!("hearth.v1.", stringify!($name));
        })*
    };
}

proto_messages!(
    Session,
    SessionEvent,
    ListSessionsResponse,
    KeepAliveResponse,
    ExecResponse,
    InvokeResponse,
    Node,
    ListNodesResponse,
    Template,
    ListTemplatesResponse,
    DeleteTemplateResponse,
    CreateTokenResponse,
    ListTokensResponse,
    TokenInfo,
    Event,
    RegistryCredential,
    ListRegistryCredentialsResponse,
    DeleteRegistryCredentialResponse,
);

/// The message as a JSON value.
pub fn value<M: ProtoMessage>(message: &M) -> serde_json::Value {
    let descriptor = POOL
        .get_message_by_name(M::NAME)
        .unwrap_or_else(|| panic!("{} is in the SDK's descriptor set", M::NAME));
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .unwrap_or_else(|e| panic!("{} re-decodes from its own encoding: {e}", M::NAME));
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .unwrap_or_else(|e| panic!("{} serializes to JSON: {e}", M::NAME))
}

/// Indented JSON, for a command's one result.
pub fn pretty<M: ProtoMessage>(message: &M) -> String {
    serde_json::to_string_pretty(&value(message)).expect("a JSON value prints")
}

/// One line of JSON, for each item of a stream.
pub fn line<M: ProtoMessage>(message: &M) -> String {
    value(message).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sdk::proto::v1::{
        ExecExit, ExecResponse, GpuRequest, SessionSpec, SessionState, exec_response,
    };

    #[test]
    fn sessions_use_the_canonical_mapping() {
        let session = v1::Session {
            id: "01JAAAAAAAAAAAAAAAAAAAAAAA".into(),
            state: SessionState::Ready.into(),
            node_id: "gpu-1".into(),
            turns_served: 3,
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            spec: Some(SessionSpec {
                image: "worker".into(),
                gpus: Some(GpuRequest {
                    count: 1,
                    min_memory_bytes: 40 << 30,
                    ..Default::default()
                }),
                idle_timeout: Some(prost_types::Duration {
                    seconds: 90,
                    nanos: 500_000_000,
                }),
                ..Default::default()
            }),
            labels: [("team".to_owned(), "a".to_owned())].into(),
            ..Default::default()
        };
        let v = value(&session);
        assert_eq!(v["id"], "01JAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(v["state"], "SESSION_STATE_READY");
        assert_eq!(v["nodeId"], "gpu-1");
        assert_eq!(v["turnsServed"], "3", "uint64 is a string in proto3 JSON");
        assert_eq!(v["createdAt"], "2023-11-14T22:13:20Z");
        assert_eq!(v["spec"]["gpus"]["minMemoryBytes"], "42949672960");
        assert_eq!(v["spec"]["idleTimeout"], "90.500s");
        assert_eq!(v["labels"]["team"], "a");
        assert!(v.get("tenant").is_none(), "defaults are left out");
        assert!(pretty(&session).contains("\n  \"id\""));
    }

    #[test]
    fn stream_items_are_single_lines_with_base64_bytes() {
        let out = ExecResponse {
            event: Some(exec_response::Event::Stdout(b"hi\n".to_vec())),
        };
        assert_eq!(line(&out), r#"{"stdout":"aGkK"}"#);
        let exit = ExecResponse {
            event: Some(exec_response::Event::Exit(ExecExit {
                code: 3,
                ..Default::default()
            })),
        };
        assert_eq!(line(&exit), r#"{"exit":{"code":3}}"#);
    }
}
