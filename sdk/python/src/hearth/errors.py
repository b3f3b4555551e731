"""Exceptions raised by the Hearth client.

Every failed call raises a :class:`HearthError` that carries the gRPC status code and the
broker's message, which names the field or the session concerned. The common codes have
their own subclasses, so an agent can ``except hearth.NotFound`` without comparing codes.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

import grpc

__all__ = [
    "HearthError",
    "InvalidArgument",
    "NotFound",
    "FailedPrecondition",
    "ResourceExhausted",
    "Unavailable",
    "DeadlineExceeded",
    "Unimplemented",
    "Unauthenticated",
    "PermissionDenied",
    "Cancelled",
    "from_rpc_error",
]

#: Response metadata in which a standby broker names the leader's URL.
LEADER_METADATA_KEY = "hearth-leader"
#: Response metadata a broker sets when it guarantees the call was not acted on (a
#: standby; a turn whose node is not connected), so even a turn may be sent again.
NOT_RUN_METADATA_KEY = "hearth-not-run"

#: How gRPC words a call that failed because no connection could be made (the name did not
#: resolve, every address refused or timed out, the TLS handshake failed). The call fails
#: while the channel picks a connection, so it never left the client.
_DIAL_FAILURES = (
    "failed to connect to all addresses",
    "errors resolving",
    "DNS resolution failed",
    "Name resolution failure",
)


class HearthError(Exception):
    """A call to the broker failed.

    Attributes:
        code: the gRPC status code, such as ``grpc.StatusCode.NOT_FOUND``.
        details: the broker's message, meant for a person to act on.
        method: the RPC that failed, such as ``"CreateSession"``.
        leader: the leader's URL when a standby broker refused the call, else ``None``.
        unreachable: no connection to the broker could be made, so the call never left
            the client.
        not_run: the call certainly did not run: the broker said so, or it never left the
            client (``unreachable``). Only then is a turn sent again.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        method: str = "",
        leader: Optional[str] = None,
        unreachable: bool = False,
        not_run: bool = False,
    ) -> None:
        self.code = code
        self.details = details
        self.method = method
        self.leader = leader
        self.unreachable = unreachable
        self.not_run = not_run or unreachable
        prefix = f"{method}: " if method else ""
        super().__init__(f"{prefix}{code.name}: {details}")

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed if tried again later (``UNAVAILABLE``)."""
        return bool(self.code == grpc.StatusCode.UNAVAILABLE)


class InvalidArgument(HearthError):
    """The request is malformed; the message names the field."""


class NotFound(HearthError):
    """No such session (or node, or template) for this tenant."""


class FailedPrecondition(HearthError):
    """The session is not in a state that allows this, such as a start that failed."""


class ResourceExhausted(HearthError):
    """No node has room (GPUs, quota) for the session right now."""


class Unavailable(HearthError):
    """The broker, or the session's node, cannot answer now; retrying later may work."""


class DeadlineExceeded(HearthError):
    """The call's deadline passed before it finished."""


class Unimplemented(HearthError):
    """The broker does not offer this yet."""


class Unauthenticated(HearthError):
    """The token is missing or not accepted."""


class PermissionDenied(HearthError):
    """The token is valid but may not do this."""


class Cancelled(HearthError):
    """The call was cancelled, by this client or by the broker shutting down."""


_BY_CODE: Dict[grpc.StatusCode, Type[HearthError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.CANCELLED: Cancelled,
}


def from_rpc_error(error: grpc.RpcError, method: str = "") -> HearthError:
    """Converts a ``grpc.RpcError`` into the matching :class:`HearthError` subclass."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    leader = None
    not_run = False
    if hasattr(error, "trailing_metadata"):
        for key, value in error.trailing_metadata() or ():
            if key == LEADER_METADATA_KEY:
                leader = value if isinstance(value, str) else value.decode()
            elif key == NOT_RUN_METADATA_KEY:
                not_run = True
    unreachable = code == grpc.StatusCode.UNAVAILABLE and any(
        details.startswith(prefix) for prefix in _DIAL_FAILURES
    )
    cls = _BY_CODE.get(code, HearthError)
    return cls(
        code, details, method=method, leader=leader, unreachable=unreachable, not_run=not_run
    )
