"""Which broker a client talks to, and where it goes when that one fails.

A :class:`hearth.Client` is given a list of brokers. It talks to one at a time, follows a
standby to the leader it names (``hearth-leader``), and when the broker in use cannot be
dialled it moves on: to the next broker in its list, or, from a named leader that cannot be
dialled, back to its list. That last case is common: brokers inside a container network or
a cluster advertise names (``https://broker-a:7700``) that a client outside reaches only
through other addresses (published ports), which it was given as its list.

:class:`Route` is the bookkeeping alone, with no I/O and the clock passed in; it follows the
same rules as the Rust SDK's ``route.rs``:

- A dial failure moves to the next listed broker at once, without the retry backoff, until
  every listed broker has failed to dial since the last pause; then the caller backs off
  once and starts the round again.
- A broker that could not be dialled is passed over for :data:`UNREACHABLE_FOR` seconds:
  the rotation skips it (unless every listed broker is in that state), and a standby that
  names it as the leader is not followed. A standby keeps naming a dead leader until the
  leader's lease runs out; following it would bounce between the two.
- A standby's answer naming a leader switches to that leader, by its listed entry when the
  list holds the same address, else by the URL as named.
- Any other failure stays where it is: the broker answered, so it is up.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["Route", "UNREACHABLE_FOR", "NOW", "BACKOFF", "parse_broker"]

#: Seconds a broker that could not be dialled is passed over: long enough to cover a leader
#: election (the default lease is 3 s), short enough that a restarted broker is used again
#: soon.
UNREACHABLE_FOR = 10.0

#: :meth:`Route.failed`: try again at once (the next attempt goes to another broker).
NOW = "now"
#: :meth:`Route.failed`: wait out the retry backoff first.
BACKOFF = "backoff"


def parse_broker(entry: str) -> Tuple[str, bool]:
    """``host:port``, ``http://host:port`` or ``https://host:port`` -> (address, tls).

    Raises:
        ValueError: naming the entry, when it is not one of those forms.
    """
    text = entry.strip()
    tls = False
    if text.startswith("https://"):
        text, tls = text[len("https://") :], True
    elif text.startswith("http://"):
        text = text[len("http://") :]
    elif "://" in text:
        raise ValueError(
            f"invalid broker address {entry!r}: use host:port, http://host:port or "
            "https://host:port"
        )
    address = text.rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"invalid broker address {entry!r}: it needs a host and a port, such as "
            "127.0.0.1:7700 or https://broker-a:7700"
        )
    return address, tls


def _key(url: str) -> str:
    """The same broker's addresses compare equal: ``127.0.0.1:7700``,
    ``http://127.0.0.1:7700`` and ``http://127.0.0.1:7700/``."""
    try:
        address, tls = parse_broker(url)
    except ValueError:
        return url.strip()
    return f"{'https' if tls else 'http'}://{address}"


class Route:
    """The client's list of brokers and its position in it."""

    def __init__(self, listed: Sequence[str]) -> None:
        if not listed:
            raise ValueError("a route needs at least one broker")
        self.listed: List[str] = list(listed)
        #: Index into :attr:`listed`, or ``None`` while on a named leader not in the list.
        self.index: Optional[int] = 0
        #: The named leader's URL while :attr:`index` is ``None``.
        self.named: Optional[str] = None
        #: The listed broker used last, where the rotation resumes after a named leader.
        self.last_listed = 0
        #: Bumped on every move, so that a failure seen by a call that started before
        #: another call moved the client does not move it a second time.
        self.generation = 0
        self._unreachable: Dict[str, float] = {}
        self._dial_failures = 0

    @property
    def url(self) -> str:
        """The broker in use."""
        if self.index is not None:
            return self.listed[self.index]
        assert self.named is not None
        return self.named

    def answered(self, generation: int) -> None:
        """A broker answered an attempt made at ``generation``: it is up."""
        if generation != self.generation:
            return
        self._dial_failures = 0
        self._unreachable.pop(_key(self.url), None)

    def failed(
        self,
        generation: int,
        now: float,
        *,
        unreachable: bool = False,
        leader: Optional[str] = None,
    ) -> str:
        """An attempt made at ``generation`` failed at ``now`` (monotonic seconds):
        ``unreachable`` when no connection could be made, else ``leader`` when a standby
        named one. Moves the client if that calls for it; returns :data:`NOW` or
        :data:`BACKOFF`."""
        self._unreachable = {u: t for u, t in self._unreachable.items() if t > now}
        if generation != self.generation:
            # Another call moved the client since this attempt started.
            return NOW if unreachable else BACKOFF
        if unreachable:
            self._unreachable[_key(self.url)] = now + UNREACHABLE_FOR
            self._dial_failures += 1
            start = self.index if self.index is not None else self.last_listed
            self._move(self._next_listed(start, now), None)
            if self._dial_failures >= len(self.listed):
                self._dial_failures = 0
                return BACKOFF
            return NOW
        self.answered(generation)
        if (
            leader is not None
            and _key(leader) != _key(self.url)
            and not self._is_unreachable(leader, now)
        ):
            listed = [i for i, u in enumerate(self.listed) if _key(u) == _key(leader)]
            if listed:
                self._move(listed[0], None)
            else:
                self._move(None, leader)
        return BACKOFF

    def start_at(self, index: int, now: float) -> None:
        """Starts at listed broker ``index``, the ones before it having failed at ``now``."""
        for url in self.listed[:index]:
            self._unreachable[_key(url)] = now + UNREACHABLE_FOR
        self._move(index, None)

    def _next_listed(self, start: int, now: float) -> int:
        n = len(self.listed)
        for step in range(1, n + 1):
            i = (start + step) % n
            if not self._is_unreachable(self.listed[i], now):
                return i
        return (start + 1) % n

    def _is_unreachable(self, url: str, now: float) -> bool:
        return self._unreachable.get(_key(url), 0.0) > now

    def _move(self, index: Optional[int], named: Optional[str]) -> None:
        if index is not None:
            self.last_listed = index
        self.index = index
        self.named = named
        self.generation += 1
