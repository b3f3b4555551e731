"""Drives the Python client for tests/tests/broker_list.rs: one session, turns through it,
and, with --pause, a line on stdin awaited between the first turns and the rest (the test
kills the leader meanwhile). Every step is one JSON line on stdout.
"""

import argparse
import json
import logging
import sys
import time

import hearth


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True, help="one address or a comma-separated list")
    parser.add_argument("--image", required=True, help="the test worker binary")
    parser.add_argument("--before", type=int, default=1, help="turns before the pause")
    parser.add_argument("--after", type=int, default=1, help="turns after the pause")
    parser.add_argument("--pause", action="store_true", help="wait for a line on stdin")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    with hearth.Client(args.broker) as client:
        spec = hearth.session_spec(args.image, ports=[8080], ready_tcp_port=8080)
        started = time.monotonic()
        with client.create_session(spec) as session:
            emit(
                step="created", id=session.id, broker=client.url, seconds=time.monotonic() - started
            )

            def turn() -> None:
                response = session.request(8080, "POST", "/incr")
                exec_result = session.run([args.image, "echo", "tool"])
                emit(
                    step="turn",
                    counter=int(response.text),
                    exec=exec_result.text.strip(),
                    broker=client.url,
                )

            for _ in range(args.before):
                turn()
            if args.pause:
                emit(step="paused")
                sys.stdin.readline()
            for _ in range(args.after):
                turn()
            warmups = session.request(8080, "GET", "/state").json()["warmups"]
            emit(step="done", warmups=warmups, broker=client.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
