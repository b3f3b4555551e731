"""Building a ``SessionSpec`` without spelling out nested protobuf messages."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping, Optional, Tuple, Union

from google.protobuf import duration_pb2, timestamp_pb2

from hearth.v1 import types_pb2

__all__ = ["Seconds", "session_spec", "duration", "seconds", "timestamp"]

#: A length of time: seconds as a number, or a ``timedelta``.
Seconds = Union[int, float, timedelta]

_PULL_POLICIES = {
    "if-not-present": types_pb2.PULL_POLICY_IF_NOT_PRESENT,
    "always": types_pb2.PULL_POLICY_ALWAYS,
    "never": types_pb2.PULL_POLICY_NEVER,
}
_IDLE_ACTIONS = {
    "pause": types_pb2.IDLE_ACTION_PAUSE,
    "stop": types_pb2.IDLE_ACTION_STOP,
    "keep": types_pb2.IDLE_ACTION_KEEP,
}


def duration(value: Seconds) -> duration_pb2.Duration:
    """A ``google.protobuf.Duration`` from seconds or a ``timedelta``."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if value < 0:
        raise ValueError(f"a duration must not be negative, got {value}")
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1_000_000_000))
    return d


def seconds(value: duration_pb2.Duration) -> float:
    """A ``google.protobuf.Duration`` as seconds."""
    return float(value.seconds + value.nanos / 1_000_000_000)


def timestamp(value: timestamp_pb2.Timestamp) -> Optional[datetime]:
    """A ``google.protobuf.Timestamp`` as an aware UTC ``datetime``; ``None`` when unset."""
    if value.seconds == 0 and value.nanos == 0:
        return None
    return datetime.fromtimestamp(value.seconds, tz=timezone.utc) + timedelta(
        microseconds=value.nanos // 1000
    )


def session_spec(
    image: str,
    *,
    command: Iterable[str] = (),
    env: Optional[Mapping[str, str]] = None,
    ports: Iterable[Union[int, Tuple[int, str]]] = (),
    gpus: int = 0,
    gpu_model: str = "",
    ready_tcp_port: Optional[int] = None,
    ready_http: Optional[Tuple[int, str]] = None,
    ready_exec: Optional[Iterable[str]] = None,
    ready_timeout: Optional[Seconds] = None,
    idle_timeout: Optional[Seconds] = None,
    idle_action: Optional[str] = None,
    max_lifetime: Optional[Seconds] = None,
    cpu_millis: int = 0,
    memory_bytes: int = 0,
    pull_policy: Optional[str] = None,
) -> types_pb2.SessionSpec:
    """Builds a ``hearth.v1.SessionSpec``.

    Args:
        image: container image (docker runtime) or executable path (process runtime).
        command: command and arguments; empty uses the image's entrypoint.
        env: environment variables for the workload.
        ports: ports that ``invoke`` may reach, as numbers or ``(port, name)`` pairs.
        gpus: how many whole GPUs; 0 gives a CPU-only session.
        gpu_model: glob over the GPU model name, such as ``"NVIDIA H100*"``.
        ready_tcp_port: READY once a TCP connect to this port succeeds.
        ready_http: READY once ``GET path`` on ``(port, path)`` answers 2xx.
        ready_exec: READY once this command exits 0 inside the session.
        ready_timeout: how long the start may take before it counts as failed.
        idle_timeout: no turn or keep-alive for this long triggers ``idle_action``.
        idle_action: ``"pause"`` (the default), ``"stop"`` or ``"keep"``.
        max_lifetime: hard cap on the session's life.
        cpu_millis: CPU limit in thousandths of a core; 0 is the node's default.
        memory_bytes: memory limit; 0 is the node's default.
        pull_policy: when the node pulls the image: ``"if-not-present"`` (the default),
            ``"always"`` or ``"never"``.

    Give at most one of ``ready_tcp_port``, ``ready_http`` and ``ready_exec``.
    """
    checks = [c for c in (ready_tcp_port, ready_http, ready_exec) if c is not None]
    if len(checks) > 1:
        raise ValueError("give at most one of ready_tcp_port, ready_http and ready_exec")
    spec = types_pb2.SessionSpec(
        image=image,
        command=list(command),
        env=dict(env or {}),
    )
    if gpus or gpu_model:
        spec.gpus.CopyFrom(types_pb2.GpuRequest(count=gpus, model=gpu_model))
    if cpu_millis or memory_bytes:
        spec.resources.CopyFrom(
            types_pb2.Resources(cpu_millis=cpu_millis, memory_bytes=memory_bytes)
        )
    for port in ports:
        number, name = port if isinstance(port, tuple) else (port, "")
        spec.ports.append(types_pb2.PortSpec(port=number, name=name))
    if checks or ready_timeout is not None:
        probe = spec.readiness
        probe.SetInParent()
        if ready_tcp_port is not None:
            probe.tcp_port = ready_tcp_port
        elif ready_http is not None:
            probe.http.port, probe.http.path = ready_http
        elif ready_exec is not None:
            probe.exec.argv.extend(ready_exec)
        if ready_timeout is not None:
            probe.timeout.CopyFrom(duration(ready_timeout))
    if idle_timeout is not None:
        spec.idle_timeout.CopyFrom(duration(idle_timeout))
    if idle_action is not None:
        try:
            spec.idle_action = _IDLE_ACTIONS[idle_action]
        except KeyError:
            raise ValueError(
                f"idle_action must be one of {sorted(_IDLE_ACTIONS)}, got {idle_action!r}"
            ) from None
    if max_lifetime is not None:
        spec.max_lifetime.CopyFrom(duration(max_lifetime))
    if pull_policy is not None:
        try:
            spec.pull_policy = _PULL_POLICIES[pull_policy]
        except KeyError:
            raise ValueError(
                f"pull_policy must be one of {sorted(_PULL_POLICIES)}, got {pull_policy!r}"
            ) from None
    return spec
