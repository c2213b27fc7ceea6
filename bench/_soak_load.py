"""The soak's steady mixed load: simulated journeys in real time, with a share of hostile records.

:class:`Load` turns a target rate (records per second, hostile ones included) into records due
at wall-clock times.  Valid records are the devtools traffic simulator's journeys
(:func:`worker.devtools.traffic.generate`, every kind and intent, shaped for the short windows),
each event sent when its event time comes, keyed by request id (a share unkeyed, so the
rekey path runs too).  The hostile share is spread over four kinds:

* ``malformed``  not JSON / wrong shape / bad ids (:func:`~worker.devtools.traffic.hostile_record`)
* ``wrong_type`` a real event with one field of the wrong type (must go to the invalid topic)
* ``duplicate``  a valid event sent again, byte for byte, seconds later (processed once)
* ``late``       a signal for a journey whose windows closed long ago (to the late topic)

No Kafka here: :meth:`Load.due` returns what to send now, the caller sends it.  The journeys'
intended ratings are kept (request id -> rule -> rating) for the end-of-run check; their
events are dropped once scheduled, so memory stays small.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.devtools.traffic import Journey, Windows, generate, hostile_record, iso

__all__ = ["HOSTILE_KINDS", "Load", "Record"]

HOSTILE_KINDS = ("malformed", "wrong_type", "duplicate", "late")
#: Journeys this old (event time) get late signals; far past every window + grace + idle close.
_LATE_AGE_MS = 45_000


@dataclass(order=True, slots=True)
class Record:
    due_ms: int
    seq: int
    key: bytes | None = field(compare=False)
    value: bytes = field(compare=False)
    kind: str = field(compare=False)  # "valid" or one of HOSTILE_KINDS


class Load:
    """Records at ``rate`` per second, ``hostile_share`` of them hostile."""

    def __init__(
        self,
        *,
        rate: float,
        windows: Windows,
        hostile_share: float = 0.05,
        unkeyed_share: float = 0.05,
        seed: int = 11,
    ) -> None:
        self.rate = rate
        self.windows = windows
        self.hostile_share = hostile_share
        self.unkeyed_share = unkeyed_share
        self.rng = random.Random(seed)
        self._seed = seed * 1_000_000
        self._seq = itertools.count()
        self._heap: list[Record] = []
        self._recent_valid: deque[tuple[bytes | None, bytes]] = deque(maxlen=200)
        self._old_journeys: deque[tuple[int, str, str]] = deque()
        self.journeys: list[Journey] = []
        #: event ids of the late records sent on purpose (others on the late topic are not).
        self.late_ids: set[str] = set()
        #: request ids of the journeys sent without a key (they reach their owner by the
        #: rekeyed topic's detour).
        self.unkeyed_requests: set[str] = set()
        self.sent: Counter[str] = Counter()
        # Mean events per journey, from a throwaway sample, to turn records/s into journeys/s.
        sample = generate(2_000, start_ms=0, spread_ms=1_000, windows=windows, seed=seed)
        self.events_per_journey = sum(len(j.events) for j in sample) / len(sample)
        self._journey_credit = 0.0
        self._hostile_credit = 0.0

    def schedule_second(self, start_ms: int) -> None:
        """Plan one second of load starting at ``start_ms`` (wall clock = event time)."""
        valid_rate = self.rate * (1 - self.hostile_share)
        self._journey_credit += valid_rate / self.events_per_journey
        n = int(self._journey_credit)
        self._journey_credit -= n
        if n:
            self._seed += 1
            for journey in generate(n, start_ms=start_ms, spread_ms=1_000,
                                    windows=self.windows, seed=self._seed):
                self._schedule_journey(journey)
        self._hostile_credit += self.rate * self.hostile_share
        h = int(self._hostile_credit)
        self._hostile_credit -= h
        for _ in range(h):
            self._schedule_hostile(start_ms + self.rng.randrange(1_000))

    def due(self, now_ms: int) -> list[Record]:
        """Every record whose time has come, oldest first."""
        out = []
        while self._heap and self._heap[0].due_ms <= now_ms:
            record = heapq.heappop(self._heap)
            self.sent[record.kind] += 1
            if record.kind == "valid":
                self._recent_valid.append((record.key, record.value))
            out.append(record)
        return out

    def pending(self) -> int:
        return len(self._heap)

    def last_due_ms(self) -> int:
        return max((r.due_ms for r in self._heap), default=0)

    # ---- internals

    def _push(self, due_ms: int, key: bytes | None, value: bytes, kind: str) -> None:
        heapq.heappush(self._heap, Record(due_ms, next(self._seq), key, value, kind))

    def _schedule_journey(self, journey: Journey) -> None:
        key = None if self.rng.random() < self.unkeyed_share else journey.request_id.encode()
        if key is None:
            self.unkeyed_requests.add(journey.request_id)
        for event in journey.events:
            self._push(_epoch_ms(event["occurred_at"]), key, orjson.dumps(event), "valid")
        self._old_journeys.append((journey.start_ms, journey.request_id, journey.kind))
        while journey.start_ms - self._old_journeys[0][0] > 3 * _LATE_AGE_MS:
            self._old_journeys.popleft()
        journey.events = []  # scheduled; only the intent is kept for the final check
        self.journeys.append(journey)

    def _schedule_hostile(self, at_ms: int) -> None:
        kind = self.rng.choice(HOSTILE_KINDS)
        if kind == "duplicate" and self._recent_valid:
            key, value = self.rng.choice(self._recent_valid)
            self._push(at_ms, key, value, kind)
            return
        if kind == "late":
            old = [j for j in itertools.islice(self._old_journeys, 0, 200)
                   if at_ms - j[0] > _LATE_AGE_MS]
            if old:
                start_ms, request_id, _ = self.rng.choice(old)
                event = {
                    "event_id": str(_uuid4(self.rng)),
                    "type": "response_copied",
                    "request_id": request_id,
                    "occurred_at": iso(start_ms + 500),
                }
                self.late_ids.add(event["event_id"])
                self._push(at_ms, request_id.encode(), orjson.dumps(event), kind)
                return
        if kind == "wrong_type":
            self._push(at_ms, None, self._wrong_type(at_ms), kind)
            return
        self._push(at_ms, None, hostile_record(self.rng), "malformed")

    def _wrong_type(self, at_ms: int) -> bytes:
        base: dict[str, Any] = {
            "event_id": str(_uuid4(self.rng)),
            "type": "results_shown",
            "request_id": str(_uuid4(self.rng)),
            "occurred_at": iso(at_ms),
            "properties": {"result_count": 10},
        }
        event = copy.deepcopy(base)
        match self.rng.randrange(5):
            case 0:
                event["properties"]["result_count"] = "ten"
            case 1:
                event["type"] = "feedback_given"
                event["properties"] = {"rating": "yes"}
            case 2:
                event["occurred_at"] = at_ms  # a number, not RFC 3339
            case 3:
                event["request_id"] = 12345
            case _:
                event["properties"] = ["not", "an", "object"]
        return orjson.dumps(event)


def _uuid4(rng: random.Random) -> Any:
    import uuid

    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _epoch_ms(occurred_at: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(occurred_at).timestamp() * 1000)
