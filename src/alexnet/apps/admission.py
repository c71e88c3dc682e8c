"""`alexnet serve`'s admission: which request uses the model next, and which is told to come back.

The model serves one request at a time. A request that needs it is admitted by the time
it is expected to wait, not by how many wait: it joins the queue if its expected wait is
at most `max_wait` seconds (`alexnet serve --max-wait`, default 10), and is answered 503
with a Retry-After otherwise. What the model costs is measured, not counted:

- Costs: each kind of request (predict, activations, occlusion, neighbours) has a cost
  per unit (a patch of predict, a window position of occlusion, one for the others):
  the median of its last WINDOW measurements, and before the first a prior (PRIORS: the
  paper model's figures on 2 CPU cores, so that a first burst is judged by a pessimistic
  figure rather than admitted blindly). A request's cost is its kind's cost per unit
  times its units. The fc7 index is not built in this queue but beside it, on a copy of
  the model (session.py); its cost per image is measured too, and those who wait for it
  are bounded by the same max_wait, from its progress.
- The expected wait of a request is what the running request has left (its cost less the
  time it has run, at least 0) plus the costs of the requests queued ahead of it.
- The order (cheap before expensive, nobody starved): a new request goes ahead of every
  queued request that costs more than it does, except one whose promise it would break:
  each admitted request has a deadline (its arrival plus max_wait), and the new request
  never goes ahead of a queued one whose expected start, pushed back by the new
  request's cost, would pass that deadline. It is placed at the earliest place allowed
  and admitted if its own expected wait there is within max_wait. So a predict goes
  ahead of queued occlusions of the paper model, and a queued expensive request starts,
  as far as the estimates go, within max_wait of its arrival.
- Retry-After is the number of seconds (at least 1) after which the wait is expected to
  be within the bound again.
- A request whose client has gone (`gone()` is polled every POLL seconds while it waits)
  is dropped from the queue before it runs, and the wait of those behind it shrinks.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_WAIT = 10.0  # seconds a request may be expected to wait for the model: `--max-wait`
WINDOW = 20  # measurements a kind's cost is the median of
POLL = 0.2  # seconds between two looks at a waiting request's connection
PRIORS = {  # seconds a unit, before the first measurement (docs/BENCHMARKS.md, the paper model on 2 cores)
    "predict": 0.05,  # a patch
    "activations": 0.1,
    "occlusion": 0.01,  # a window position
    "neighbors": 0.1,  # the search, the index built
}
DEFAULT_PRIOR = 0.1  # a kind not in PRIORS


class Busy(Exception):
    """Answer 503 with Retry-After `retry_after` (whole seconds, at least 1)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))

    @classmethod
    def waiting(cls, wait: float, bound: float) -> Busy:
        """The expected wait is over the bound."""
        retry = max(1, math.ceil(wait - bound))
        return cls(
            f"busy: the model is expected to be free in {wait:.2f} s, more than the {bound:g} s a request may wait; "
            f"try again in {retry} s",
            retry,
        )


class Gone(Exception):
    """The client left while its request waited: nobody to answer."""


class Costs:
    """Seconds a unit of each kind of request: the median of the last WINDOW measured."""

    def __init__(self, priors: dict[str, float] | None = None) -> None:
        self.priors = dict(PRIORS if priors is None else priors)
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def per_unit(self, kind: str) -> float:
        with self._lock:
            seen = self._seen.get(kind)
            return statistics.median(seen) if seen else self.priors.get(kind, DEFAULT_PRIOR)

    def estimate(self, kind: str, units: float = 1) -> float:
        return self.per_unit(kind) * units

    def record(self, kind: str, seconds: float, units: float = 1) -> None:
        with self._lock:
            self._seen.setdefault(kind, deque(maxlen=WINDOW)).append(seconds / max(units, 1e-9))

    def measured(self, kind: str) -> int:
        """How many measurements the estimate of `kind` is made of now (at most WINDOW)."""
        with self._lock:
            return len(self._seen.get(kind, ()))


@dataclass(eq=False)
class Ticket:
    """One request's place: its expected cost in seconds and its deadline to start."""

    cost: float
    deadline: float
    gone: Callable[[], bool] = field(default=lambda: False, repr=False)


class Admission:
    """The queue for the model (thread-safe). `turn` is the whole protocol:

    with admission.turn(cost, gone):   # Busy (503), or Gone while waiting
        ... use the model ...
    """

    def __init__(self, max_wait: float = MAX_WAIT, clock: Callable[[], float] = time.monotonic) -> None:
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be at least 0, got {max_wait}")
        self.max_wait, self.clock = max_wait, clock
        self._cond = threading.Condition()
        self._queue: list[Ticket] = []
        self._running: Ticket | None = None
        self._started = 0.0
        self.dropped = 0  # requests whose client left while they waited

    # -------------------------------------------------------------- the rule

    def _left(self, now: float) -> float:
        """Expected seconds before the running request is done (0 if none)."""
        return 0.0 if self._running is None else max(0.0, self._running.cost - (now - self._started))

    def _place(self, cost: float, now: float) -> tuple[int, float]:
        """Where a request of this cost goes in the queue, and its expected wait there."""
        starts, at = [], now + self._left(now)
        for t in self._queue:
            starts.append(at)
            at += t.cost
        place = len(self._queue)
        while place > 0:
            ahead = self._queue[place - 1]
            if ahead.cost <= cost or starts[place - 1] + cost > ahead.deadline:
                break
            place -= 1
        wait = (starts[place] if place < len(self._queue) else at) - now
        return place, wait

    def expected_wait(self, cost: float) -> float:
        """The wait a request of this cost would be expected to have if it came now."""
        with self._cond:
            return self._place(cost, self.clock())[1]

    def join(self, cost: float, gone: Callable[[], bool] | None = None) -> Ticket:
        """Queue a request of this cost, or raise Busy."""
        with self._cond:
            now = self.clock()
            place, wait = self._place(cost, now)
            if wait > self.max_wait:
                raise Busy.waiting(wait, self.max_wait)
            ticket = Ticket(cost, now + self.max_wait, gone or (lambda: False))
            self._queue.insert(place, ticket)
            return ticket

    def wait(self, ticket: Ticket) -> None:
        """Block until the ticket's turn (it then holds the model); Gone if its client left."""
        while True:
            left = ticket.gone()
            with self._cond:
                if left:
                    self._queue.remove(ticket)
                    self.dropped += 1
                    self._cond.notify_all()
                    raise Gone
                if self._running is None and self._queue[0] is ticket:
                    self._queue.pop(0)
                    self._running, self._started = ticket, self.clock()
                    return
                self._cond.wait(POLL)

    def done(self, ticket: Ticket) -> None:
        """The ticket's request is over (run, or given up while it waited): its place is free."""
        with self._cond:
            if self._running is ticket:
                self._running = None
            elif ticket in self._queue:
                self._queue.remove(ticket)
            self._cond.notify_all()

    def turn(self, cost: float, gone: Callable[[], bool] | None = None) -> _Turn:
        return _Turn(self, cost, gone)

    # -------------------------------------------------------------- what tests and /api/health read

    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    def busy(self) -> bool:
        with self._cond:
            return self._running is not None


class _Turn:
    """`with admission.turn(cost, gone):` joins (Busy), waits (Gone), runs, and frees the model."""

    def __init__(self, admission: Admission, cost: float, gone: Callable[[], bool] | None) -> None:
        self.admission, self.cost, self.gone = admission, cost, gone
        self.ticket: Ticket | None = None

    def __enter__(self) -> Ticket:
        self.ticket = self.admission.join(self.cost, self.gone)
        try:
            self.admission.wait(self.ticket)
        except BaseException:
            self.admission.done(self.ticket)  # a no-op after Gone, which took it out
            raise
        return self.ticket

    def __exit__(self, *exc: object) -> None:
        if self.ticket is not None:
            self.admission.done(self.ticket)


class Uploads:
    """Bytes of uploads in memory at once (bodies being read, decoded images waiting for
    the model or in it): at most `limit`; a request that would pass it is Busy."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            if self.held + n > self.limit:
                raise Busy(f"busy: {self.held:,} bytes of uploads are in memory already; try again", 1)
            self.held += n

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n
