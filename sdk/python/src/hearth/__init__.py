"""Python client for Hearth: persistent GPU sessions for AI agents.

Open a session once, send it turns (commands with :meth:`Session.exec`, HTTP requests to
the model server inside with :meth:`Session.invoke`), and every turn reaches the same warm
workload::

    import hearth

    with hearth.Client("127.0.0.1:7700") as client:
        spec = hearth.session_spec("my-model:latest", ports=[8080], ready_tcp_port=8080)
        with client.create_session(spec) as session:  # deleted when the block ends
            print(session.request(8080, "POST", "/v1/completions", body=b"...").text)
            print(session.run(["python", "tool.py"]).text)

# Layout
- ``client.py``: :class:`Client`, unary calls and their retries.
- ``route.py``: which of the client's brokers it uses, and where it goes when that one
  cannot be dialled or a standby names the leader.
- ``session.py``: :class:`Session`, turns (Exec, Invoke), the keep-alive thread.
- ``spec.py``: :func:`session_spec` and duration/timestamp conversions.
- ``errors.py``: :class:`HearthError` and a subclass per common gRPC code.
- ``v1/``: modules generated from ``proto/hearth/v1`` by ``scripts/gen-python.sh``.
"""

from hearth.client import Client, print_progress
from hearth.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    HearthError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from hearth.session import (
    ExecEvent,
    ExecResult,
    Exit,
    HttpResponse,
    InvokeEvent,
    Output,
    ResponseHead,
    Session,
)
from hearth.spec import session_spec

__version__ = "0.1.0"

__all__ = [
    "Client",
    "print_progress",
    "Session",
    "session_spec",
    "Output",
    "Exit",
    "ExecEvent",
    "ExecResult",
    "ResponseHead",
    "InvokeEvent",
    "HttpResponse",
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
]
