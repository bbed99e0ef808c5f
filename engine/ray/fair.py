"""Replica slots handed out round robin across the tokens with units waiting (fair share).

The ingress runs every job at once on a thread of its own, so its job queue (FairQueue) never
holds anything back; what is scarce is replicas. A unit goes to Serve only when a replica is
free (Serve's router would hold it and look again after a backoff, leaving the replica idle),
and the units waiting for one wait here: each token (artist) in its own FIFO, the next free
slot to the token served least recently. One artist's 40-shot Generate All then takes every
third replica while two others have work, not all of them until it is done.

Any thread. Imports no ray.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class FairSlots:
    """``slots`` replica slots; ``acquire`` waits its token's turn, ``release`` frees a slot.

    The turn is the least recently served token's: tokens that keep units waiting take turns
    (round robin), and one that arrives, or comes back after a while, goes first instead of
    behind everyone who was just served: an artist's single shot waits for one free replica,
    not for a round of the others' units.
    """

    def __init__(self, slots: int) -> None:
        self.slots = max(1, slots)
        self._free = self.slots
        self._waiting: dict[str, deque[object]] = {}
        self._served: dict[str, int] = {}  # owner -> when it was last served (a counter)
        self._arrived: dict[object, int] = {}  # ticket -> arrival order, for ties
        self._count = 0
        self._ready = threading.Condition()
        self.order: deque[str] = deque(maxlen=10_000)  # owners in the order they were served

    def acquire(self, owner: str, cancelled: Callable[[], bool] = lambda: False, poll_s: float = 0.2) -> bool:
        """Wait for a free slot and this owner's turn (FIFO within an owner); False if
        ``cancelled`` turned true first (checked every ``poll_s``)."""
        ticket = object()
        with self._ready:
            self._count += 1
            self._arrived[ticket] = self._count
            self._waiting.setdefault(owner, deque()).append(ticket)
            while not (self._free > 0 and self._next() is ticket):
                if cancelled():
                    self._leave(owner, ticket)
                    return False
                self._ready.wait(poll_s)
            self._free -= 1
            self._leave(owner, ticket)
            self._count += 1
            self._served[owner] = self._count
            self.order.append(owner)
            return True

    def release(self) -> None:
        with self._ready:
            self._free = min(self.slots, self._free + 1)
            self._ready.notify_all()

    def waiting(self) -> dict[str, int]:
        """Units waiting per owner (for the status and the tests)."""
        with self._ready:
            return {owner: len(tickets) for owner, tickets in self._waiting.items()}

    def _next(self) -> object | None:
        """The ticket served next: the first of the least recently served owner (earliest ticket on a tie)."""
        if not self._waiting:
            return None
        owner = min(self._waiting, key=lambda o: (self._served.get(o, 0), self._arrived[self._waiting[o][0]]))
        return self._waiting[owner][0]

    def _leave(self, owner: str, ticket: object) -> None:
        tickets = self._waiting[owner]
        tickets.remove(ticket)
        del self._arrived[ticket]
        if not tickets:
            del self._waiting[owner]
        self._ready.notify_all()
