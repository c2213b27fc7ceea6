"""What events and time do to the state of one key: the rules of :mod:`worker.windows`.

:class:`Transitions` changes a :class:`~worker.windows.state.KeyState` in place and collects
the decisions and late events that result; :class:`~worker.windows.engine.WindowEngine`
decides which keys to hand it (the event's key, the keys the due index says are due), loads
and writes their state, and owns stream time, which it sets here before each step.  The
semantics (opening, joining, parking, closing, overriding, tombstones, caps) are those the
package docstring states; each method names the part it implements.

Nothing here reads a rule's name: what a rule means to the windows comes from its
:class:`~worker.rules.RuleSpec` (``kind``, ``closes_early``, ``overrides_ratings``,
``attaches_to_open_windows``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from worker.events import UI_EVENT_ADAPTER, Decision, Evidence, decision_id_for
from worker.rules import (
    RULE_FOR_TYPE,
    RULES,
    RuleConfig,
    RuleSpec,
    Signal,
    Verdict,
    cite,
    evaluate,
    utc,
)
from worker.rules import scores as scores_rule
from worker.validation import Accepted
from worker.windows.outcome import LateEvent, LateReason, Outcome
from worker.windows.state import SESSION_KEY_PREFIX, KeyState, Parked, Tomb, Window

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["NEVER", "Transitions"]

#: Stream time before the first event.
NEVER = -(2**62)


class Transitions:
    """The per-key steps of one partition's engine, and what they produced since
    :meth:`take`.

    ``stream_time`` and ``now_ms`` are set by the engine: stream time whenever it moves,
    the wall clock at the start of each step (it stamps the decisions' ``decided_at``).
    ``open`` counts open windows per rule; the engine resets it on rebuild.
    """

    def __init__(
        self, *, config: RuleConfig, grace_ms: int, max_signals: int, retention_ms: int
    ) -> None:
        self._cfg = config
        self._grace = grace_ms
        self._max_signals = max_signals
        self._retention = retention_ms
        self._length = {name: spec.window_ms(config) for name, spec in RULES.items()}
        self._rule_for_type: dict[str, RuleSpec[Any]] = dict(RULE_FOR_TYPE)
        #: Event types of rules that attach to open windows, and names of rules whose
        #: decisions override ratings (the capabilities of worker.rules.RuleSpec).
        self._attached: frozenset[str] = frozenset(
            t for spec in RULES.values() if spec.attaches_to_open_windows for t in spec.event_types
        )
        self._overriding: frozenset[str] = frozenset(
            name for name, spec in RULES.items() if spec.overrides_ratings
        )
        self.open: dict[str, int] = dict.fromkeys(RULES, 0)
        self.stream_time = NEVER
        self.now_ms = 0
        self._decisions: list[Decision] = []
        self._late: list[LateEvent] = []
        self._overdue = False  # set when a window's end moved behind stream time - grace
        self._now_dt = (NEVER, utc(0))  # decided_at of this step, converted once

    def apply(self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted) -> None:
        """Apply one new event of ``spec``'s rule to its key's state (step 3 of the package
        docstring).

        If a decisive signal ended a window so early that its grace has already passed, the
        key is settled at once: stream time will not move for it again.
        """
        if spec.kind == "window":
            if accepted.event.type == spec.opener:
                self._open_window(key, state, spec, accepted)
            else:
                self._add_to_window(key, state, spec, accepted)
        elif spec.kind == "instant":
            self._decide_at_once(key, state, spec, accepted)
        else:
            self._park_carried(key, state, spec, accepted)
        if self._overdue:
            self._overdue = False
            self.settle(key, state, self.stream_time)

    def take(self) -> Outcome:
        """The decisions and late events produced since the last call."""
        outcome = Outcome(self._decisions, self._late)
        self._decisions = []
        self._late = []
        return outcome

    # ------------------------------------------------------------------ apply

    def _open_window(
        self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted
    ) -> None:
        """An opener joins the open window of its rule that covers it (a second opener is
        evidence), is late when a closed window of its rule overlaps its range or its whole
        window is past grace, re-anchors an open window that starts after it but at most one
        length later (so shuffled input gives the window sorted input gives), or opens one."""
        t = accepted.event_time_ms
        rule = spec.name
        length = self._length[rule]
        signal = self._signal(spec, accepted)
        for w in state.windows:
            if w.rule == rule and w.start <= t <= w.nominal_end:
                self._join(key, state, w, spec, signal, accepted)  # a repeated opener
                return
        for tomb in state.tombs:
            if tomb.overlaps(rule, t, t + length):
                self._report(key, state, accepted, "window_closed")
                return
        if t + length + self._grace < self.stream_time:
            self._report(key, state, accepted, "window_closed")
            return
        event = accepted.event
        for w in state.windows:
            if w.rule == rule and t < w.start <= t + length:  # re-anchor at the earlier opener
                w.signals.append(w.anchor)
                w.anchor = signal
                w.start = t
                w.nominal_end = t + length
                w.session_id = event.session_id
                self._reshape(key, state, w, spec)
                return
        window = Window(rule, t, t + length, None, signal, event.session_id, [], 0)
        state.windows.append(window)
        self.open[rule] += 1
        self._reshape(key, state, window, spec)

    def _add_to_window(
        self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted
    ) -> None:
        """A window signal joins the open window covering its time, is late when a closed
        window covered it or its grace has passed, or else waits for an opener (parked): one
        that claims it can still arrive within grace."""
        t = accepted.event_time_ms
        rule = spec.name
        for w in state.windows:
            if w.rule == rule and w.start <= t <= w.nominal_end:
                self._join(key, state, w, spec, self._signal(spec, accepted), accepted)
                return
        for tomb in state.tombs:
            if tomb.covers(rule, t):
                self._report(key, state, accepted, "window_closed")
                return
        if t + self._grace < self.stream_time:
            self._report(key, state, accepted, "no_window")
            return
        self._park(key, state, spec, accepted)

    def _join(
        self,
        key: str,
        state: KeyState,
        w: Window,
        spec: RuleSpec[Any],
        signal: Signal,
        accepted: Accepted,
    ) -> None:
        """Store ``signal`` in ``w``.  A decisive signal moves the window's end back to its
        own time and pushes out later signals; the window is decided only after end + grace,
        so an earlier decisive signal that arrives later still wins whatever the order."""
        t = signal.time_ms
        if t > w.end:
            self._report(key, state, accepted, "after_close")
            return
        w.signals.append(signal)
        if spec.closes_early(signal) and (w.cut is None or t < w.cut):
            w.cut = t
            self._evict(key, state, w, lambda s: s.time_ms > t, "after_close")
            self._overdue = self._overdue or t + self._grace < self.stream_time
        if len(w.signals) > self._max_signals:
            self._cap(state, w, spec)

    def _reshape(self, key: str, state: KeyState, w: Window, spec: RuleSpec[Any]) -> None:
        """After a window opened or moved: fit its signals to its range, claim parked ones."""
        if not (w.signals or state.parked or state.tombs):
            return  # the common case: a fresh window with nothing to fit or claim
        start, nominal_end = w.start, w.nominal_end
        for tomb in state.tombs:
            if tomb.rule in self._overriding and start <= tomb.start + self._retention:
                e = tomb.start
                w.explicit_ms = e if w.explicit_ms is None else min(w.explicit_ms, e)
        if w.signals:
            self._evict(key, state, w, lambda s: s.time_ms > nominal_end, "no_window")
        claimed: list[Parked] = []
        if state.parked:
            types = spec.event_types
            keep: list[Parked] = []
            for h in state.parked:
                if h.signal.type in types and start <= h.signal.time_ms <= nominal_end:
                    claimed.append(h)
                else:
                    keep.append(h)
            state.parked = keep
        candidates = (*w.signals, *(h.signal for h in claimed))
        decisive = [s.time_ms for s in candidates if spec.closes_early(s)]
        cut = w.cut = min(decisive) if decisive else None
        for h in claimed:
            if cut is not None and h.signal.time_ms > cut:
                self._late_parked(key, state, h, "after_close")
            else:
                w.signals.append(h.signal)
        if cut is not None:
            self._evict(key, state, w, lambda s: s.time_ms > cut, "after_close")
            self._overdue = self._overdue or w.end + self._grace < self.stream_time
        if len(w.signals) > self._max_signals:
            self._cap(state, w, spec)

    def _evict(
        self,
        key: str,
        state: KeyState,
        w: Window,
        outside: Callable[[Signal], bool],
        reason: LateReason,
    ) -> None:
        """Push out stored signals for which ``outside(signal)``; attached events (of rules
        that attach to open windows) stay: their time alone decides which windows carry
        them."""
        keep: list[Signal] = []
        for s in w.signals:
            if s.type not in self._attached and outside(s):
                routing = self._routing(key)
                self._late.append(LateEvent(routing, s.event_id, s.type, s.time_ms, reason))
                self._remember(state, s.event_id)
            else:
                keep.append(s)
        w.signals = keep

    def _cap(self, state: KeyState, w: Window, spec: RuleSpec[Any]) -> None:
        """Keep the earliest ``max_signals`` signals by (time, id), so which ones survive does
        not depend on arrival order; never drop the decisive one or attached events."""
        signals = w.signals
        cut = w.cut
        attached = self._attached

        def pinned(s: Signal) -> bool:
            return s.type in attached or (s.time_ms == cut and spec.closes_early(s))

        while len(signals) > self._max_signals:
            candidates = [i for i, s in enumerate(signals) if not pinned(s)] or list(
                range(len(signals))
            )
            victim = max(candidates, key=lambda i: signals[i].order)
            self._remember(state, signals.pop(victim).event_id)
            w.overflow += 1

    def _park(self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted) -> None:
        """Keep an event until stream time passes its time + grace (:meth:`settle`); over the
        per-key cap the latest parked event by (time, id) is reported ``capped``."""
        event = accepted.event
        signal = self._signal(spec, accepted)
        # a parked signal keeps its event's JSON so that, if no window claims it, the late
        # topic gets the whole event; a carried event is (almost) never late: it skips that cost
        raw = None if spec.kind == "carried" else event.model_dump_json()
        state.parked.append(Parked(signal, raw, event.session_id))
        if len(state.parked) > self._max_signals:
            victim = max(range(len(state.parked)), key=lambda i: state.parked[i].signal.order)
            self._late_parked(key, state, state.parked.pop(victim), "capped")

    def _park_carried(
        self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted
    ) -> None:
        """An event of a carried rule is parked for grace; one whose grace has already passed
        is carried (or decided alone) at once."""
        if accepted.event_time_ms + self._grace < self.stream_time:  # too late to park
            parked = Parked(self._signal(spec, accepted), None, accepted.event.session_id)
            self._carry(key, state, spec, [parked], {parked.signal.event_id: accepted})
        else:
            self._park(key, state, spec, accepted)

    def _decide_at_once(
        self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted
    ) -> None:
        """An instant rule's event is decided now, over its own instant; its tombstone makes a
        second event of the key at the same millisecond late (it would share the decision
        id).  A decision that overrides ratings marks the key's open windows here, and the
        tombstone marks windows opened later (:meth:`_reshape`)."""
        t = accepted.event_time_ms
        rule = spec.name
        if any(tomb.starts_at(rule, t) for tomb in state.tombs):
            self._report(key, state, accepted, "window_closed")  # same instant, same id
            return
        signal = self._signal(spec, accepted)
        verdict = evaluate(spec, signal, (), closed_at_ms=t, config=self._cfg)
        event = accepted.event
        if verdict is not None:
            self._emit_instant(
                spec, key, t, verdict, verdict.rating, event.session_id, event.request_id
            )
        self._entomb(state, rule, t, t, [accepted.event.event_id])
        if spec.overrides_ratings:  # explicit wins (worker.windows)
            for w in state.windows:
                if w.start <= t + self._retention:
                    w.explicit_ms = t if w.explicit_ms is None else min(w.explicit_ms, t)

    # ------------------------------------------------------------------ settle

    def settle(self, key: str, state: KeyState, horizon_ms: int) -> None:
        """Expire parked events and close windows of one key that are due before ``horizon_ms``."""
        grace = self._grace
        if state.parked:
            expired = [h for h in state.parked if h.signal.time_ms + grace < horizon_ms]
            if expired:
                state.parked = [h for h in state.parked if h.signal.time_ms + grace >= horizon_ms]
                carried: dict[str, list[Parked]] = {}
                for h in expired:
                    spec = self._rule_for_type[h.signal.type]
                    if spec.kind == "carried":
                        carried.setdefault(spec.name, []).append(h)
                    else:
                        self._late_parked(key, state, h, "no_window")
                for name, reports in carried.items():
                    self._carry(key, state, RULES[name], reports, {})
        closing = [w for w in state.windows if w.end + grace < horizon_ms]
        for w in sorted(closing, key=lambda w: (w.end, w.rule)):
            self._close(key, state, w)

    def _carry(
        self,
        key: str,
        state: KeyState,
        spec: RuleSpec[Any],
        reports: list[Parked],
        arrived: dict[str, Accepted],
    ) -> None:
        """Attach ``spec``'s reports to the open windows covering them (if the rule attaches
        to open windows), or decide them alone, one decision per event time."""
        attaches = spec.attaches_to_open_windows
        alone: dict[int, list[Parked]] = {}
        for report in reports:
            t = report.signal.time_ms
            covering = [w for w in state.windows if w.start <= t <= w.end] if attaches else []
            for w in covering:
                w.signals.append(report.signal)
            if not covering:
                alone.setdefault(t, []).append(report)
        for t, group in sorted(alone.items()):
            if any(tomb.starts_at(spec.name, t) for tomb in state.tombs):
                for report in group:
                    if report.signal.event_id in arrived:
                        self._report(key, state, arrived[report.signal.event_id], "window_closed")
                    else:
                        self._late_parked(key, state, report, "window_closed")
                continue
            signals = sorted((r.signal for r in group), key=lambda s: s.order)
            verdict = evaluate(spec, signals[0], signals[1:], closed_at_ms=t, config=self._cfg)
            if verdict is not None:
                self._emit_instant(spec, key, t, verdict, None, group[0].session_id, key)
            self._entomb(state, spec.name, t, t, [r.signal.event_id for r in group])

    def _close(self, key: str, state: KeyState, w: Window) -> None:
        """Decide ``w`` and leave its tombstone.  The rule folds the anchor and its own
        signals; attached events merge into the scores; an override suppresses the rating
        but not the scores, and the suppressed rating is kept as the decision's
        ``shadow_rating`` (for calibration; delivery never posts it).  When there is neither
        a rating, a shadow nor a score, the window writes its abstention (rating null, no
        scores, the signals it saw) if ``outbox_abstentions`` is on, and nothing otherwise:
        so with it on, every closed window writes exactly one decision."""
        spec = RULES[w.rule]
        own = [s for s in w.signals if s.type not in self._attached]
        carried = [s for s in w.signals if s.type in self._attached]
        anchor = w.anchor
        end = w.end
        verdict = evaluate(spec, anchor, own, closed_at_ms=end, config=self._cfg)
        suppressed = w.explicit_ms is not None and w.explicit_ms <= end
        rating = None if verdict is None or suppressed else verdict.rating
        shadow = verdict.rating if verdict is not None and suppressed else None
        scores, carried_evidence = scores_rule.merge(
            verdict.scores if verdict is not None else {}, carried
        )
        decided = (verdict is not None or bool(carried)) and (
            rating is not None or shadow is not None or bool(scores)
        )
        if decided or self._cfg.outbox_abstentions:
            evidence = (
                list(verdict.evidence)
                if verdict is not None
                else [cite(s) for s in sorted([anchor, *own], key=lambda s: s.order)]
            )
            if carried_evidence:
                evidence.extend(carried_evidence)
                evidence.sort(key=lambda e: (e.event_time, e.event_id))
            if w.overflow:
                evidence.append(
                    Evidence(
                        event_id="",
                        type="signals_dropped",
                        event_time=utc(end),
                        detail=f"{w.overflow} signals over the cap of {self._max_signals} "
                        "were not stored",
                    )
                )
            self._emit(
                spec,
                key,
                start=w.start,
                end=end,
                rating=rating,
                scores=scores,
                evidence=evidence,
                session_id=w.session_id,
                request_id=key,
                shadow_rating=shadow,
            )
        ids = [w.anchor.event_id, *(s.event_id for s in w.signals)]
        self._entomb(state, w.rule, w.start, w.nominal_end, ids)
        state.windows.remove(w)
        self.open[w.rule] -= 1

    def purge(self, state: KeyState) -> None:
        """Drop tombstones whose purge time stream time has passed: by then stream time alone
        proves any event for their range late, so the window cannot reopen."""
        horizon = self.stream_time
        kept = [tomb for tomb in state.tombs if tomb.purge_at_ms >= horizon]
        if len(kept) != len(state.tombs):
            state.tombs = kept
            state.ids = state.collect_ids()

    # ------------------------------------------------------------------ helpers

    def _signal(self, spec: RuleSpec[Any], accepted: Accepted) -> Signal:
        event = accepted.event
        data = spec.extract(event, self._cfg)
        return Signal(accepted.event_time_ms, event.event_id, event.type, data)

    def _entomb(
        self, state: KeyState, rule: str, start: int, nominal_end: int, ids: list[str]
    ) -> None:
        purge_at = nominal_end + self._grace + max(self._length[rule], self._retention)
        if purge_at >= self.stream_time:  # else stream time alone already proves lateness
            state.tombs.append(Tomb(rule, start, nominal_end, purge_at, ids))

    def _remember(self, state: KeyState, event_id: str) -> None:
        """Keep the id of an event that left no other trace (capped, oldest dropped)."""
        state.other.append(event_id)
        if len(state.other) > self._max_signals:
            del state.other[0]
            state.ids = state.collect_ids()

    def _late_parked(self, key: str, state: KeyState, parked: Parked, reason: LateReason) -> None:
        """Report a parked entry; its event is rebuilt from the JSON kept with it, if any."""
        s = parked.signal
        raw = parked.event_json
        accepted = Accepted(UI_EVENT_ADAPTER.validate_json(raw), s.time_ms) if raw else None
        self._late.append(
            LateEvent(self._routing(key), s.event_id, s.type, s.time_ms, reason, accepted)
        )
        self._remember(state, s.event_id)

    def _report(self, key: str, state: KeyState, accepted: Accepted, reason: LateReason) -> None:
        event = accepted.event
        self._late.append(
            LateEvent(
                accepted.key, event.event_id, event.type, accepted.event_time_ms, reason, accepted
            )
        )
        self._remember(state, event.event_id)

    def _decided_at(self) -> datetime:
        if self._now_dt[0] != self.now_ms:
            self._now_dt = (self.now_ms, utc(self.now_ms))
        return self._now_dt[1]

    @staticmethod
    def _routing(key: str) -> str:
        return key.removeprefix(SESSION_KEY_PREFIX)

    def _emit_instant(
        self,
        spec: RuleSpec[Any],
        key: str,
        t: int,
        verdict: Verdict,
        rating: bool | None,
        session_id: str | None,
        request_id: str | None,
    ) -> None:
        """A decision over the instant ``t``: an instant rule's, or carried events'
        decided alone."""
        scores, evidence = dict(verdict.scores), list(verdict.evidence)
        self._emit(
            spec,
            key,
            start=t,
            end=t,
            rating=rating,
            scores=scores,
            evidence=evidence,
            session_id=session_id,
            request_id=request_id,
        )

    def _emit(
        self,
        spec: RuleSpec[Any],
        key: str,
        *,
        start: int,
        end: int,
        rating: bool | None,
        scores: dict[str, int],
        evidence: list[Evidence],
        session_id: str | None,
        request_id: str | None,
        shadow_rating: bool | None = None,
    ) -> None:
        target_id = self._routing(key)
        self._decisions.append(
            Decision(
                decision_id=decision_id_for(target_id, spec.name, start),
                target=spec.target,
                request_id=request_id,
                session_id=target_id if spec.target == "session" else session_id,
                rule=spec.name,
                rating=rating,
                shadow_rating=shadow_rating,
                scores=scores,
                window_start=utc(start),
                window_end=utc(end),
                decided_at=self._decided_at(),
                signals=evidence,
                rule_version=spec.version,
            )
        )
