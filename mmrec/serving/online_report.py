"""What users did with what the service showed: CTR, add-to-cart rate and CVR per variant, per market and
per position, with confidence intervals, and each variant compared with the control.

Every impression (a list shown, with its request id) is one trial per metric: it succeeds when an event
of that kind was attributed to its request id (POST /events with `request_id`):

    ctr        a `click`       cart_rate  a `cart`       cvr        a `purchase`

Rates get Wilson score intervals (`evaluation.ab`'s, as its offline split test reports them). A variant
is compared with the control by the difference of rates, its normal-approximation interval (as
`evaluation.ab.ab_split`) and the two-sided p-value of the pooled two-proportion z-test. A comparison is
*underpowered* when these sample sizes had less than an 80% chance of detecting a relative lift of
`min_lift` over the control's rate (and `needed_per_variant` says how many impressions would do).

Assignment is per user, and one user's impressions are not independent trials: with users who see many
lists the intervals are somewhat too narrow. Per position, the trials are the impressions that showed an
item there; an event's position is the one its client gave, else the item's place in the impression.

The report is computed from any impressions and attributed events (`online_report`), so it runs on a data
dir (`from_data_dir`, `mmrec report online`), on an open interaction log (`from_log`, GET /metrics/online)
or inside a simulator.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmrec.serving.interaction_log import Attributed, Impression, InteractionLog

METRICS: dict[str, str] = {"ctr": "click", "cart_rate": "cart", "cvr": "purchase"}
POWER = 0.8
NO_MARKET = "(none)"


@dataclass(frozen=True)
class Rate:
    """successes / n with its interval (None when n = 0)."""

    successes: int
    n: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Outcomes:
    """What the lists shown to one slice of traffic (a variant, market, position...) led to."""

    impressions: int
    users: int
    ctr: Rate
    cart_rate: Rate
    cvr: Rate


@dataclass(frozen=True)
class Difference:
    """`variant` minus `control` on one metric."""

    metric: str
    variant: str
    control: str
    diff: float | None
    low: float | None
    high: float | None
    p_value: float | None
    power: float | None
    needed_per_variant: int | None
    underpowered: bool


@dataclass(frozen=True)
class OnlineReport:
    level: float
    min_lift: float
    since: float | None
    control: str | None
    impressions: int
    attributed_events: int
    unattributed_events: int  # naming a request id no impression has (erased, or never shown)
    by_surface: dict[str, Outcomes] = field(default_factory=dict)
    by_variant: dict[str, Outcomes] = field(default_factory=dict)  # /recommend only, as the rest below
    by_market: dict[str, Outcomes] = field(default_factory=dict)
    by_position: dict[int, Outcomes] = field(default_factory=dict)
    comparisons: list[Difference] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (an undefined number is None)."""
        out = asdict(self)
        out["by_position"] = {str(k): v for k, v in out["by_position"].items()}
        return _finite(out)

    def to_text(self) -> str:
        pct = lambda r: "-" if r.rate is None else f"{100 * r.rate:6.2f}% [{100 * r.low:.2f}, {100 * r.high:.2f}]"  # noqa: E731
        lines = [f"impressions {self.impressions}, attributed events {self.attributed_events} "
                 f"(unattributed {self.unattributed_events}), intervals at {100 * self.level:g}%"]
        sections = (("surface", self.by_surface), ("variant (/recommend)", self.by_variant),
                    ("market (/recommend)", self.by_market), ("position (/recommend)", self.by_position))
        for title, groups in sections:
            if not groups:
                continue
            lines += ["", f"{'by ' + title:<24} {'shown':>7} {'users':>6}  {'CTR':<26} {'add-to-cart':<26} {'CVR':<26}"]
            for key, g in groups.items():
                lines.append(f"{str(key):<24} {g.impressions:>7} {g.users:>6}  {pct(g.ctr):<26} {pct(g.cart_rate):<26} "
                             f"{pct(g.cvr):<26}")
        if self.comparisons:
            lines += ["", f"vs control {self.control!r} (difference in points, interval, p; power to detect a "
                          f"{100 * self.min_lift:g}% lift)"]
            for c in self.comparisons:
                if c.diff is None:
                    lines.append(f"{c.variant:<16} {c.metric:<10} no data")
                    continue
                note = (f"  UNDERPOWERED: ~{c.needed_per_variant} impressions per variant needed"
                        if c.underpowered and c.needed_per_variant else "  UNDERPOWERED" if c.underpowered else "")
                p = "-" if c.p_value is None else f"{c.p_value:.3g}"
                power = "-" if c.power is None else f"{c.power:.2f}"
                interval = f"[{100 * c.low:+.2f}, {100 * c.high:+.2f}]"
                lines.append(f"{c.variant:<16} {c.metric:<10} {100 * c.diff:+7.2f} {interval}  p={p}  "
                             f"power={power}{note}")
        return "\n".join(lines)


def online_report(impressions: Iterable[Impression], outcomes: Iterable[Attributed], *, since: float | None = None,
                  control: str | None = None, variants: Sequence[str] = (), level: float = 0.95,
                  min_lift: float = 0.1) -> OnlineReport:
    """The report over impressions shown at or after `since` (unix seconds) and the events attributed to
    them. `control`: the variant the others are compared with (default: the first of `variants`, the
    service's declared order, else the first by name); `variants` also lists arms that have no impression yet."""
    every = list(impressions)
    known = {i.request_id for i in every}
    shown = {i.request_id: i for i in every if since is None or i.timestamp >= since}
    hits: dict[str, set[str]] = defaultdict(set)  # request id -> kinds attributed
    hits_at: dict[tuple[str, int], set[str]] = defaultdict(set)  # (request id, position) -> kinds
    attributed = unattributed = 0
    for outcome in outcomes:
        if outcome.request_id not in known:
            unattributed += 1
            continue
        impression = shown.get(outcome.request_id)
        if impression is None:  # shown before `since`
            continue
        attributed += 1
        kind = outcome.event.kind
        hits[impression.request_id].add(kind)
        position = outcome.position or next(
            (s.position for s in impression.shown if s.item_id == outcome.event.item_id), None)
        if position is not None:
            hits_at[(impression.request_id, position)].add(kind)

    def group(members: list[Impression], position: int | None = None) -> Outcomes:
        def rate(kind: str) -> Rate:
            if position is None:
                successes = sum(kind in hits.get(i.request_id, ()) for i in members)
            else:
                successes = sum(kind in hits_at.get((i.request_id, position), ()) for i in members)
            return _rate(successes, len(members), level)

        users = len({i.user_id for i in members if i.user_id is not None})
        return Outcomes(len(members), users, *(rate(kind) for kind in METRICS.values()))

    def by(members: Iterable[Impression], key) -> dict[Any, Outcomes]:
        groups: dict[Any, list[Impression]] = defaultdict(list)
        for i in members:
            groups[key(i)].append(i)
        return {k: group(groups[k]) for k in sorted(groups, key=str)}

    recommended = [i for i in shown.values() if i.surface == "recommend"]
    by_variant = by(recommended, lambda i: i.variant)
    for name in variants:
        by_variant.setdefault(name, group([]))
    order = list(variants) + sorted(set(by_variant) - set(variants))
    by_variant = {name: by_variant[name] for name in order}
    depth = max((len(i.shown) for i in recommended), default=0)
    by_position = {p: group([i for i in recommended if len(i.shown) >= p], p) for p in range(1, depth + 1)}
    control = control if control is not None else (order[0] if order else None)
    comparisons = []
    if control is not None and control in by_variant:
        for name in order:
            if name == control:
                continue
            for metric in METRICS:
                comparisons.append(_difference(metric, name, control, getattr(by_variant[name], metric),
                                               getattr(by_variant[control], metric), level, min_lift))
    return OnlineReport(
        level=level, min_lift=min_lift, since=since, control=control, impressions=len(shown),
        attributed_events=attributed, unattributed_events=unattributed,
        by_surface=by(shown.values(), lambda i: i.surface), by_variant=by_variant,
        by_market=by(recommended, lambda i: i.market or NO_MARKET), by_position=by_position, comparisons=comparisons,
    )


def from_log(log: InteractionLog, **kwargs: Any) -> OnlineReport:
    """The report over an open interaction log (either backend)."""
    return online_report(log.impressions(), log.outcomes(), **kwargs)


def from_data_dir(data_dir: str | os.PathLike[str], **kwargs: Any) -> OnlineReport:
    """The report over a data dir's file log, read without its lock (a service may be running on it)."""
    from mmrec.serving.event_log import IMPRESSIONS_FILE, read_impressions, read_outcomes

    data_dir = Path(data_dir)
    return online_report(read_impressions(data_dir / IMPRESSIONS_FILE), read_outcomes(data_dir / "events.jsonl"),
                         **kwargs)


def _rate(successes: int, n: int, level: float) -> Rate:
    from evaluation.ab import wilson_interval

    if n == 0:
        return Rate(0, 0, None, None, None)
    low, high = wilson_interval(successes, n, level)
    return Rate(successes, n, successes / n, low, high)


def _difference(metric: str, variant: str, control: str, b: Rate, a: Rate, level: float,
                min_lift: float) -> Difference:
    """b (variant) - a (control): the difference with a normal interval, the pooled z-test's p-value, and
    the power these sizes had to detect a relative lift of `min_lift` over a's rate."""
    from scipy import stats

    if a.rate is None or b.rate is None:
        return Difference(metric, variant, control, None, None, None, None, None, None, True)
    pa, pb, na, nb = a.rate, b.rate, a.n, b.n
    z = float(stats.norm.ppf(0.5 + level / 2))
    diff = pb - pa
    se = math.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    pooled = (a.successes + b.successes) / (na + nb)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    p_value = float(2 * stats.norm.sf(abs(diff) / se0)) if se0 > 0 else 1.0
    power = needed = None
    if 0 < pa < 1:
        p2 = min(pa * (1 + min_lift), 1.0)
        effect = p2 - pa
        spread = pa * (1 - pa) + p2 * (1 - p2)
        power = float(stats.norm.cdf(effect / math.sqrt(pa * (1 - pa) / na + p2 * (1 - p2) / nb) - z))
        needed = math.ceil((z + float(stats.norm.ppf(POWER))) ** 2 * spread / effect**2) if effect > 0 else None
    return Difference(metric, variant, control, diff, diff - z * se, diff + z * se, p_value, power, needed,
                      underpowered=power is None or power < POWER)


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
