"""The collector's recent prompts per audience, in memory and bounded (pure: no I/O).

The collector reads every partition of ``feedback-prompts`` (:mod:`worker.collector.prompt_feed`)
and keeps each audience's unexpired prompts here; a browser gets its own in the answer to its
event batch, or by ``GET /v1/prompts`` (:mod:`worker.collector.app`).

Invariants, and why they hold:

* **Bounded.**  At most :attr:`PromptBox.per_audience` prompts per audience (the newest) and
  :attr:`PromptBox.max_audiences` audiences (least recently added first out): memory is
  bounded whatever the topic holds.
* **Never another audience's prompts.**  :meth:`PromptBox.pending` answers only for the exact
  audience keys it is given (``user:<id>`` / ``session:<id>`` built by :func:`audience_keys`
  from the ids the caller claimed), so a prompt goes only to a request that names its user or
  session.  The ids are *claims* (the write key is public): see docs/feedback-prompts.md.
* **Reading is not consuming.**  A prompt stays until it expires, so every collector replica
  can answer for every user and a failed response loses nothing; the SDK drops repeats by
  ``prompt_id``.
* **Expired prompts are never offered**: the clock is passed in by the caller.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from worker.prompts import PromptRecord

__all__ = ["MAX_AUDIENCES_PER_REQUEST", "PromptBox", "audience_keys", "batch_audiences"]

#: Audiences one request may ask about (a batch may mix a few sessions; more is abuse).
MAX_AUDIENCES_PER_REQUEST = 8
#: The longest id accepted as a claim (the event contract's ShortText).
_MAX_ID_CHARS = 128


def audience_keys(user_id: str | None, session_id: str | None) -> list[str]:
    """The audience keys a caller may read: its user's and its session's (ids 1-128 chars)."""
    keys = []
    if user_id and len(user_id) <= _MAX_ID_CHARS:
        keys.append("user:" + user_id)
    if session_id and len(session_id) <= _MAX_ID_CHARS:
        keys.append("session:" + session_id)
    return keys


def batch_audiences(valid_values: Iterable[bytes]) -> list[str]:
    """The audience keys an accepted batch's valid events claim, first seen first, at most
    :data:`MAX_AUDIENCES_PER_REQUEST` (the values passed validation already)."""
    keys: dict[str, None] = {}
    for value in valid_values:
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(document, dict):
            continue
        user, session = document.get("user_id"), document.get("session_id")
        for key in audience_keys(
            user if isinstance(user, str) else None,
            session if isinstance(session, str) else None,
        ):
            keys[key] = None
            if len(keys) >= MAX_AUDIENCES_PER_REQUEST:
                return list(keys)
    return list(keys)


@dataclass
class PromptBox:
    """Recent prompts by audience key (module docstring)."""

    max_audiences: int = 100_000
    per_audience: int = 3
    _by_audience: OrderedDict[str, list[PromptRecord]] = field(default_factory=OrderedDict)

    def __len__(self) -> int:
        return sum(len(prompts) for prompts in self._by_audience.values())

    def add(self, value: bytes | None, *, now_ms: int) -> bool:
        """Keep one record of the topic; False when it does not parse, has no audience or
        has expired (then it is not kept)."""
        try:
            prompt = PromptRecord.model_validate_json(value or b"")
        except ValidationError:
            return False
        key = prompt.audience_key
        if key is None or prompt.expires_ms <= now_ms:
            return False
        kept = [p for p in self._by_audience.pop(key, []) if p.prompt_id != prompt.prompt_id]
        kept = [p for p in kept if p.expires_ms > now_ms]
        kept.append(prompt)
        self._by_audience[key] = kept[-self.per_audience :]
        while len(self._by_audience) > self.max_audiences:
            self._by_audience.popitem(last=False)
        return True

    def pending(self, keys: Iterable[str], *, now_ms: int) -> list[dict[str, Any]]:
        """The unexpired prompts of exactly these audience keys, oldest signal first, as the
        JSON documents the SDK reads."""
        found: dict[str, PromptRecord] = {}
        for key in keys:
            for prompt in self._by_audience.get(key, ()):
                if prompt.expires_ms > now_ms:
                    found[prompt.prompt_id] = prompt
        ordered = sorted(found.values(), key=lambda p: (p.signal_ms, p.prompt_id))
        return [p.model_dump(mode="json") for p in ordered]
