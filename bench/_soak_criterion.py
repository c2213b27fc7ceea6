"""The soak's verdicts, as pure functions: does a series grow without bound, did it all drain.

Growth (:func:`judge_growth`), applied to each watched series (RSS, store size, open windows,
consumer lag) over the samples taken while load was applied:

1. **Warm-up is ignored.**  The first ``warmup_frac`` (default 20 %) of the samples are dropped:
   caches fill, RocksDB writes its first files, windows fill up to their steady count.
2. **Thirds.**  The rest is cut into three equal runs of samples; ``middle`` and ``last`` are the
   second and third.  Medians, not means, so a few fault-induced spikes (an outage, a restart's
   catch-up) do not move them.
3. **Grew?**  ``median(last) - median(middle)`` is compared with the allowance
   ``max(rel_tolerance * |median(middle)|, abs_floor)``.  The floor keeps near-zero series
   (lag, backlog) from failing on noise; the relative part scales with the series.  It must
   stay well under 44 %: that is all a straight ramp from zero rises between the two medians
   (0.6 -> 0.87 of its end value), so a looser bound could never catch a queue that never
   catches up.
4. **Still rising?**  The least-squares slope over ``last`` (per second), extrapolated over the
   whole judged span (as long again as the post-warm-up period, i.e. "if it kept going like
   this for as long as we watched"), must also exceed the allowance.

5. **Per process, for RSS.**  RSS starts again from scratch when a worker restarts, so it is
   judged over the samples of the last worker process(es) only (the ``segments`` argument),
   with their own warm-up; the restarts are scheduled early enough to leave that a long run.

A series **fails only when both 3 and 4 hold**: it ended higher than it ran in the middle *and*
was still climbing at the end.  A sawtooth (a restart drops RSS, which then warms up again) or
a spike that has passed fails neither; a leak, a queue that never catches up, or windows that
never close fail both.  With fewer than ``min_samples`` judged samples the verdict is
inconclusive (not a failure): the run was too short to tell.

Drain (:func:`judge_drain`): after the load stops, every queue must come back to its floor
(lag and backlog to ~0, no window left open, no decision waiting for a retry) within the settle
period; each that did not is named.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "DRAIN_LIMITS",
    "GROWTH_LIMITS",
    "DrainVerdict",
    "GrowthLimit",
    "GrowthVerdict",
    "judge_drain",
    "judge_growth",
    "least_squares_slope",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class GrowthLimit:
    """How much a series may rise (middle third -> last third) before it counts as growth.

    ``rel_tolerance``: share of the middle median; ``abs_floor``: in the series' own unit,
    the least rise that can count (noise below it never fails).
    """

    rel_tolerance: float = 0.25
    abs_floor: float = 0.0
    warmup_frac: float = 0.2
    min_samples: int = 6


#: Per series: the allowance.  RSS gets the tightest relative bound (a leak is what a soak is
#: for), lag the loosest (it swings with faults) with a floor of a few seconds of load, store
#: size a floor of RocksDB's write buffers and compaction swings.
GROWTH_LIMITS: Mapping[str, GrowthLimit] = {
    "rss_mib": GrowthLimit(rel_tolerance=0.10, abs_floor=16.0),
    "store_mib": GrowthLimit(rel_tolerance=0.25, abs_floor=16.0),
    "windows_open": GrowthLimit(rel_tolerance=0.25, abs_floor=100.0),
    "windows_per_lifetime": GrowthLimit(rel_tolerance=0.25, abs_floor=15.0),
    "lag_records": GrowthLimit(rel_tolerance=0.30, abs_floor=1_000.0),
}

#: Per series: the most that may remain once the load has stopped and the settle period ends.
DRAIN_LIMITS: Mapping[str, float] = {
    "lag_records": 0.0,
    "windows_open": 0.0,
    "retry_queue": 0.0,
    "backlog": 0.0,
}


@dataclass(frozen=True, slots=True)
class GrowthVerdict:
    """What :func:`judge_growth` found for one series; ``reason`` says it in one line."""

    name: str
    failed: bool
    inconclusive: bool
    reason: str
    middle_median: float | None = None
    last_median: float | None = None
    allowance: float | None = None
    slope_per_s: float | None = None
    projected_rise: float | None = None


@dataclass(frozen=True, slots=True)
class DrainVerdict:
    failed: bool
    #: series name -> the value it was left at, for those above their limit.
    left: dict[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        if not self.failed:
            return "everything drained"
        return "did not drain: " + ", ".join(f"{k}={v:g}" for k, v in sorted(self.left.items()))


def least_squares_slope(times: Sequence[float], values: Sequence[float]) -> float:
    """The slope of the least-squares line through the points (0 for fewer than two)."""
    n = len(times)
    if n < 2:
        return 0.0
    mean_t = sum(times) / n
    mean_v = sum(values) / n
    var_t = sum((t - mean_t) ** 2 for t in times)
    if var_t == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True)) / var_t


def judge_growth(
    name: str,
    times: Sequence[float],
    values: Sequence[float | None],
    limit: GrowthLimit | None = None,
    *,
    segments: Sequence[Hashable] | None = None,
) -> GrowthVerdict:
    """Does the series ``values`` (at ``times``, seconds) grow without bound?  See the module
    docstring for the criterion.  ``None`` values (a sample that could not be taken, e.g.
    while the worker restarted) are skipped.

    ``segments``: for a series that restarts from scratch with its process (RSS), the process
    of each sample (e.g. its pids).  Only the last segment is judged, with its own warm-up:
    a fresh process warming up is not growth, and the one that ran to the end is the one
    whose trend matters.
    """
    limit = limit or GROWTH_LIMITS.get(name, GrowthLimit())
    if segments is not None:
        last_segment = segments[-1] if segments else None
        keep = [s == last_segment for s in segments]
    else:
        keep = [True] * len(times)
    points = [(t, float(v)) for t, v, k in zip(times, values, keep, strict=True)
              if k and v is not None and math.isfinite(v)]
    judged = points[int(len(points) * limit.warmup_frac):]
    if len(judged) < limit.min_samples:
        since = " of the last process" if segments is not None else ""
        return GrowthVerdict(
            name, failed=False, inconclusive=True,
            reason=f"inconclusive: {len(judged)} samples{since} after warm-up "
                   f"(need {limit.min_samples})",
        )
    third = len(judged) // 3
    middle = judged[third:2 * third]
    last = judged[2 * third:]
    middle_median = statistics.median(v for _, v in middle)
    last_median = statistics.median(v for _, v in last)
    allowance = max(limit.rel_tolerance * abs(middle_median), limit.abs_floor)
    slope = least_squares_slope([t for t, _ in last], [v for _, v in last])
    span_s = judged[-1][0] - judged[0][0]
    projected = slope * span_s
    rise = last_median - middle_median
    grew = rise > allowance
    rising = projected > allowance
    figures = (f"median {middle_median:.4g} -> {last_median:.4g} (allowed +{allowance:.4g}), "
               f"slope {slope:+.3g}/s over the last third, {projected:+.4g} if it went on "
               f"for {span_s:.0f} s")
    if grew and rising:
        reason = f"GROWS without bound: {figures}"
    elif grew:
        reason = f"ok (rose, but levelled off): {figures}"
    elif rising:
        reason = f"ok (still rising, but within the allowance so far): {figures}"
    else:
        reason = f"ok: {figures}"
    return GrowthVerdict(
        name,
        failed=grew and rising,
        inconclusive=False,
        reason=reason,
        middle_median=middle_median,
        last_median=last_median,
        allowance=allowance,
        slope_per_s=slope,
        projected_rise=projected,
    )


def judge_drain(
    final: Mapping[str, float | None], limits: Mapping[str, float] = DRAIN_LIMITS
) -> DrainVerdict:
    """Did each drained series come down to its limit?  A missing value (never measured after
    the load stopped) counts as not drained."""
    left = {}
    for name, most in limits.items():
        value = final.get(name)
        if value is None or not math.isfinite(value):
            left[name] = math.nan
        elif value > most:
            left[name] = value
    return DrainVerdict(failed=bool(left), left=left)
