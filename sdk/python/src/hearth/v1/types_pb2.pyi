import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_PENDING: _ClassVar[SessionState]
    SESSION_STATE_PLACED: _ClassVar[SessionState]
    SESSION_STATE_STARTING: _ClassVar[SessionState]
    SESSION_STATE_READY: _ClassVar[SessionState]
    SESSION_STATE_PAUSED: _ClassVar[SessionState]
    SESSION_STATE_STOPPING: _ClassVar[SessionState]
    SESSION_STATE_STOPPED: _ClassVar[SessionState]
    SESSION_STATE_FAILED: _ClassVar[SessionState]
    SESSION_STATE_LOST: _ClassVar[SessionState]

class IdleAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDLE_ACTION_UNSPECIFIED: _ClassVar[IdleAction]
    IDLE_ACTION_PAUSE: _ClassVar[IdleAction]
    IDLE_ACTION_STOP: _ClassVar[IdleAction]
    IDLE_ACTION_KEEP: _ClassVar[IdleAction]

class PullPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PULL_POLICY_UNSPECIFIED: _ClassVar[PullPolicy]
    PULL_POLICY_IF_NOT_PRESENT: _ClassVar[PullPolicy]
    PULL_POLICY_ALWAYS: _ClassVar[PullPolicy]
    PULL_POLICY_NEVER: _ClassVar[PullPolicy]

class PlacementStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PLACEMENT_STRATEGY_UNSPECIFIED: _ClassVar[PlacementStrategy]
    PLACEMENT_STRATEGY_BINPACK: _ClassVar[PlacementStrategy]
    PLACEMENT_STRATEGY_SPREAD: _ClassVar[PlacementStrategy]

class Egress(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EGRESS_UNSPECIFIED: _ClassVar[Egress]
    EGRESS_ALLOW: _ClassVar[Egress]
    EGRESS_DENY: _ClassVar[Egress]

class RestartMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTART_MODE_UNSPECIFIED: _ClassVar[RestartMode]
    RESTART_MODE_NEVER: _ClassVar[RestartMode]
    RESTART_MODE_ON_FAILURE: _ClassVar[RestartMode]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_SUSPECT: _ClassVar[NodeState]
    NODE_STATE_DISCONNECTED: _ClassVar[NodeState]
    NODE_STATE_DOWN: _ClassVar[NodeState]

class GpuSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GPU_SOURCE_UNSPECIFIED: _ClassVar[GpuSource]
    GPU_SOURCE_NVML: _ClassVar[GpuSource]
    GPU_SOURCE_SIMULATED: _ClassVar[GpuSource]
    GPU_SOURCE_NONE: _ClassVar[GpuSource]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_PENDING: SessionState
SESSION_STATE_PLACED: SessionState
SESSION_STATE_STARTING: SessionState
SESSION_STATE_READY: SessionState
SESSION_STATE_PAUSED: SessionState
SESSION_STATE_STOPPING: SessionState
SESSION_STATE_STOPPED: SessionState
SESSION_STATE_FAILED: SessionState
SESSION_STATE_LOST: SessionState
IDLE_ACTION_UNSPECIFIED: IdleAction
IDLE_ACTION_PAUSE: IdleAction
IDLE_ACTION_STOP: IdleAction
IDLE_ACTION_KEEP: IdleAction
PULL_POLICY_UNSPECIFIED: PullPolicy
PULL_POLICY_IF_NOT_PRESENT: PullPolicy
PULL_POLICY_ALWAYS: PullPolicy
PULL_POLICY_NEVER: PullPolicy
PLACEMENT_STRATEGY_UNSPECIFIED: PlacementStrategy
PLACEMENT_STRATEGY_BINPACK: PlacementStrategy
PLACEMENT_STRATEGY_SPREAD: PlacementStrategy
EGRESS_UNSPECIFIED: Egress
EGRESS_ALLOW: Egress
EGRESS_DENY: Egress
RESTART_MODE_UNSPECIFIED: RestartMode
RESTART_MODE_NEVER: RestartMode
RESTART_MODE_ON_FAILURE: RestartMode
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_SUSPECT: NodeState
NODE_STATE_DISCONNECTED: NodeState
NODE_STATE_DOWN: NodeState
GPU_SOURCE_UNSPECIFIED: GpuSource
GPU_SOURCE_NVML: GpuSource
GPU_SOURCE_SIMULATED: GpuSource
GPU_SOURCE_NONE: GpuSource

class GpuRequest(_message.Message):
    __slots__ = ("count", "model", "min_memory_bytes")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    count: int
    model: str
    min_memory_bytes: int
    def __init__(self, count: _Optional[int] = ..., model: _Optional[str] = ..., min_memory_bytes: _Optional[int] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "pids_limit")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    pids_limit: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., pids_limit: _Optional[int] = ...) -> None: ...

class PortSpec(_message.Message):
    __slots__ = ("port", "name")
    PORT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    port: int
    name: str
    def __init__(self, port: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class ReadinessProbe(_message.Message):
    __slots__ = ("tcp_port", "http", "exec", "timeout", "period")
    TCP_PORT_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    EXEC_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    tcp_port: int
    http: HttpProbe
    exec: ExecProbe
    timeout: _duration_pb2.Duration
    period: _duration_pb2.Duration
    def __init__(self, tcp_port: _Optional[int] = ..., http: _Optional[_Union[HttpProbe, _Mapping]] = ..., exec: _Optional[_Union[ExecProbe, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class HttpProbe(_message.Message):
    __slots__ = ("port", "path")
    PORT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    port: int
    path: str
    def __init__(self, port: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class ExecProbe(_message.Message):
    __slots__ = ("argv",)
    ARGV_FIELD_NUMBER: _ClassVar[int]
    argv: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, argv: _Optional[_Iterable[str]] = ...) -> None: ...

class PlacementSpec(_message.Message):
    __slots__ = ("strategy", "node_selector", "tolerations")
    class NodeSelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    NODE_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TOLERATIONS_FIELD_NUMBER: _ClassVar[int]
    strategy: PlacementStrategy
    node_selector: _containers.ScalarMap[str, str]
    tolerations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, strategy: _Optional[_Union[PlacementStrategy, str]] = ..., node_selector: _Optional[_Mapping[str, str]] = ..., tolerations: _Optional[_Iterable[str]] = ...) -> None: ...

class SecuritySpec(_message.Message):
    __slots__ = ("add_capabilities",)
    ADD_CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    add_capabilities: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, add_capabilities: _Optional[_Iterable[str]] = ...) -> None: ...

class NetworkSpec(_message.Message):
    __slots__ = ("egress",)
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    egress: Egress
    def __init__(self, egress: _Optional[_Union[Egress, str]] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("mode", "max_restarts")
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    mode: RestartMode
    max_restarts: int
    def __init__(self, mode: _Optional[_Union[RestartMode, str]] = ..., max_restarts: _Optional[int] = ...) -> None: ...

class SessionSpec(_message.Message):
    __slots__ = ("image", "command", "env", "gpus", "resources", "ports", "readiness", "idle_timeout", "idle_action", "max_lifetime", "placement", "security", "network", "restart", "pull_policy")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    READINESS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    IDLE_ACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_LIFETIME_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    SECURITY_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    PULL_POLICY_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    gpus: GpuRequest
    resources: Resources
    ports: _containers.RepeatedCompositeFieldContainer[PortSpec]
    readiness: ReadinessProbe
    idle_timeout: _duration_pb2.Duration
    idle_action: IdleAction
    max_lifetime: _duration_pb2.Duration
    placement: PlacementSpec
    security: SecuritySpec
    network: NetworkSpec
    restart: RestartPolicy
    pull_policy: PullPolicy
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., gpus: _Optional[_Union[GpuRequest, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., ports: _Optional[_Iterable[_Union[PortSpec, _Mapping]]] = ..., readiness: _Optional[_Union[ReadinessProbe, _Mapping]] = ..., idle_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., idle_action: _Optional[_Union[IdleAction, str]] = ..., max_lifetime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., placement: _Optional[_Union[PlacementSpec, _Mapping]] = ..., security: _Optional[_Union[SecuritySpec, _Mapping]] = ..., network: _Optional[_Union[NetworkSpec, _Mapping]] = ..., restart: _Optional[_Union[RestartPolicy, _Mapping]] = ..., pull_policy: _Optional[_Union[PullPolicy, str]] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("id", "tenant", "spec", "labels", "template", "state", "state_reason", "node_id", "gpu_uuids", "container_id", "generation", "created_at", "ready_at", "last_activity_at", "expires_at", "max_deadline", "turns_served", "cold_starts", "restarts", "pull_ms", "warmup_ms")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    READY_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TURNS_SERVED_FIELD_NUMBER: _ClassVar[int]
    COLD_STARTS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    PULL_MS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant: str
    spec: SessionSpec
    labels: _containers.ScalarMap[str, str]
    template: str
    state: SessionState
    state_reason: str
    node_id: str
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    container_id: str
    generation: int
    created_at: _timestamp_pb2.Timestamp
    ready_at: _timestamp_pb2.Timestamp
    last_activity_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    max_deadline: _timestamp_pb2.Timestamp
    turns_served: int
    cold_starts: int
    restarts: int
    pull_ms: int
    warmup_ms: int
    def __init__(self, id: _Optional[str] = ..., tenant: _Optional[str] = ..., spec: _Optional[_Union[SessionSpec, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., template: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., state_reason: _Optional[str] = ..., node_id: _Optional[str] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., container_id: _Optional[str] = ..., generation: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ready_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_activity_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., turns_served: _Optional[int] = ..., cold_starts: _Optional[int] = ..., restarts: _Optional[int] = ..., pull_ms: _Optional[int] = ..., warmup_ms: _Optional[int] = ...) -> None: ...

class SessionEvent(_message.Message):
    __slots__ = ("session_id", "time", "state", "message")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    time: _timestamp_pb2.Timestamp
    state: SessionState
    message: str
    def __init__(self, session_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[SessionState, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("uuid", "index", "name", "memory_total_bytes", "simulated")
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    index: int
    name: str
    memory_total_bytes: int
    simulated: bool
    def __init__(self, uuid: _Optional[str] = ..., index: _Optional[int] = ..., name: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., simulated: _Optional[bool] = ...) -> None: ...

class GpuProcess(_message.Message):
    __slots__ = ("pid", "used_memory_bytes", "session_id")
    PID_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    used_memory_bytes: int
    session_id: str
    def __init__(self, pid: _Optional[int] = ..., used_memory_bytes: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class XidEvent(_message.Message):
    __slots__ = ("code", "time")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    code: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, code: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GpuTelemetry(_message.Message):
    __slots__ = ("uuid", "utilization_gpu_percent", "utilization_memory_percent", "memory_used_bytes", "memory_total_bytes", "temperature_celsius", "power_watts", "power_limit_watts", "sm_clock_mhz", "ecc_corrected", "ecc_uncorrected", "xid_events", "processes", "simulated")
    UUID_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_GPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_MEMORY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    POWER_WATTS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_WATTS_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    ECC_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    ECC_UNCORRECTED_FIELD_NUMBER: _ClassVar[int]
    XID_EVENTS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    utilization_gpu_percent: int
    utilization_memory_percent: int
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_celsius: int
    power_watts: float
    power_limit_watts: float
    sm_clock_mhz: int
    ecc_corrected: int
    ecc_uncorrected: int
    xid_events: _containers.RepeatedCompositeFieldContainer[XidEvent]
    processes: _containers.RepeatedCompositeFieldContainer[GpuProcess]
    simulated: bool
    def __init__(self, uuid: _Optional[str] = ..., utilization_gpu_percent: _Optional[int] = ..., utilization_memory_percent: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., temperature_celsius: _Optional[int] = ..., power_watts: _Optional[float] = ..., power_limit_watts: _Optional[float] = ..., sm_clock_mhz: _Optional[int] = ..., ecc_corrected: _Optional[int] = ..., ecc_uncorrected: _Optional[int] = ..., xid_events: _Optional[_Iterable[_Union[XidEvent, _Mapping]]] = ..., processes: _Optional[_Iterable[_Union[GpuProcess, _Mapping]]] = ..., simulated: _Optional[bool] = ...) -> None: ...

class NodeTelemetry(_message.Message):
    __slots__ = ("sampled_at", "gpus", "busy_sessions")
    SAMPLED_AT_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    BUSY_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sampled_at: _timestamp_pb2.Timestamp
    gpus: _containers.RepeatedCompositeFieldContainer[GpuTelemetry]
    busy_sessions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sampled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gpus: _Optional[_Iterable[_Union[GpuTelemetry, _Mapping]]] = ..., busy_sessions: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeCapacity(_message.Message):
    __slots__ = ("cpu_cores", "memory_bytes")
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu_cores: int
    memory_bytes: int
    def __init__(self, cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "state", "schedulable", "draining", "labels", "taints", "gpus", "gpu_source", "capacity", "agent_version", "incarnation", "runtime", "connected_at", "last_seen_at", "telemetry", "telemetry_received_at", "session_ids", "state_changed_at", "drain_deadline", "excluded_gpus", "images")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULABLE_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TAINTS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_SOURCE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    DRAIN_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_GPUS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: NodeState
    schedulable: bool
    draining: bool
    labels: _containers.ScalarMap[str, str]
    taints: _containers.RepeatedScalarFieldContainer[str]
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    gpu_source: GpuSource
    capacity: NodeCapacity
    agent_version: str
    incarnation: str
    runtime: str
    connected_at: _timestamp_pb2.Timestamp
    last_seen_at: _timestamp_pb2.Timestamp
    telemetry: NodeTelemetry
    telemetry_received_at: _timestamp_pb2.Timestamp
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    state_changed_at: _timestamp_pb2.Timestamp
    drain_deadline: _timestamp_pb2.Timestamp
    excluded_gpus: _containers.RepeatedCompositeFieldContainer[GpuExclusion]
    images: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., schedulable: _Optional[bool] = ..., draining: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ..., taints: _Optional[_Iterable[str]] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., gpu_source: _Optional[_Union[GpuSource, str]] = ..., capacity: _Optional[_Union[NodeCapacity, _Mapping]] = ..., agent_version: _Optional[str] = ..., incarnation: _Optional[str] = ..., runtime: _Optional[str] = ..., connected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., telemetry: _Optional[_Union[NodeTelemetry, _Mapping]] = ..., telemetry_received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_ids: _Optional[_Iterable[str]] = ..., state_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., drain_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., excluded_gpus: _Optional[_Iterable[_Union[GpuExclusion, _Mapping]]] = ..., images: _Optional[_Iterable[str]] = ...) -> None: ...

class GpuExclusion(_message.Message):
    __slots__ = ("uuid", "xid", "at")
    UUID_FIELD_NUMBER: _ClassVar[int]
    XID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    xid: int
    at: _timestamp_pb2.Timestamp
    def __init__(self, uuid: _Optional[str] = ..., xid: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "time", "kind", "node_id", "session_id", "message")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    kind: str
    node_id: str
    session_id: str
    message: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., node_id: _Optional[str] = ..., session_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
