"""One warm session: its turns (Exec, Invoke), keep-alive and end of life.

A :class:`Session` is what :meth:`hearth.Client.create_session` returns. Used as a context
manager it deletes the session on exit (unless :meth:`Session.keep` was called), and while
it is open a background thread sends keep-alives so the session is not paused between the
agent's turns, however long the agent thinks.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import (
    TYPE_CHECKING,
    Any,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    Union,
)

import grpc

from hearth.errors import FailedPrecondition, HearthError, NotFound
from hearth.spec import Seconds, duration, seconds, timestamp
from hearth.v1 import sessions_pb2, types_pb2

if TYPE_CHECKING:
    from hearth.client import Client

__all__ = [
    "Session",
    "Output",
    "Exit",
    "ExecEvent",
    "ExecResult",
    "ResponseHead",
    "InvokeEvent",
    "HttpResponse",
    "keep_alive_interval",
]

log = logging.getLogger("hearth")

#: The broker's idle timeout when the spec sets none (30 min).
DEFAULT_IDLE_TIMEOUT = 30 * 60.0
#: Keep-alives are never sent more often than this, in seconds.
MIN_KEEP_ALIVE_INTERVAL = 1.0

_TERMINAL = {
    types_pb2.SESSION_STATE_STOPPED,
    types_pb2.SESSION_STATE_FAILED,
    types_pb2.SESSION_STATE_LOST,
}


def keep_alive_interval(idle_timeout: Optional[float]) -> float:
    """Seconds between background keep-alives: a third of the idle timeout, so two may be
    lost before the session counts as idle, and never less than one second."""
    idle = idle_timeout if idle_timeout else DEFAULT_IDLE_TIMEOUT
    return max(MIN_KEEP_ALIVE_INTERVAL, idle / 3)


@dataclass(frozen=True)
class Output:
    """A chunk of an Exec command's output, as the command wrote it."""

    #: ``"stdout"`` or ``"stderr"``.
    stream: str
    #: The bytes written.
    data: bytes


@dataclass(frozen=True)
class Exit:
    """How an Exec command ended; always the last event of :meth:`Session.exec`."""

    #: Exit code, or -1 if killed by a signal.
    code: int
    #: True when it was killed because its timeout passed.
    timed_out: bool
    #: How long it ran, in seconds.
    duration: float


#: What :meth:`Session.exec` yields.
ExecEvent = Union[Output, Exit]


@dataclass(frozen=True)
class ExecResult:
    """The collected outcome of an Exec turn (:meth:`Session.run`)."""

    stdout: bytes
    stderr: bytes
    #: Exit code, or -1 if killed by a signal.
    code: int
    timed_out: bool
    #: How long the command ran, in seconds.
    duration: float

    @property
    def ok(self) -> bool:
        """True when the command exited 0 within its timeout."""
        return self.code == 0 and not self.timed_out

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ResponseHead:
    """Status and headers of an Invoke turn; always the first event of
    :meth:`Session.invoke`."""

    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)


#: What :meth:`Session.invoke` yields: one :class:`ResponseHead`, then body chunks.
InvokeEvent = Union[ResponseHead, bytes]


@dataclass(frozen=True)
class HttpResponse:
    """The collected response of an Invoke turn (:meth:`Session.request`)."""

    status: int
    headers: List[Tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class Session:
    """A persistent session and the turns sent to it.

    Attributes:
        id: the session id.
        info: the latest ``hearth.v1.Session`` record seen (see :meth:`refresh`).
        delete_on_exit: whether :meth:`close` (and leaving a ``with`` block) deletes it.
        keep_alive_interval: seconds between background keep-alives.
        background_keep_alives: keep-alives the background thread got answers to.
        expires_at: the idle deadline from the latest keep-alive, if any.
    """

    def __init__(
        self,
        client: "Client",
        info: types_pb2.Session,
        *,
        keep_alive: bool = True,
        delete_on_exit: bool = True,
    ) -> None:
        self._client = client
        self.id: str = info.id
        self.info: types_pb2.Session = info
        self.delete_on_exit = delete_on_exit
        idle = seconds(info.spec.idle_timeout) if info.spec.HasField("idle_timeout") else None
        self.keep_alive_interval: float = keep_alive_interval(idle)
        self.background_keep_alives = 0
        self.expires_at: Optional[datetime] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if keep_alive and info.state not in _TERMINAL:
            self._thread = threading.Thread(
                target=self._keep_alive_loop, name=f"hearth-keep-alive-{self.id}", daemon=True
            )
            self._thread.start()

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, state={self.state})"

    def __enter__(self) -> "Session":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc is None:
            self.close()
            return
        # Never hide the exception that ended the block behind a failed delete.
        try:
            self.close()
        except HearthError as e:
            log.warning("session %s: delete on exit failed: %s", self.id, e)

    @property
    def state(self) -> str:
        """The state of :attr:`info` by name, such as ``"SESSION_STATE_READY"``."""
        return str(types_pb2.SessionState.Name(self.info.state))

    # --- life -----------------------------------------------------------------------

    def refresh(self) -> types_pb2.Session:
        """Fetches the session's record (GetSession) and stores it in :attr:`info`."""
        self.info = self._client.get_session(self.id)
        return self.info

    def keep_alive(self) -> Optional[datetime]:
        """Marks the session active now (KeepAlive); returns its new idle deadline."""
        response = self._client._unary("KeepAlive", sessions_pb2.KeepAliveRequest(id=self.id))
        self.expires_at = timestamp(response.expires_at)
        return self.expires_at

    def pause(self) -> types_pb2.Session:
        """Freezes the session's CPU and keeps its VRAM (PauseSession)."""
        self.info = self._client._unary(
            "PauseSession", sessions_pb2.PauseSessionRequest(id=self.id)
        )
        return self.info

    def resume(self) -> types_pb2.Session:
        """Unfreezes a paused session (ResumeSession). A turn does this by itself."""
        self.info = self._client._unary(
            "ResumeSession", sessions_pb2.ResumeSessionRequest(id=self.id)
        )
        return self.info

    def keep(self) -> "Session":
        """Leaves the session running when this object is closed or its ``with`` ends."""
        self.delete_on_exit = False
        return self

    def delete(self) -> types_pb2.Session:
        """Stops the session, removes its workload and frees its GPUs (DeleteSession).
        Deleting an ended session again returns its final record."""
        self._stop_keep_alive()
        self.info = self._client.delete_session(self.id)
        return self.info

    def close(self) -> None:
        """Stops the keep-alive thread, and deletes the session if :attr:`delete_on_exit`."""
        self._stop_keep_alive()
        if self.delete_on_exit and self.info.state not in _TERMINAL:
            self.delete()

    # --- turns ----------------------------------------------------------------------

    def exec(
        self,
        argv: Iterable[str],
        *,
        stdin: Union[bytes, str] = b"",
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[Seconds] = None,
        workdir: str = "",
    ) -> Iterator[ExecEvent]:
        """Runs a command inside the session (an Exec turn), streaming as it runs.

        Yields :class:`Output` chunks as the command writes them, then one :class:`Exit`.
        The turn starts when iteration starts; stopping early cancels it.

        Args:
            argv: the command and its arguments; ``argv[0]`` is looked up on the PATH.
            stdin: bytes (or text, sent as UTF-8) written to stdin, which is then closed.
            env: extra environment variables for this command.
            timeout: the command is killed after this long (the broker caps it).
            workdir: working directory inside the session; empty uses the workload's.
        """
        request = sessions_pb2.ExecRequest(
            session_id=self.id,
            argv=list(argv),
            env=dict(env or {}),
            stdin=stdin.encode() if isinstance(stdin, str) else stdin,
            workdir=workdir,
        )
        if timeout is not None:
            request.timeout.CopyFrom(duration(timeout))
        for message in self._client._stream("Exec", request):
            kind = message.WhichOneof("event")
            if kind == "stdout":
                yield Output("stdout", message.stdout)
            elif kind == "stderr":
                yield Output("stderr", message.stderr)
            elif kind == "exit":
                yield Exit(
                    code=message.exit.code,
                    timed_out=message.exit.timed_out,
                    duration=seconds(message.exit.duration),
                )

    def run(
        self,
        argv: Iterable[str],
        *,
        stdin: Union[bytes, str] = b"",
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[Seconds] = None,
        workdir: str = "",
    ) -> ExecResult:
        """Runs a command like :meth:`exec` and returns its collected output and exit code.

        Raises:
            HearthError: the turn failed, or its stream ended without an exit status.
        """
        out: List[bytes] = []
        err: List[bytes] = []
        end: Optional[Exit] = None
        for event in self.exec(argv, stdin=stdin, env=env, timeout=timeout, workdir=workdir):
            if isinstance(event, Exit):
                end = event
            elif event.stream == "stdout":
                out.append(event.data)
            else:
                err.append(event.data)
        if end is None:
            raise HearthError(
                grpc.StatusCode.UNKNOWN,
                "the Exec stream ended without an exit status",
                method="Exec",
            )
        return ExecResult(b"".join(out), b"".join(err), end.code, end.timed_out, end.duration)

    def invoke(
        self,
        port: int,
        method: str = "GET",
        path: str = "/",
        headers: Union[Mapping[str, str], Iterable[Tuple[str, str]], None] = None,
        body: Union[bytes, str] = b"",
        *,
        timeout: Optional[Seconds] = None,
    ) -> Iterator[InvokeEvent]:
        """Sends an HTTP request to a port of the session (an Invoke turn), streaming the
        response: one :class:`ResponseHead`, then body chunks (``bytes``) as the workload
        produces them (server-sent events arrive event by event).

        The turn starts when iteration starts; stopping early cancels it.

        Args:
            port: a port listed in the session's spec.
            method: HTTP method, such as ``"POST"``.
            path: path and query, such as ``"/v1/completions"``.
            headers: request headers, as a mapping or ``(name, value)`` pairs.
            body: request body (text is sent as UTF-8).
            timeout: the request is abandoned after this long.
        """
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        request = sessions_pb2.InvokeRequest(
            session_id=self.id,
            port=port,
            method=method.upper(),
            path=path,
            headers=[sessions_pb2.Header(name=k, value=v) for k, v in pairs],
            body=body.encode() if isinstance(body, str) else body,
        )
        if timeout is not None:
            request.timeout.CopyFrom(duration(timeout))
        for message in self._client._stream("Invoke", request):
            kind = message.WhichOneof("event")
            if kind == "head":
                yield ResponseHead(
                    status=message.head.status,
                    headers=[(h.name, h.value) for h in message.head.headers],
                )
            elif kind == "body":
                yield message.body

    def request(
        self,
        port: int,
        method: str = "GET",
        path: str = "/",
        headers: Union[Mapping[str, str], Iterable[Tuple[str, str]], None] = None,
        body: Union[bytes, str] = b"",
        *,
        timeout: Optional[Seconds] = None,
    ) -> HttpResponse:
        """Sends an HTTP request like :meth:`invoke` and returns the whole response.

        Raises:
            HearthError: the turn failed, or its stream ended without a response head.
        """
        head: Optional[ResponseHead] = None
        chunks: List[bytes] = []
        for event in self.invoke(port, method, path, headers, body, timeout=timeout):
            if isinstance(event, ResponseHead):
                head = event
            else:
                chunks.append(event)
        if head is None:
            raise HearthError(
                grpc.StatusCode.UNKNOWN,
                "the Invoke stream ended without a response head",
                method="Invoke",
            )
        return HttpResponse(head.status, head.headers, b"".join(chunks))

    # --- keep-alive thread ----------------------------------------------------------

    def _keep_alive_loop(self) -> None:
        while not self._stop.wait(self.keep_alive_interval):
            try:
                self.keep_alive()
                self.background_keep_alives += 1
            except (NotFound, FailedPrecondition) as e:
                # The session ended (deleted elsewhere, stopped, failed): nothing to keep.
                log.info("session %s: keep-alives stopped: %s", self.id, e)
                return
            except HearthError as e:
                log.warning("session %s: keep-alive failed, will try again: %s", self.id, e)
            except Exception:  # noqa: BLE001 - the thread must not die silently
                log.exception("session %s: keep-alive failed, will try again", self.id)

    def _stop_keep_alive(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._client.timeout or None)
        self._thread = None
