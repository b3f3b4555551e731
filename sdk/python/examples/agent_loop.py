#!/usr/bin/env python3
"""An agent loop on one warm Hearth session.

The agent opens one session, then takes tool-call turns against it: HTTP requests to the
workload's server (Invoke) and commands inside it (Exec). Between turns it "thinks" for
longer than the session's idle timeout; the client's background keep-alives stop the
session from being paused meanwhile. State lives in the workload and persists across
turns: the test worker's ``POST /incr`` answers 1, 2, 3, and its warm-up count stays 1.
Then it sends an explicit keep-alive and deletes the session.

Every step prints a line; the last line is one JSON object for scripts to check (``"ok"``
is true when every expectation held, and the exit status is then 0).

    pip install ./sdk/python
    python sdk/python/examples/agent_loop.py --broker 127.0.0.1:7700 \\
        --image hearth-test-worker:latest

The defaults fit the test worker image (``scripts/build-test-image.sh``): it listens on
port 8080 and its tools run as ``/worker echo ...``, ``/worker env NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List

import hearth
from hearth.v1 import types_pb2


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--broker",
        default=os.environ.get("HEARTH_BROKER", "127.0.0.1:7700"),
        help="broker gRPC address (env HEARTH_BROKER; default %(default)s)",
    )
    parser.add_argument(
        "--image",
        default=os.environ.get("HEARTH_IMAGE", "hearth-test-worker:latest"),
        help="image to run (env HEARTH_IMAGE; default %(default)s)",
    )
    parser.add_argument(
        "--tool",
        default=os.environ.get("HEARTH_TOOL", "/worker"),
        help="the worker's tool command inside the session (default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("HEARTH_TOKEN"),
        help="bearer token (env HEARTH_TOKEN)",
    )
    parser.add_argument("--port", type=int, default=8080, help="the workload's HTTP port")
    parser.add_argument(
        "--warmup-ms", type=int, default=1000, help="the worker's simulated model load"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=3.0, help="the session's idle timeout, seconds"
    )
    parser.add_argument(
        "--think",
        type=float,
        default=None,
        help="seconds the agent thinks between turns (default 1.5 x the idle timeout)",
    )
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    think = args.think if args.think is not None else 1.5 * args.idle_timeout
    expectations: Dict[str, bool] = {}
    result: Dict[str, Any] = {"broker": args.broker, "image": args.image}

    def expect(name: str, held: bool) -> None:
        expectations[name] = held
        if not held:
            print(f"  !! expectation failed: {name}")

    print(f"agent: broker {args.broker}, image {args.image}")
    spec = hearth.session_spec(
        args.image,
        env={"WARMUP_MS": str(args.warmup_ms)},
        ports=[(args.port, "http")],
        ready_tcp_port=args.port,
        ready_timeout=60,
        idle_timeout=args.idle_timeout,
    )
    with hearth.Client(args.broker, token=args.token) as client:
        started = time.monotonic()
        with client.create_session(spec, labels={"example": "agent_loop"}) as session:
            result.update(
                session_id=session.id,
                node_id=session.info.node_id,
                created_state=session.state,
            )
            print(
                f"created session {session.id} on node {session.info.node_id}: "
                f"{session.state} after {time.monotonic() - started:.2f} s "
                f"(keep-alive every {session.keep_alive_interval:.1f} s)"
            )
            expect("created READY", session.state == "SESSION_STATE_READY")

            counters: List[int] = []
            outputs: List[str] = []
            turn = 0

            def incr() -> None:
                """A model call: the counter lives in the workload's memory."""
                nonlocal turn
                turn += 1
                t = time.monotonic()
                response = session.request(args.port, "POST", "/incr")
                counters.append(int(response.text))
                print(
                    f"turn {turn}: invoke POST /incr -> {response.status} "
                    f"{response.text!r} ({(time.monotonic() - t) * 1000:.0f} ms)"
                )
                expect(f"turn {turn} status 200", response.status == 200)

            # Turn 1: a model call.
            incr()

            # Turn 2: a tool call, collected.
            turn += 1
            ran = session.run([args.tool, "echo", "tool", "call", str(turn)])
            outputs.append(ran.text.strip())
            print(f"turn {turn}: exec {args.tool} echo -> exit {ran.code} {ran.text.strip()!r}")
            expect(f"turn {turn} exec output", ran.ok and ran.text == f"tool call {turn}\n")

            # Turn 3: a model call again; the workload remembers turn 1.
            incr()

            # The agent thinks for longer than the idle timeout. Without keep-alives the
            # broker would pause the session; the client's thread keeps it READY.
            print(f"thinking {think:.1f} s (idle timeout {args.idle_timeout:.1f} s)")
            time.sleep(think)
            session.refresh()
            result.update(
                state_after_think=session.state,
                background_keep_alives=session.background_keep_alives,
            )
            print(
                f"after thinking: {session.state}, "
                f"{session.background_keep_alives} background keep-alives answered"
            )
            expect("READY after thinking", session.state == "SESSION_STATE_READY")

            # Turn 4: a tool call, streamed, with its own environment.
            turn += 1
            streamed: List[str] = []
            code = None
            for event in session.exec(
                [args.tool, "env", "AGENT_TURN"], env={"AGENT_TURN": f"turn {turn}"}
            ):
                if isinstance(event, hearth.Exit):
                    code = event.code
                else:
                    streamed.append(event.data.decode())
                    print(f"turn {turn}: exec {event.stream}: {event.data.decode().strip()!r}")
            outputs.append("".join(streamed).strip())
            print(f"turn {turn}: exec {args.tool} env AGENT_TURN -> exit {code}")
            expect(f"turn {turn} exec env", code == 0 and "".join(streamed) == f"turn {turn}\n")

            # Turn 5: a model call, streamed: the head, then body chunks.
            turn += 1
            body = b""
            for piece in session.invoke(args.port, "POST", "/incr"):
                if isinstance(piece, hearth.ResponseHead):
                    print(f"turn {turn}: invoke POST /incr head: {piece.status}")
                    expect(f"turn {turn} status 200", piece.status == 200)
                else:
                    body += piece
            counters.append(int(body))
            print(f"turn {turn}: invoke POST /incr body: {body.decode()!r}")

            # Turn 6: the workload's own view: one warm-up for every turn so far.
            turn += 1
            state = session.request(args.port, "GET", "/state").json()
            print(
                f"turn {turn}: invoke GET /state -> warmups {state['warmups']}, "
                f"counter {state['counter']}"
            )
            expect("counter 1, 2, 3", counters == [1, 2, 3])
            expect("one warm-up", state["warmups"] == 1 and state["counter"] == 3)

            expires = session.keep_alive()
            print(f"keep-alive: idle deadline now {expires.isoformat() if expires else None}")
            expect("keep-alive answered", expires is not None)

            session.refresh()
            result.update(
                turns=turn,
                counter=counters,
                exec_outputs=outputs,
                warmups=state["warmups"],
                turns_served=session.info.turns_served,
                cold_starts=session.info.cold_starts,
                keep_alive_expires_at=expires.isoformat() if expires else None,
            )
            deleted = session.delete()
            result["deleted_state"] = types_pb2.SessionState.Name(deleted.state)
            print(
                f"deleted session {session.id}: {result['deleted_state']} ({deleted.state_reason})"
            )
            expect("deleted STOPPED", deleted.state == types_pb2.SESSION_STATE_STOPPED)

        final = client.get_session(result["session_id"])
        result["final_state"] = types_pb2.SessionState.Name(final.state)

    result["ok"] = all(expectations.values())
    result["failed"] = [name for name, held in expectations.items() if not held]
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except hearth.HearthError as e:
        print(f"agent: {e}", file=sys.stderr)
        sys.exit(2)
