"""The connection to a Hearth broker, and the unary calls of ``hearth.v1.Sessions``.

Unary calls are retried on ``UNAVAILABLE`` (a broker restarting, a leader change) with a
short jittered backoff. That is safe: CreateSession carries a ``request_id`` that the
broker deduplicates, and the other unary calls are idempotent. Streaming turns (Exec,
Invoke) are never retried, since a command may already have run.
"""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import grpc

from hearth.errors import from_rpc_error
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


def _parse_target(target: str) -> Tuple[str, bool]:
    """``host:port``, ``http://host:port`` or ``https://host:port`` -> (address, tls)."""
    if target.startswith("https://"):
        return target[len("https://") :].rstrip("/"), True
    if target.startswith("http://"):
        return target[len("http://") :].rstrip("/"), False
    return target, False


class Client:
    """A connection to a Hearth broker.

    Args:
        target: the broker's gRPC address: ``host:port`` or ``http://host:port``
            (plaintext), or ``https://host:port`` (TLS with the system's roots).
        token: a bearer token, sent as ``authorization: Bearer <token>`` on every call;
            ``HEARTH_TOKEN`` from the environment when not given, as the CLI does.
        timeout: deadline in seconds for unary calls other than CreateSession;
            ``None`` for none.
        retries: how many times a unary call is retried on ``UNAVAILABLE``.
        retry_backoff: the first retry's delay in seconds; it doubles (with jitter) up to
            two seconds.
        credentials: TLS channel credentials, to use your own roots or client certificate.
        options: extra gRPC channel options, as ``(name, value)`` pairs.

    The client is thread-safe and can be used as a context manager, which closes its
    channel on exit.
    """

    def __init__(
        self,
        target: str,
        token: Optional[str] = None,
        *,
        timeout: Optional[float] = 30.0,
        retries: int = 4,
        retry_backoff: float = 0.1,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Sequence[Tuple[str, Any]] = (),
    ) -> None:
        address, tls = _parse_target(target)
        if tls or credentials is not None:
            self.channel = grpc.secure_channel(
                address, credentials or grpc.ssl_channel_credentials(), options=list(options)
            )
        else:
            self.channel = grpc.insecure_channel(address, options=list(options))
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        if token is None:
            token = os.environ.get("HEARTH_TOKEN") or None
        self._metadata: Tuple[Tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        #: The generated ``hearth.v1.Sessions`` stub, for calls this wrapper lacks; pass
        #: ``metadata=client.metadata`` so they carry the token.
        self.sessions = sessions_pb2_grpc.SessionsStub(self.channel)
        #: The generated ``hearth.v1.Admin`` stub (nodes, cluster info, events; an admin
        #: token's calls only), as in ``client.admin.ListNodes(req, metadata=client.metadata)``.
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    @property
    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        """The call metadata that carries the token (empty without one), for calls made
        on the generated stubs directly."""
        return self._metadata

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel. Sessions stay as they are on the broker."""
        self.channel.close()

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
        info = self._unary("CreateSession", request, timeout=timeout)
        return Session(self, info, keep_alive=keep_alive, delete_on_exit=delete_on_exit)

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

    def _unary(self, method: str, request: Any, *, timeout: Any = _DEFAULT) -> Any:
        """Calls a unary Sessions RPC, retrying UNAVAILABLE; raises HearthError."""
        call = getattr(self.sessions, method)
        deadline = self.timeout if timeout is _DEFAULT else timeout
        delay = self.retry_backoff
        attempt = 0
        while True:
            try:
                return call(request, timeout=deadline, metadata=self._metadata)
            except grpc.RpcError as e:
                error = from_rpc_error(e, method)
                if not error.retryable or attempt >= self.retries:
                    raise error from e
                attempt += 1
                pause = delay * random.uniform(0.5, 1.0)
                log.info("%s: %s; retry %d in %.2fs", method, error, attempt, pause)
                time.sleep(pause)
                delay = min(delay * 2, 2.0)

    def _stream(self, method: str, request: Any) -> Iterator[Any]:
        """Calls a server-streaming Sessions RPC; raises HearthError. The call starts at
        the first ``next()``, and is cancelled when the caller stops iterating early."""
        call = getattr(self.sessions, method)(request, metadata=self._metadata)
        try:
            for message in call:
                yield message
        except grpc.RpcError as e:
            raise from_rpc_error(e, method) from e
        finally:
            call.cancel()
