import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from hearth.v1 import sessions_pb2 as _sessions_pb2
from hearth.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgentMessage(_message.Message):
    __slots__ = ("hello", "telemetry", "session_status", "exec_output", "invoke_chunk", "reply", "pull_progress", "node_images")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    SESSION_STATUS_FIELD_NUMBER: _ClassVar[int]
    EXEC_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    INVOKE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    PULL_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    telemetry: _types_pb2.NodeTelemetry
    session_status: SessionStatus
    exec_output: ExecOutput
    invoke_chunk: InvokeChunk
    reply: Reply
    pull_progress: PullProgress
    node_images: NodeImages
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., telemetry: _Optional[_Union[_types_pb2.NodeTelemetry, _Mapping]] = ..., session_status: _Optional[_Union[SessionStatus, _Mapping]] = ..., exec_output: _Optional[_Union[ExecOutput, _Mapping]] = ..., invoke_chunk: _Optional[_Union[InvokeChunk, _Mapping]] = ..., reply: _Optional[_Union[Reply, _Mapping]] = ..., pull_progress: _Optional[_Union[PullProgress, _Mapping]] = ..., node_images: _Optional[_Union[NodeImages, _Mapping]] = ...) -> None: ...

class NodeImages(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[str]] = ...) -> None: ...

class PullProgress(_message.Message):
    __slots__ = ("command_id", "session_id", "generation", "image", "done_bytes", "total_bytes", "layers_done", "layers_total", "done")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DONE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_DONE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    session_id: str
    generation: int
    image: str
    done_bytes: int
    total_bytes: int
    layers_done: int
    layers_total: int
    done: bool
    def __init__(self, command_id: _Optional[str] = ..., session_id: _Optional[str] = ..., generation: _Optional[int] = ..., image: _Optional[str] = ..., done_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., layers_done: _Optional[int] = ..., layers_total: _Optional[int] = ..., done: _Optional[bool] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "incarnation", "version", "labels", "taints", "gpus", "gpu_source", "capacity", "runtime", "sessions", "highest_epoch", "images")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TAINTS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    HIGHEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    incarnation: str
    version: str
    labels: _containers.ScalarMap[str, str]
    taints: _containers.RepeatedScalarFieldContainer[str]
    gpus: _containers.RepeatedCompositeFieldContainer[_types_pb2.Gpu]
    gpu_source: _types_pb2.GpuSource
    capacity: _types_pb2.NodeCapacity
    runtime: str
    sessions: _containers.RepeatedCompositeFieldContainer[RunningSession]
    highest_epoch: int
    images: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., incarnation: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., taints: _Optional[_Iterable[str]] = ..., gpus: _Optional[_Iterable[_Union[_types_pb2.Gpu, _Mapping]]] = ..., gpu_source: _Optional[_Union[_types_pb2.GpuSource, str]] = ..., capacity: _Optional[_Union[_types_pb2.NodeCapacity, _Mapping]] = ..., runtime: _Optional[str] = ..., sessions: _Optional[_Iterable[_Union[RunningSession, _Mapping]]] = ..., highest_epoch: _Optional[int] = ..., images: _Optional[_Iterable[str]] = ...) -> None: ...

class RunningSession(_message.Message):
    __slots__ = ("session_id", "generation", "container_id", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    generation: int
    container_id: str
    state: _types_pb2.SessionState
    def __init__(self, session_id: _Optional[str] = ..., generation: _Optional[int] = ..., container_id: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.SessionState, str]] = ...) -> None: ...

class SessionStatus(_message.Message):
    __slots__ = ("session_id", "generation", "state", "reason", "container_id", "pull_ms", "warmup_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    PULL_MS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    generation: int
    state: _types_pb2.SessionState
    reason: str
    container_id: str
    pull_ms: int
    warmup_ms: int
    def __init__(self, session_id: _Optional[str] = ..., generation: _Optional[int] = ..., state: _Optional[_Union[_types_pb2.SessionState, str]] = ..., reason: _Optional[str] = ..., container_id: _Optional[str] = ..., pull_ms: _Optional[int] = ..., warmup_ms: _Optional[int] = ...) -> None: ...

class ExecOutput(_message.Message):
    __slots__ = ("turn_id", "response")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    response: _sessions_pb2.ExecResponse
    def __init__(self, turn_id: _Optional[str] = ..., response: _Optional[_Union[_sessions_pb2.ExecResponse, _Mapping]] = ...) -> None: ...

class InvokeChunk(_message.Message):
    __slots__ = ("turn_id", "response", "end")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    response: _sessions_pb2.InvokeResponse
    end: bool
    def __init__(self, turn_id: _Optional[str] = ..., response: _Optional[_Union[_sessions_pb2.InvokeResponse, _Mapping]] = ..., end: _Optional[bool] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("command_id", "ok", "code", "message", "container_id")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    ok: bool
    code: int
    message: str
    container_id: str
    def __init__(self, command_id: _Optional[str] = ..., ok: _Optional[bool] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., container_id: _Optional[str] = ...) -> None: ...

class BrokerMessage(_message.Message):
    __slots__ = ("welcome", "start_session", "stop_session", "pause_session", "resume_session", "exec", "invoke", "cancel_turn")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    START_SESSION_FIELD_NUMBER: _ClassVar[int]
    STOP_SESSION_FIELD_NUMBER: _ClassVar[int]
    PAUSE_SESSION_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    INVOKE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_TURN_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    start_session: StartSessionCommand
    stop_session: StopSessionCommand
    pause_session: PauseSessionCommand
    resume_session: ResumeSessionCommand
    exec: ExecCommand
    invoke: InvokeCommand
    cancel_turn: CancelTurn
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., start_session: _Optional[_Union[StartSessionCommand, _Mapping]] = ..., stop_session: _Optional[_Union[StopSessionCommand, _Mapping]] = ..., pause_session: _Optional[_Union[PauseSessionCommand, _Mapping]] = ..., resume_session: _Optional[_Union[ResumeSessionCommand, _Mapping]] = ..., exec: _Optional[_Union[ExecCommand, _Mapping]] = ..., invoke: _Optional[_Union[InvokeCommand, _Mapping]] = ..., cancel_turn: _Optional[_Union[CancelTurn, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("epoch", "broker_id", "telemetry_interval", "suspect_after", "cluster_id")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BROKER_ID_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_AFTER_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    broker_id: str
    telemetry_interval: _duration_pb2.Duration
    suspect_after: _duration_pb2.Duration
    cluster_id: str
    def __init__(self, epoch: _Optional[int] = ..., broker_id: _Optional[str] = ..., telemetry_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., suspect_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cluster_id: _Optional[str] = ...) -> None: ...

class CommandMeta(_message.Message):
    __slots__ = ("command_id", "epoch", "session_id", "generation")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    epoch: int
    session_id: str
    generation: int
    def __init__(self, command_id: _Optional[str] = ..., epoch: _Optional[int] = ..., session_id: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class StartSessionCommand(_message.Message):
    __slots__ = ("meta", "spec", "gpu_uuids", "tenant", "network", "registry_auth")
    META_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_AUTH_FIELD_NUMBER: _ClassVar[int]
    meta: CommandMeta
    spec: _types_pb2.SessionSpec
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    tenant: str
    network: SessionNetwork
    registry_auth: RegistryAuth
    def __init__(self, meta: _Optional[_Union[CommandMeta, _Mapping]] = ..., spec: _Optional[_Union[_types_pb2.SessionSpec, _Mapping]] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., tenant: _Optional[str] = ..., network: _Optional[_Union[SessionNetwork, _Mapping]] = ..., registry_auth: _Optional[_Union[RegistryAuth, _Mapping]] = ...) -> None: ...

class RegistryAuth(_message.Message):
    __slots__ = ("registry", "username", "password")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    registry: str
    username: str
    password: str
    def __init__(self, registry: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class SessionNetwork(_message.Message):
    __slots__ = ("egress", "intra_tenant")
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    INTRA_TENANT_FIELD_NUMBER: _ClassVar[int]
    egress: bool
    intra_tenant: bool
    def __init__(self, egress: _Optional[bool] = ..., intra_tenant: _Optional[bool] = ...) -> None: ...

class StopSessionCommand(_message.Message):
    __slots__ = ("meta", "grace")
    META_FIELD_NUMBER: _ClassVar[int]
    GRACE_FIELD_NUMBER: _ClassVar[int]
    meta: CommandMeta
    grace: _duration_pb2.Duration
    def __init__(self, meta: _Optional[_Union[CommandMeta, _Mapping]] = ..., grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class PauseSessionCommand(_message.Message):
    __slots__ = ("meta",)
    META_FIELD_NUMBER: _ClassVar[int]
    meta: CommandMeta
    def __init__(self, meta: _Optional[_Union[CommandMeta, _Mapping]] = ...) -> None: ...

class ResumeSessionCommand(_message.Message):
    __slots__ = ("meta",)
    META_FIELD_NUMBER: _ClassVar[int]
    meta: CommandMeta
    def __init__(self, meta: _Optional[_Union[CommandMeta, _Mapping]] = ...) -> None: ...

class ExecCommand(_message.Message):
    __slots__ = ("meta", "turn_id", "request")
    META_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    meta: CommandMeta
    turn_id: str
    request: _sessions_pb2.ExecRequest
    def __init__(self, meta: _Optional[_Union[CommandMeta, _Mapping]] = ..., turn_id: _Optional[str] = ..., request: _Optional[_Union[_sessions_pb2.ExecRequest, _Mapping]] = ...) -> None: ...

class InvokeCommand(_message.Message):
    __slots__ = ("meta", "turn_id", "request")
    META_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    meta: CommandMeta
    turn_id: str
    request: _sessions_pb2.InvokeRequest
    def __init__(self, meta: _Optional[_Union[CommandMeta, _Mapping]] = ..., turn_id: _Optional[str] = ..., request: _Optional[_Union[_sessions_pb2.InvokeRequest, _Mapping]] = ...) -> None: ...

class CancelTurn(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    def __init__(self, turn_id: _Optional[str] = ...) -> None: ...
