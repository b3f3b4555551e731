"""The connection to Hearth's brokers, and the unary calls of ``hearth.v1.Sessions``.

Unary calls are retried on ``UNAVAILABLE`` (a broker restarting, a leader change) with a
short jittered backoff. That is safe: CreateSession carries a ``request_id`` that the
broker deduplicates, and the other unary calls are idempotent. Streaming turns (Exec,
Invoke) are retried only when they certainly did not run: the broker said so
(``hearth-not-run``: a standby, a node not connected right now) or no connection could be
made, so the request never left the client.

A client may be given several brokers. It uses one at a time, moves to the next when the
one in use cannot be dialled, and follows a standby to the leader it names; when that
leader cannot be dialled as named, it goes back to its list (see ``route.py``).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
import uuid
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import grpc

from hearth.errors import FailedPrecondition, HearthError, from_rpc_error
from hearth.route import NOW, Route, parse_broker
from hearth.session import Session
from hearth.v1 import (
    admin_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
    types_pb2,
)

__all__ = ["Client"]

log = logging.getLogger("hearth")

_DEFAULT: Any = object()

#: The longest wait between two tries of a call, in seconds.
_MAX_BACKOFF = 1.0

#: gRPC re-dials a broker it could not reach only after its own backoff (1 s growing to
#: 2 min by default). A client that moves between brokers wants each dial to be current,
#: so it starts at 100 ms and stays under 1 s, unless ``options`` say otherwise.
_CHANNEL_DEFAULTS: Tuple[Tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


class _Broker:
    """One broker's channel and the generated stubs on it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.sessions = sessions_pb2_grpc.SessionsStub(channel)
        self.admin = admin_pb2_grpc.AdminStub(channel)


class _Backoff:
    """A call's retries: how many, and how far its wait has grown."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.attempt = 0
        self.waits = 0
        self._named_leader: Optional[bool] = None

    def failed(self, error: HearthError) -> None:
        """Counts a failed try. A standby that stops naming a leader has just taken over
        (or a leader just stepped down): the wait starts over from the shortest, as the
        agent's does, because the next answer (its node reconnected, say) is likely to
        come soon."""
        self.attempt += 1
        if not error.unreachable:
            names = error.leader is not None
            if self._named_leader is not None and self._named_leader != names:
                self.waits = 0
            self._named_leader = names


def print_progress(step: str) -> None:
    """Prints a step of a session's start to stderr; pass it as ``progress`` to
    :meth:`Client.create_session`."""
    print(f"  {step}", file=sys.stderr, flush=True)


class Client:
    """A connection to a Hearth cluster: one broker, or several to move between.

    Args:
        target: the broker's gRPC address: ``host:port`` or ``http://host:port``
            (plaintext), or ``https://host:port`` (TLS with the system's roots). Several
            brokers as a comma-separated string (``"a:7700,b:7700"``, as ``HEARTH_BROKER``
            takes them) or a list. Every entry is checked here; a bad one raises
            ``ValueError`` naming it.
        token: a bearer token, sent as ``authorization: Bearer <token>`` on every call;
            ``HEARTH_TOKEN`` from the environment when not given, as the CLI does.
        timeout: deadline in seconds for each try of a unary call other than
            CreateSession; ``None`` for none.
        retries: at most this many retries of one call; ``None`` (the default) for as
            many as ``retry_timeout`` allows.
        retry_backoff: the first retry's delay in seconds; it doubles (with jitter) up to
            one second.
        retry_timeout: no retry starts later than this many seconds after the call's first
            try; enough by default to ride out a leader failover or a broker restart.
        credentials: TLS channel credentials, to use your own roots or client certificate.
        tls_server_name: the name the broker's certificate must hold, whatever host the
            address names (a broker dialled by IP address or through a forwarded port).
        options: extra gRPC channel options, as ``(name, value)`` pairs.

    With several brokers, a call that cannot reach the broker in use goes to the next one
    at once; a standby's answer sends it to the leader the standby names, or, when that
    leader cannot be dialled as named, on through the list. List every broker by an
    address this client can reach.

    The client is thread-safe and can be used as a context manager, which closes its
    channels on exit.
    """

    def __init__(
        self,
        target: Union[str, Sequence[str]],
        token: Optional[str] = None,
        *,
        timeout: Optional[float] = 30.0,
        retries: Optional[int] = None,
        retry_backoff: float = 0.1,
        retry_timeout: float = 30.0,
        credentials: Optional[grpc.ChannelCredentials] = None,
        tls_server_name: Optional[str] = None,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        entries = target.split(",") if isinstance(target, str) else list(target)
        #: The brokers as given, in order.
        self.brokers: List[str] = [e.strip() for e in entries]
        if not any(self.brokers):
            raise ValueError("no broker address given (such as 127.0.0.1:7700)")
        for entry in self.brokers:
            if not entry:
                raise ValueError(
                    f"the broker list {target!r} has an empty entry; separate addresses "
                    "with single commas"
                )
            parse_broker(entry)
        #: What was passed as ``target``, as a string.
        self.target = ",".join(self.brokers)
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.retry_timeout = retry_timeout
        self._credentials = credentials
        given = {name for name, _ in options}
        self._options: List[Tuple[str, Any]] = list(options) + [
            (name, value) for name, value in _CHANNEL_DEFAULTS if name not in given
        ]
        self._tls_server_name = tls_server_name
        self._lock = threading.Lock()
        self._route = Route(self.brokers)
        self._open: Dict[str, _Broker] = {}
        if token is None:
            token = os.environ.get("HEARTH_TOKEN") or None
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )

    @property
    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        """The call metadata that carries the token (empty without one), for calls made
        on the generated stubs directly."""
        return self._metadata

    @property
    def url(self) -> str:
        """The broker in use now: a listed one, or the leader a standby named."""
        with self._lock:
            return self._route.url

    @property
    def channel(self) -> grpc.Channel:
        """The gRPC channel to the broker in use now."""
        return self._current()[1].channel

    @property
    def sessions(self) -> sessions_pb2_grpc.SessionsStub:
        """The generated ``hearth.v1.Sessions`` stub on the broker in use now, for calls
        this wrapper lacks; pass ``metadata=client.metadata`` so they carry the token. It
        does not retry or move between brokers."""
        return self._current()[1].sessions

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        """The generated ``hearth.v1.Admin`` stub on the broker in use now (nodes, cluster
        info, events; an admin token's calls only), as in
        ``client.admin.ListNodes(req, metadata=client.metadata)``."""
        return self._current()[1].admin

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channels. Sessions stay as they are on the broker."""
        with self._lock:
            brokers, self._open = list(self._open.values()), {}
        for broker in brokers:
            broker.channel.close()

    # --- sessions -------------------------------------------------------------------

    def create_session(
        self,
        spec: Optional[types_pb2.SessionSpec] = None,
        *,
        template: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        request_id: Optional[str] = None,
        wait: bool = True,
        keep_alive: bool = True,
        delete_on_exit: bool = True,
        timeout: Optional[float] = None,
        progress: Optional[Callable[[str], None]] = None,
    ) -> Session:
        """Places and starts a session (CreateSession) and returns it, once READY unless
        ``wait`` is false.

        Args:
            spec: what to run; see :func:`hearth.session_spec`.
            template: a template name, instead of ``spec``.
            labels: labels for the session.
            request_id: makes retries safe: the same id gives the same session for 24 h.
                A fresh UUID is used when not given, and kept across this call's retries.
            wait: wait until the session is READY (the default) or only until placed.
            keep_alive: send keep-alives from a background thread while it is open.
            delete_on_exit: delete it when the returned :class:`Session` is closed.
            timeout: a deadline in seconds; by default none, since the broker bounds the
                wait by the spec's readiness timeout.
            progress: called with each step of the start while waiting, in words: state
                changes and the image pull's progress ("pulling image x: 3.1 of 12.0 MiB,
                1 of 3 layers"). :func:`hearth.print_progress` prints them to stderr.

        Raises:
            hearth.FailedPrecondition: the start failed (the message says why, and names
                the FAILED session).
            hearth.ResourceExhausted: no node has room for it.
            hearth.InvalidArgument: the spec is invalid (the message names the field).
        """
        if (spec is None) == (template is None):
            raise ValueError("give exactly one of spec and template")
        request = sessions_pb2.CreateSessionRequest(
            request_id=request_id or str(uuid.uuid4()),
            labels=dict(labels or {}),
            no_wait=not wait,
        )
        if spec is not None:
            request.spec.CopyFrom(spec)
        else:
            request.template = template or ""
        follow = wait and progress is not None
        if follow:
            # Returns once placed; the wait for READY follows the session's events.
            request.no_wait = True
        info = self._unary("CreateSession", request, timeout=timeout)
        if follow and progress is not None:
            info = self._follow_start(info, progress)
        return Session(self, info, keep_alive=keep_alive, delete_on_exit=delete_on_exit)

    def _follow_start(
        self, info: types_pb2.Session, progress: Callable[[str], None]
    ) -> types_pb2.Session:
        """Waits until the placed session ``info`` is READY, telling ``progress`` each
        step; raises FailedPrecondition when it ends instead."""
        waiting = (types_pb2.SESSION_STATE_PLACED, types_pb2.SESSION_STATE_STARTING)
        if info.state in waiting:
            last = info.state
            events = self._stream("WatchSession", sessions_pb2.WatchSessionRequest(id=info.id))
            for event in events:
                if event.message and (event.state != last or "pull" in event.message):
                    progress(event.message)
                last = event.state
                if event.state not in waiting:
                    break
            info = self.get_session(info.id)
        if info.state != types_pb2.SESSION_STATE_READY:
            raise FailedPrecondition(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"session {info.id} failed to start: {info.state_reason}",
                method="CreateSession",
            )
        if info.pull_ms:
            progress(f"image pull {info.pull_ms} ms, warm-up {info.warmup_ms} ms")
        else:
            progress(f"warm-up {info.warmup_ms} ms (the node held the image)")
        return info

    def session(
        self, session_id: str, *, keep_alive: bool = True, delete_on_exit: bool = False
    ) -> Session:
        """Attaches to an existing session, such as one an earlier run kept."""
        return Session(
            self,
            self.get_session(session_id),
            keep_alive=keep_alive,
            delete_on_exit=delete_on_exit,
        )

    def get_session(self, session_id: str) -> types_pb2.Session:
        """The session's record (GetSession); ended sessions keep theirs."""
        info: types_pb2.Session = self._unary(
            "GetSession", sessions_pb2.GetSessionRequest(id=session_id)
        )
        return info

    def list_sessions(
        self,
        states: Iterable[types_pb2.SessionState] = (),
        labels: Optional[Mapping[str, str]] = None,
        page_size: int = 0,
    ) -> Iterator[types_pb2.Session]:
        """Every session of the caller's tenant (ListSessions), fetched a page at a time.

        Args:
            states: only these ``types_pb2.SESSION_STATE_*`` values; empty means all.
            labels: only sessions whose labels include all of these.
            page_size: sessions per page; 0 is the broker's default.
        """
        token = ""
        while True:
            page = self._unary(
                "ListSessions",
                sessions_pb2.ListSessionsRequest(
                    states=list(states),
                    labels=dict(labels or {}),
                    page_size=page_size,
                    page_token=token,
                ),
            )
            yield from page.sessions
            token = page.next_page_token
            if not token:
                return

    def delete_session(self, session_id: str) -> types_pb2.Session:
        """Stops a session and frees its GPUs (DeleteSession); returns its final record."""
        info: types_pb2.Session = self._unary(
            "DeleteSession", sessions_pb2.DeleteSessionRequest(id=session_id)
        )
        return info

    # --- plumbing -------------------------------------------------------------------

    def _dial(self, url: str) -> _Broker:
        """A channel to ``url`` (made on first use; it dials on its first call)."""
        broker = self._open.get(url)
        if broker is None:
            address, tls = parse_broker(url)
            if tls or self._credentials is not None:
                options = list(self._options)
                if self._tls_server_name:
                    options.append(("grpc.ssl_target_name_override", self._tls_server_name))
                channel = grpc.secure_channel(
                    address, self._credentials or grpc.ssl_channel_credentials(), options
                )
            else:
                channel = grpc.insecure_channel(address, options=self._options)
            broker = self._open[url] = _Broker(channel)
        return broker

    def _current(self) -> Tuple[int, _Broker]:
        """The route's generation and the broker in use."""
        with self._lock:
            return self._route.generation, self._dial(self._route.url)

    def _answered(self, generation: int) -> None:
        with self._lock:
            self._route.answered(generation)

    def _failed(self, generation: int, error: HearthError) -> str:
        """Takes in a failed try and picks the broker for the next one."""
        leader = error.leader
        if leader is not None:
            try:
                parse_broker(leader)
            except ValueError:
                log.warning("cannot follow the named leader %r: not a usable address", leader)
                leader = None
        with self._lock:
            before = self._route.url
            step = self._route.failed(
                generation, time.monotonic(), unreachable=error.unreachable, leader=leader
            )
            after = self._route.url
        if after != before:
            if error.unreachable:
                log.info("broker %s unreachable (%s); trying %s", before, error.details, after)
            else:
                log.info("following the broker leader from %s to %s", before, after)
        return step

    def _unary(self, method: str, request: Any, *, timeout: Any = _DEFAULT) -> Any:
        """Calls a unary Sessions RPC, retrying UNAVAILABLE; raises HearthError."""
        deadline = self.timeout if timeout is _DEFAULT else timeout
        backoff = _Backoff()
        while True:
            generation, broker = self._current()
            try:
                response = getattr(broker.sessions, method)(
                    request, timeout=deadline, metadata=self._metadata
                )
            except grpc.RpcError as e:
                error = from_rpc_error(e, method)
                pause = self._next(generation, error, backoff, error.retryable)
                if pause is None:
                    raise error from e
                log.info("%s: %s; retry %d in %.2fs", method, error, backoff.attempt, pause)
                time.sleep(pause)
                continue
            self._answered(generation)
            return response

    def _stream(self, method: str, request: Any) -> Iterator[Any]:
        """Calls a server-streaming Sessions RPC (a turn); raises HearthError. The call
        starts at the first ``next()``, and is cancelled when the caller stops iterating
        early. It is sent again only when it certainly did not run."""
        backoff = _Backoff()
        while True:
            generation, broker = self._current()
            call = getattr(broker.sessions, method)(request, metadata=self._metadata)
            received = False
            try:
                for message in call:
                    received = True
                    yield message
                self._answered(generation)
                return
            except grpc.RpcError as e:
                error = from_rpc_error(e, method)
                retry = not received and error.retryable and error.not_run
                pause = self._next(generation, error, backoff, retry)
                if pause is None:
                    raise error from e
                log.info(
                    "%s was not run: %s; retry %d in %.2fs", method, error, backoff.attempt, pause
                )
            finally:
                call.cancel()
            time.sleep(pause)

    def _next(
        self, generation: int, error: HearthError, backoff: _Backoff, retry: bool
    ) -> Optional[float]:
        """Takes in a failed try: moves between brokers as it calls for, and returns how
        long to wait before the next try, or ``None`` when there is none (``retry`` false,
        or the call's retries are used up)."""
        step = self._failed(generation, error)
        backoff.failed(error)
        if not retry or (self.retries is not None and backoff.attempt > self.retries):
            return None
        pause = 0.0
        if step != NOW:
            cap = min(self.retry_backoff * 2 ** min(backoff.waits, 20), _MAX_BACKOFF)
            pause = cap * random.uniform(0.5, 1.0)
            backoff.waits += 1
        if time.monotonic() - backoff.started + pause > self.retry_timeout:
            return None
        return pause
