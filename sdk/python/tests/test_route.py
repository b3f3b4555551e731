"""Unit tests of the broker list: the route's rules (no I/O) and the client's checks.

Run with ``python -m unittest discover sdk/python/tests`` in a virtualenv that has the
package installed; ``tests/tests/broker_list.rs`` does.
"""

import socket
import unittest

import hearth
from hearth.route import BACKOFF, NOW, UNREACHABLE_FOR, Route, parse_broker

A = "http://a:7700"
B = "http://b:7700"
C = "http://c:7700"


def fail(route: Route, now: float = 0.0, **kw: object) -> str:
    return route.failed(route.generation, now, **kw)  # type: ignore[arg-type]


class RouteTest(unittest.TestCase):
    def test_a_dial_failure_moves_on_at_once_and_a_full_round_backs_off(self) -> None:
        r = Route([A, B, C])
        self.assertEqual(fail(r, unreachable=True), NOW)
        self.assertEqual(r.url, B)
        self.assertEqual(fail(r, unreachable=True), NOW)
        self.assertEqual(r.url, C)
        self.assertEqual(fail(r, unreachable=True), BACKOFF)
        self.assertEqual(r.url, A)

    def test_a_standby_naming_a_listed_leader_moves_to_that_entry(self) -> None:
        r = Route(["a:7700", "b:7700"])
        self.assertEqual(fail(r, leader="http://b:7700/"), BACKOFF)
        self.assertEqual((r.index, r.url), (1, "b:7700"))

    def test_an_unreachable_named_leader_falls_back_to_the_list(self) -> None:
        standby, leader = "127.0.0.1:17710", "127.0.0.1:17700"
        r = Route([standby, leader])
        fail(r, leader="https://broker-a:7700")
        self.assertEqual(r.url, "https://broker-a:7700")
        self.assertEqual(fail(r, unreachable=True), NOW)
        self.assertEqual(r.url, leader)
        r.answered(r.generation)
        # The leader dies; the standby still names it by the URL that failed just now.
        self.assertEqual(fail(r, 1.0, unreachable=True), NOW)
        self.assertEqual(r.url, standby)
        fail(r, 1.0, leader="https://broker-a:7700")
        self.assertEqual(r.url, standby)
        fail(r, UNREACHABLE_FOR + 1.0, leader="https://broker-a:7700")
        self.assertEqual(r.url, "https://broker-a:7700")

    def test_after_the_leader_dies_the_client_stays_on_the_standby(self) -> None:
        r = Route([A, B])
        fail(r, unreachable=True)
        for _ in range(3):
            self.assertEqual(fail(r, leader=A), BACKOFF)
            self.assertEqual(r.url, B)

    def test_a_failure_from_before_another_move_does_not_move_again(self) -> None:
        r = Route([A, B, C])
        stale = r.generation
        fail(r, unreachable=True)
        self.assertEqual(r.failed(stale, 0.0, unreachable=True), NOW)
        self.assertEqual(r.url, B)

    def test_other_failures_stay_put(self) -> None:
        r = Route([A, B])
        self.assertEqual(fail(r), BACKOFF)
        self.assertEqual(r.url, A)


class ChecksTest(unittest.TestCase):
    def test_addresses(self) -> None:
        self.assertEqual(parse_broker("127.0.0.1:7700"), ("127.0.0.1:7700", False))
        self.assertEqual(parse_broker("https://b:7700/"), ("b:7700", True))
        self.assertEqual(parse_broker("http://[::1]:7700"), ("[::1]:7700", False))
        for bad in ["b", "http://b", "grpc://b:1", "b:port", "http://b:7700/x", ":7700"]:
            with self.assertRaises(ValueError, msg=bad) as e:
                parse_broker(bad)
            self.assertIn(repr(bad), str(e.exception))

    def test_every_entry_is_checked_and_a_bad_one_named(self) -> None:
        client = hearth.Client(" a:1 , https://b:2")
        self.assertEqual(client.brokers, ["a:1", "https://b:2"])
        self.assertEqual(client.url, "a:1")
        self.assertEqual(hearth.Client(["a:1", "b:2"]).brokers, ["a:1", "b:2"])
        with self.assertRaises(ValueError) as e:
            hearth.Client("a:1,b")
        self.assertIn("'b'", str(e.exception))
        with self.assertRaises(ValueError) as e:
            hearth.Client("a:1,,b:2")
        self.assertIn("empty entry", str(e.exception))

    def test_a_dead_broker_is_unreachable_and_the_call_not_run(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        for target in [f"127.0.0.1:{port}", "unreachable.invalid:7700"]:
            with hearth.Client(target, retries=0) as client:
                with self.assertRaises(hearth.Unavailable) as e:
                    client.get_session("01ARZ3NDEKTSV4RRFFQ69G5FAV")
                self.assertTrue(e.exception.unreachable, e.exception)
                self.assertTrue(e.exception.not_run, e.exception)

    def test_two_dead_brokers_are_both_tried_before_giving_up(self) -> None:
        ports = []
        for _ in range(2):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
            s.close()
        with hearth.Client([f"127.0.0.1:{p}" for p in ports], retries=1) as client:
            with self.assertRaises(hearth.Unavailable):
                client.get_session("01ARZ3NDEKTSV4RRFFQ69G5FAV")
            # The first failed, the second was tried at once (the one retry allowed) and
            # failed too, so the next call starts at the first again.
            self.assertEqual(client.url, f"127.0.0.1:{ports[0]}")


if __name__ == "__main__":
    unittest.main()
