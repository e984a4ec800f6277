"""Benchmarks, one file each, registered in one table; all scored on one engine.

| name                | output        | headline metrics (ci95)             | source: local file / Hub id                                   |
|---------------------|---------------|-------------------------------------|---------------------------------------------------------------|
| crows_pairs         | loglikelihood | pct_stereotype, likelihood_diff, pct_stereotype_after | crows_pairs/crows_pairs_anonymized.csv / nyu-mll/crows_pairs  |
| crows_pairs_revised | loglikelihood | pct_stereotype, likelihood_diff     | crows_pairs_revised/…EN_revised+210.csv / jannalu/crows_pairs_multilingual |
| stereoset           | loglikelihood | ss, lms, icat (+ per task)          | — / McGill-NLP/stereoset                                       |
| bbq                 | loglikelihood | acc, s_dis, s_amb                   | bbq/<Category>.jsonl / oskarvanderwal/bbq                      |
| truthfulqa          | loglikelihood | mc1, mc2                            | truthfulqa/mc_task.json (+ qa_primer.txt) / truthfulqa/truthful_qa |
| perplexity          | rolling       | ppl                                 | — / Salesforce/wikitext (wikitext-2-raw-v1, test)              |
| bold                | generation    | sentiment, negative, toxicity       | bold/prompts / AmazonScience/bold                              |
| stereotype_completion | generation  | negative, sentiment, toxicity       | built in (12 templates × 11 groups)                             |
| stereoset_generation | generation   | stereo_align                        | — / McGill-NLP/stereoset (intersentence)                        |
| testbed_completion  | generation    | planted, own_share, profession      | a testbed corpus folder (design.json)                          |

Local files are relative to ../shared/benchmarks. "—": no local default, so the Hub source
is used unless a file is given (bench_baseline.paths.<name>, routelab bench --data).

Usage::

    from routelab.benchmarks import get_benchmark, load_items, run_benchmark, split_benchmark
    crows = get_benchmark("crows_pairs")
    items = load_items(crows)                                  # its ../shared copy
    split = split_benchmark(crows, items, seed=0, val_fraction=0.5)
    metrics, rows = run_benchmark(model, tokenizer, crows, items=items, split_ids=split["test"])

Adding a benchmark: one file here (a ``load``, ``requests``, ``per_item``, ``METRICS`` and a
``Benchmark`` entry; crows_pairs.py is the worked example) and one line in the tuple below.
"""

from __future__ import annotations

import difflib

from routelab.benchmarks import (
    bbq,
    bold,
    crows_pairs,
    perplexity,
    stereoset,
    stereoset_generation,
    stereotype_completion,
    testbed_completion,
    truthfulqa,
)
from routelab.benchmarks.base import Benchmark, Breakdown, HubSource, Item, Metric
from routelab.benchmarks.engine import (
    bootstrap_cis,
    item_lls,
    item_rows,
    load_items,
    metrics_from_rows,
    resolve_source,
    run_benchmark,
)
from routelab.benchmarks.splits import select_items, split_benchmark, split_items
from routelab.errors import RoutelabError

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        crows_pairs.ORIGINAL,
        crows_pairs.REVISED,
        stereoset.BENCHMARK,
        bbq.BENCHMARK,
        truthfulqa.BENCHMARK,
        perplexity.BENCHMARK,
        bold.BENCHMARK,
        stereotype_completion.BENCHMARK,
        stereoset_generation.BENCHMARK,
        testbed_completion.BENCHMARK,
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name``; unknown names get "Did you mean …? Available: …"."""
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    near = difflib.get_close_matches(name, BENCHMARKS, n=1)
    hint = f" Did you mean '{near[0]}'?" if near else ""
    raise RoutelabError(f"unknown benchmark '{name}'.{hint} Available: {', '.join(BENCHMARKS)}")


def benchmark_by_key(key: str) -> Benchmark:
    """The registered benchmark whose short key (metrics files, tables) is ``key`` (crows, tqa, ppl, …)."""
    for b in BENCHMARKS.values():
        if b.key == key:
            return b
    raise RoutelabError(f"no benchmark has the short key '{key}'; keys: {', '.join(b.key for b in BENCHMARKS.values())}")


__all__ = [
    "benchmark_by_key",
    "BENCHMARKS",
    "Benchmark",
    "Breakdown",
    "HubSource",
    "Item",
    "Metric",
    "bootstrap_cis",
    "get_benchmark",
    "item_lls",
    "item_rows",
    "load_items",
    "metrics_from_rows",
    "resolve_source",
    "run_benchmark",
    "select_items",
    "split_benchmark",
    "split_items",
]
