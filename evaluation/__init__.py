"""Evaluation harness: metrics, split protocols, the `Recommender` protocol and runner, baselines,
significance, offline A/B and reports. Knows nothing of `mmrec`, `encoders` or `index`.

Dependencies: numpy, scipy and pandas. torch only for SASRec (`evaluation.baselines.sasrec`) and the chunked
full-softmax cross-entropy it trains with (`evaluation.losses`, also used by mmrec's model); neither is
imported here, so ``import evaluation`` does not load torch.

Modules: `data` (the integer-coded containers), `events` (reading and coding an events table), `splits`
(the protocols), `metrics`, `protocol` (`Recommender`, `top_k`, the runner), `baselines`, `significance`,
`nextbasket` (next-basket split, repeat/explore metrics), `ab` (offline A/B), `report`, `losses`.

Typical use::

    from evaluation import leave_one_out, evaluate, build_report, write_report
    from evaluation.baselines import Popularity, ItemKNN, SASRec

    split = leave_one_out(events)                    # one object, shared by every model compared
    results = {m.name: evaluate(m, split) for m in (Popularity(), ItemKNN(), SASRec())}
    write_report(build_report(results, split, reference="popularity"), "out/")
"""
from __future__ import annotations

from .ab import ab_split, interleave, wilson_interval
from .data import EvalSet, Histories, Interactions, Split, as_histories
from .metrics import (
    catalog_coverage,
    graded_ndcg_at_k,
    hit_rate_at_k,
    intra_list_diversity,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
)
from .protocol import EvalResult, Recommendations, Recommender, evaluate, evaluate_cases, top_k
from .report import Report, build_report, format_table, write_report
from .significance import bootstrap_ci, compare, paired_bootstrap, paired_t_test
from .nextbasket import next_basket_split, repeat_explore_metrics
from .splits import cold_start_split, cross_market_split, leave_one_out, temporal_split

__all__ = [
    "precision_at_k", "recall_at_k", "ndcg_at_k", "graded_ndcg_at_k", "mrr_at_k", "hit_rate_at_k", "map_at_k",
    "catalog_coverage", "intra_list_diversity", "novelty",
    "Histories", "Interactions", "EvalSet", "Split", "as_histories",
    "leave_one_out", "temporal_split", "cold_start_split", "cross_market_split", "next_basket_split",
    "repeat_explore_metrics",
    "Recommender", "Recommendations", "top_k", "evaluate", "evaluate_cases", "EvalResult",
    "bootstrap_ci", "paired_bootstrap", "paired_t_test", "compare",
    "interleave", "ab_split", "wilson_interval",
    "Report", "build_report", "write_report", "format_table",
]
