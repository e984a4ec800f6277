"""BOLD prompts (Dhamala et al. 2021): a loader for the generation-transfer protocol.

A generation benchmark (docs/method.md §5 Generation transfer): prompts → continuations →
toxicity / regard. routelab scores by log-likelihood only today, so the entry has no
requests, per-item function or metrics yet; the generation engine adds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from routelab.benchmarks.base import (
    BENCHMARK_ROOT,
    Benchmark,
    HubSource,
    Item,
    Source,
    hub_rows,
    malformed,
    missing,
    read_json,
    require,
)

EXPECTED = (
    "BOLD prompts/*.json files, each {category: {name: [prompt, ...]}} with the domain taken "
    "from the file name (<domain>_prompt.json), or {domain: {category: {name: [prompts]}}}"
)


def _prompt(domain: str, category: str, name: str, k: int, prompt: Any) -> Item:
    return {
        "id": f"{domain}/{category}/{name}/{k}",
        "domain": domain,
        "category": category,
        "name": name,
        "prompt": str(prompt),
    }


def _flatten(domain: str, tree: Any, path: Path) -> list[Item]:
    if not isinstance(tree, Mapping):
        raise malformed("bold", path, domain, "not an object", EXPECTED)
    out = []
    for category, names in tree.items():
        if not isinstance(names, Mapping):
            raise malformed("bold", path, f"{domain}.{category}", "not an object of name -> prompts", EXPECTED)
        for name, prompts in names.items():
            if not isinstance(prompts, list):
                raise malformed("bold", path, f"{domain}.{category}.{name}", "prompts are not a list", EXPECTED)
            out.extend(_prompt(domain, category, name, k, p) for k, p in enumerate(prompts))
    return out


def load(source: Source) -> list[Item]:
    """Prompts as a flat list of {id, domain, category, name, prompt}.

    Local: the ``prompts/`` folder (or one ``<domain>_prompt.json``). Hub: ``AmazonScience/bold``
    split train (rows {domain, name, category, prompts, wikipedia}).
    """
    if isinstance(source, HubSource):
        out = []
        for n, r in enumerate(hub_rows(source, "bold")):
            require(r, ("domain", "category", "name", "prompts"), "bold", f"hub:{source.id}", f"row {n}", EXPECTED)
            d, c, nm = str(r["domain"]), str(r["category"]), str(r["name"])
            out.extend(_prompt(d, c, nm, k, p) for k, p in enumerate(r["prompts"]))
        return out
    files = sorted(source.glob("*.json")) if source.is_dir() else [source]
    if not files:
        raise missing("bold", source / "<domain>_prompt.json", EXPECTED)
    items: list[Item] = []
    for f in files:
        doc = read_json(f, "bold", EXPECTED)
        if not isinstance(doc, Mapping) or not doc:
            raise malformed("bold", f, "top level", "not a non-empty object", EXPECTED)
        first = next(iter(doc.values()))
        nested_domain = isinstance(first, Mapping) and all(isinstance(v, Mapping) for v in first.values())
        if nested_domain:  # {domain: {category: {name: [prompts]}}}
            for domain, tree in doc.items():
                items.extend(_flatten(str(domain), tree, f))
        else:  # the released files: {category: {name: [prompts]}}, domain from the file name
            items.extend(_flatten(f.stem.removesuffix("_prompt"), doc, f))
    return items


BENCHMARK = Benchmark(
    name="bold",
    description="BOLD prompts, 23,679 over 5 domains; generation (not scored yet)",
    output="generation",
    load=load,
    requests=None,
    per_item=None,
    default_path=BENCHMARK_ROOT / "bold" / "prompts",
    hub=HubSource("AmazonScience/bold", None, "train"),
    stratify_key="domain",
)
