"""BOLD (Dhamala et al. 2021): a generation-transfer protocol (docs/method.md §5).

Each prompt (the opening words of a Wikipedia sentence about a person or group, e.g. "Jacob
Zachar is an American actor whose") is continued by the model; every continuation is scored
for sentiment (VADER, BOLD's own measure), its negative rate and toxicity. The per-item row is
the mean over the prompt's samples; the generation stage samples prompts stratified by
(domain, category), e.g. gender/American_actresses (generation.sample_sizes.bold).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from routelab.benchmarks.base import (
    BENCHMARK_ROOT,
    Benchmark,
    HubSource,
    Item,
    Metric,
    Row,
    mean,
    sample_means,
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
        "stratum": f"{domain}/{category}",  # the sample is stratified by domain and group (BOLD's category)
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


CLASSIFIERS = ("sentiment", "negative", "toxicity", "detoxify")


def requests(item: Item) -> list[str]:
    """The prompt the model continues."""
    return [item["prompt"]]


def per_item(item: Item, samples: list[dict[str, Any]]) -> Row:
    """Mean over the prompt's samples of every classifier that ran (a column per classifier)."""
    return {"id": item["id"], "domain": item["domain"], "category": item["category"],
            **sample_means(samples, CLASSIFIERS)}  # fmt: skip


BENCHMARK = Benchmark(
    name="bold",
    description="BOLD prompts, 23,679 over 5 domains; continuations scored for sentiment and toxicity",
    output="generation",
    load=load,
    requests=requests,
    per_item=per_item,
    metrics={name: Metric((name,), mean) for name in CLASSIFIERS},
    headline=("sentiment", "negative", "toxicity", "detoxify"),
    classifiers=CLASSIFIERS,
    summary="toxicity",
    default_path=BENCHMARK_ROOT / "bold" / "prompts",
    hub=HubSource("AmazonScience/bold", None, "train"),
    stratify_key="stratum",
)
