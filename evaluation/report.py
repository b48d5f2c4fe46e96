"""Reports: one JSON (everything), one Markdown page (tables + plots), PNG plots, and a printed table.

Every number carries its 95% bootstrap interval over users, and every model is compared with the
reference model on the same users (paired bootstrap + paired t-test, Holm-adjusted across the report).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import Split
from .protocol import EvalResult
from .significance import Comparison, bootstrap_ci, compare, holm

__all__ = ["Report", "build_report", "write_report", "format_table"]


@dataclass
class Report:
    """The assembled numbers; ``to_dict`` is what ``report.json`` holds."""

    title: str
    split: dict[str, Any]
    ks: tuple[int, ...]
    metrics: tuple[str, ...]
    reference: str | None
    models: dict[str, dict[str, Any]]
    comparisons: list[Comparison]
    primary: str
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "split": self.split,
            "ks": list(self.ks),
            "metrics": list(self.metrics),
            "primary": self.primary,
            "reference": self.reference,
            "models": self.models,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "extra": self.extra,
            "files": self.files,
        }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def build_report(
    results: Mapping[str, EvalResult],
    split: Split | None = None,
    *,
    title: str = "Evaluation",
    metrics: Sequence[str] = ("recall", "ndcg", "mrr"),
    reference: str | None = None,
    primary: str = "ndcg@10",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Report:
    """Summarise ``results`` (model name -> `EvalResult`, all on the same cases).

    ``reference``: the model every other is compared with (default: the first). Comparisons cover every
    metric@k in the tables; their p-values are Holm-adjusted together.
    """
    if not results:
        raise ValueError("no results to report")
    names = list(results)
    first = results[names[0]]
    for name in names[1:]:
        if not np.array_equal(results[name].users, first.users):
            raise ValueError(f"{name} was evaluated on different cases than {names[0]}: results are not comparable")
    ks = first.ks
    keys = [f"{m}@{k}" for m in metrics for k in ks]
    for key in keys + [primary]:
        if key not in first.per_case:
            raise ValueError(f"metric {key!r} was not computed; available: {', '.join(first.per_case)}")
    models: dict[str, dict[str, Any]] = {}
    for name, res in results.items():
        entry: dict[str, Any] = {
            "metrics": {key: bootstrap_ci(res.per_case[key], level=level, n_boot=n_boot, seed=seed).to_dict()
                        for key in res.per_case},
            "beyond": dict(res.beyond),
            "fit_seconds": res.fit_seconds,
            "recommend_seconds": res.recommend_seconds,
            "n_cases": res.n_cases,
            "segments": {},
            "info": dict(res.info),
        }
        for seg in res.segments:
            entry["segments"][seg] = {
                label: {"mean": mean, "n": n} for label, (mean, n) in res.segment_means(primary, seg).items()
            }
        models[name] = entry
    reference = reference or names[0]
    if reference not in results:
        raise ValueError(f"reference model {reference!r} is not among {names}")
    comps: list[Comparison] = []
    for name in names:
        if name == reference:
            continue
        for key in keys:
            comps.append(compare(results[name].per_case[key], results[reference].per_case[key], metric=key,
                                 name_a=name, name_b=reference, users_a=results[name].users,
                                 users_b=results[reference].users, level=level, n_boot=n_boot, seed=seed))
    if comps:
        adjusted = holm([c.p_bootstrap for c in comps])
        comps = [Comparison(**{**c.to_dict(), "p_holm": p}) for c, p in zip(comps, adjusted)]
    return Report(
        title=title,
        split=split.describe() if split is not None else {"protocol": first.protocol},
        ks=tuple(ks),
        metrics=tuple(metrics),
        reference=reference if len(names) > 1 else None,
        models=models,
        comparisons=comps,
        primary=primary,
        extra=dict(extra or {}),
    )


_LABEL_ORDER = {"head": 0, "torso": 1, "tail": 2, "cold": 3}


def _labels(report: "Report", seg: str) -> list[str]:
    """Segment labels in a readable order: popularity buckets head -> cold, anything else alphabetical."""
    labels = {lab for e in report.models.values() for lab in e["segments"].get(seg, {})}
    return sorted(labels, key=lambda x: (_LABEL_ORDER.get(x, 99), x))


def _fmt(ci: Mapping[str, float]) -> str:
    return f"{ci['mean']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def format_table(report: Report, keys: Sequence[str] | None = None) -> str:
    """Plain-text table: one row per model, mean [95% CI] per metric, training seconds."""
    keys = list(keys) if keys is not None else [f"{m}@{k}" for m in report.metrics for k in report.ks if k == 10] or \
        [f"{m}@{report.ks[0]}" for m in report.metrics]
    header = ["model", *keys, "fit s"]
    rows = [[name, *(_fmt(e["metrics"][k]) for k in keys), _seconds(e["fit_seconds"])]
            for name, e in report.models.items()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    out = [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
    return "\n".join(out)


def _markdown(report: Report) -> str:
    lvl = int(round(100 * (report.comparisons[0].level if report.comparisons else 0.95)))
    keys = [f"{m}@{k}" for m in report.metrics for k in report.ks]
    md = [f"# {report.title}", ""]
    md.append("Split: " + ", ".join(f"{k}={v}" for k, v in report.split.items()))
    md += ["", f"Full ranking over every candidate item; mean over test cases with {lvl}% bootstrap interval.", ""]
    md.append("| model | " + " | ".join(keys) + " | fit s | recommend s |")
    md.append("|---" * (len(keys) + 3) + "|")
    for name, e in report.models.items():
        md.append(f"| {name} | " + " | ".join(_fmt(e["metrics"][k]) for k in keys)
                  + f" | {_seconds(e['fit_seconds'])} | {e['recommend_seconds']:.1f} |")
    beyond_keys = sorted({k for e in report.models.values() for k in e["beyond"]},
                         key=lambda s: (s.split("@")[0], int(s.split("@")[1])))
    if beyond_keys:
        md += ["", "Beyond accuracy (coverage = share of the catalog shown; novelty = mean self-information "
               "in bits; diversity = mean pairwise cosine distance):", ""]
        md.append("| model | " + " | ".join(beyond_keys) + " |")
        md.append("|---" * (len(beyond_keys) + 1) + "|")
        for name, e in report.models.items():
            md.append(f"| {name} | " + " | ".join(f"{e['beyond'][k]:.4f}" if k in e["beyond"] else "-"
                                                   for k in beyond_keys) + " |")
    if report.comparisons:
        md += ["", f"Paired comparisons with **{report.reference}** over the same users (diff = model - "
               f"{report.reference}; bootstrap p Holm-adjusted over the {len(report.comparisons)} comparisons):", ""]
        md.append("| model | metric | diff [CI] | relative | p (bootstrap) | p (Holm) | p (paired t) |")
        md.append("|---|---|---|---|---|---|---|")
        for c in report.comparisons:
            mark = " *" if c.significant else ""
            md.append(f"| {c.a} | {c.metric} | {c.diff:+.4f} [{c.low:+.4f}, {c.high:+.4f}]{mark} | "
                      f"{100 * c.rel_diff:+.1f}% | {c.p_bootstrap:.4f} | {c.p_holm:.4f} | {c.p_t:.2g} |")
        md.append("")
        md.append("\\* the interval excludes 0.")
    segs = sorted({s for e in report.models.values() for s in e["segments"]})
    for seg in segs:
        labels = _labels(report, seg)
        md += ["", f"{report.primary} by {seg} (cases per label in parentheses):", ""]
        first = next(iter(report.models.values()))["segments"].get(seg, {})
        md.append("| model | " + " | ".join(f"{lab} ({first.get(lab, {}).get('n', 0)})" for lab in labels) + " |")
        md.append("|---" * (len(labels) + 1) + "|")
        for name, e in report.models.items():
            vals = e["segments"].get(seg, {})
            md.append(f"| {name} | " + " | ".join(f"{vals[lab]['mean']:.4f}" if lab in vals else "-" for lab in labels)
                      + " |")
    for key, value in report.extra.items():
        md += ["", f"**{key}**: `{json.dumps(_jsonable(value))}`"]
    for name, path in report.files.items():
        if path.endswith(".png"):
            md += ["", f"![{name}]({Path(path).name})"]
    return "\n".join(md) + "\n"


def _plots(report: Report, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files: dict[str, str] = {}
    names = list(report.models)
    fig, axes = plt.subplots(1, len(report.metrics), figsize=(4.2 * len(report.metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], report.metrics):
        for name in names:
            ms = [report.models[name]["metrics"][f"{metric}@{k}"] for k in report.ks]
            mean = np.array([m["mean"] for m in ms])
            err = np.array([[m["mean"] - m["low"] for m in ms], [m["high"] - m["mean"] for m in ms]])
            ax.errorbar(report.ks, mean, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xlabel("K")
        ax.set_ylabel(f"{metric}@K")
        ax.set_xticks(list(report.ks))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{report.title}: metric@K (95% CI)", fontsize=10)
    fig.tight_layout()
    path = out / "metrics_at_k.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files["metrics_at_k"] = str(path)

    segs = sorted({s for e in report.models.values() for s in e["segments"]})
    for seg in segs:
        labels = _labels(report, seg)
        if not labels:
            continue
        fig, ax = plt.subplots(figsize=(min(12.0, max(5.0, 0.3 * len(labels) * len(names) + 2.5)), 3.6))
        width = 0.8 / len(names)
        x = np.arange(len(labels))
        for j, name in enumerate(names):
            vals = report.models[name]["segments"].get(seg, {})
            ax.bar(x + j * width - 0.4 + width / 2, [vals.get(lab, {}).get("mean", 0.0) for lab in labels],
                   width, label=name)
        counts = next(iter(report.models.values()))["segments"].get(seg, {})
        ax.set_xticks(x, [f"{lab}\n(n={counts.get(lab, {}).get('n', 0)})" for lab in labels], fontsize=8)
        ax.set_ylabel(report.primary)
        ax.set_title(f"{report.primary} by {seg}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / f"segments_{seg}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[f"segments_{seg}"] = str(path)
    return files


def write_report(report: Report, out_dir: str | Path, *, plots: bool = True) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        report.files.update(_plots(report, out))
    report.files["json"] = str(out / "report.json")
    report.files["markdown"] = str(out / "report.md")
    (out / "report.json").write_text(json.dumps(_jsonable(report.to_dict()), indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return dict(report.files)
