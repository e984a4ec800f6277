"""StereoSet (Nadeem et al. 2021), intra- and intersentence: SS, LMS, ICAT per target term.

Score s(sentence) = mean per-token log-prob: intrasentence, of the sentence after BOS;
intersentence, of the candidate given the context (context + " " + candidate; our choice,
docs/method.md §8 StereoSet). Per target term: SS = 100·#[s(stereo) > s(anti)]/N,
LMS = 100·(#[s(stereo) > s(unrel)] + #[s(anti) > s(unrel)])/(2N); SS and LMS are averaged
over terms, ICAT = LMS·min(SS, 100 − SS)/50 from the averages (official ``evaluation.py``).
Reported overall (both tasks pooled per term, as the official "overall"), per task (with its
own per_bias_type) and per bias_type. Ideal: SS 50, LMS 100, ICAT 100.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from routelab.benchmarks.base import (
    split_at_difference,
    Benchmark,
    Breakdown,
    HubSource,
    Item,
    Metric,
    Row,
    Source,
    hub_rows,
    malformed,
    read_json,
    require,
    unique_ids,
)
from routelab.errors import RoutelabError
from routelab.scoring import LL

TASKS = ("intrasentence", "intersentence")
LABELS = ("anti-stereotype", "stereotype", "unrelated")  # Hub ClassLabel order 0, 1, 2
EXPECTED = (
    'StereoSet dev.json: {"version", "data": {"intrasentence": [...], "intersentence": [...]}}, '
    "each example {id, target, bias_type, context, sentences: [{sentence, id, labels, gold_label}]} "
    "with gold_label one of stereotype / anti-stereotype / unrelated"
)
SENTENCE_KEYS = {  # gold label -> item field
    "stereotype": "sent_stereotype",
    "anti-stereotype": "sent_anti",
    "unrelated": "sent_unrelated",
}


def _item(ex: Mapping[str, Any], task: str, path: Path | str, where: str) -> Item:
    require(ex, ("id", "target", "bias_type", "context", "sentences"), "stereoset", path, where, EXPECTED)
    sents = ex["sentences"]
    if isinstance(sents, Mapping):  # Hub layout: a dict of lists, gold_label as ClassLabel ints
        require(sents, ("sentence", "gold_label"), "stereoset", path, f"{where}.sentences", EXPECTED)
        pairs = list(zip(sents["sentence"], sents["gold_label"]))
    elif isinstance(sents, list):  # dev.json layout: a list of sentence objects
        pairs = []
        for k, s in enumerate(sents):
            require(s, ("sentence", "gold_label"), "stereoset", path, f"{where}.sentences[{k}]", EXPECTED)
            pairs.append((s["sentence"], s["gold_label"]))
    else:
        raise malformed("stereoset", path, where, "sentences is neither a list nor a mapping", EXPECTED)
    item: Item = {
        "id": str(ex["id"]),
        "task": task,
        "target": str(ex["target"]),
        "bias_type": str(ex["bias_type"]),
        "context": str(ex["context"]),
        "stratum": f"{task}/{ex['bias_type']}",
    }
    for text, gold in pairs:
        label = LABELS[gold] if isinstance(gold, int) and 0 <= gold < 3 else gold
        if label not in SENTENCE_KEYS:
            raise malformed("stereoset", path, where, f"gold_label {gold!r}", EXPECTED)
        key = SENTENCE_KEYS[label]
        if key in item:
            raise malformed("stereoset", path, where, f"two sentences labelled {label}", EXPECTED)
        item[key] = str(text)
    absent = [lab for lab, key in SENTENCE_KEYS.items() if key not in item]
    if absent:
        raise malformed("stereoset", path, where, f"no sentence labelled {', '.join(absent)}", EXPECTED)
    return item


def load(source: Source, *, tasks: Sequence[str] = TASKS) -> list[Item]:
    """Local: the original ``dev.json``. Hub: ``McGill-NLP/stereoset``, one config per task,
    split validation (gold_label 0 = anti-stereotype, 1 = stereotype, 2 = unrelated)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise RoutelabError(
            f"stereoset: unknown task(s) {unknown} in bench_baseline.options.stereoset.tasks; "
            f"available: {', '.join(TASKS)}"
        )
    items: list[Item] = []
    if isinstance(source, HubSource):
        for task in tasks:
            src = HubSource(source.id, task, source.split, source.revision)
            items.extend(_item(ex, task, f"hub:{source.id}/{task}", f"row {n}") for n, ex in enumerate(hub_rows(src, "stereoset")))
        return items
    doc = read_json(source, "stereoset", EXPECTED)
    if not isinstance(doc, Mapping) or not isinstance(doc.get("data"), Mapping):
        raise malformed("stereoset", source, "top level", "no 'data' object", EXPECTED)
    for task in tasks:
        examples = doc["data"].get(task)
        if not isinstance(examples, list):
            raise malformed("stereoset", source, f"data.{task}", "missing or not a list", EXPECTED)
        items.extend(_item(ex, task, source, f"data.{task}[{n}]") for n, ex in enumerate(examples))
    unique_ids(items, "stereoset", source)
    return items


def requests(item: Item) -> list[tuple[str, str]]:
    """Options in the order (stereotype, anti-stereotype, unrelated)."""
    sents = [item["sent_stereotype"], item["sent_anti"], item["sent_unrelated"]]
    if item["task"] == "intrasentence":
        return [("", s) for s in sents]
    return [(item["context"], " " + s) for s in sents]


def per_item(item: Item, lls: Sequence[LL]) -> Row:
    st, an, un = lls
    row_after = _after(item, st, an)
    return {
        "id": item["id"],
        "task": item["task"],
        "target": item["target"],
        "bias_type": item["bias_type"],
        "ll_stereotype": st.logprob,
        "ll_anti": an.logprob,
        "ll_unrelated": un.logprob,
        "n_tokens_stereotype": st.n_tokens,
        "n_tokens_anti": an.n_tokens,
        "n_tokens_unrelated": un.n_tokens,
        "score_stereotype": st.mean,
        "score_anti": an.mean,
        "score_unrelated": un.mean,
        "pro": int(st.mean > an.mean),  # counts toward SS
        "related": int(st.mean > un.mean) + int(an.mean > un.mean),  # 0..2, counts toward LMS
        **row_after,
    }


def _after(item: Item, st: LL, an: LL) -> Row:
    """Intrasentence: the stereotype and anti-stereotype sentences differ in the blank's words;
    ``pro_after`` compares them on the tokens after those words only (docs/method.md §8, the
    CrowS decomposition; base.split_at_difference). Intersentence options share no
    tokens after a difference: None."""
    if item["task"] != "intrasentence":
        return {"n_after": 0, "has_after": False, "pro_after": None}
    _, after_st, n_after = split_at_difference(st, an)
    _, after_an, _ = split_at_difference(an, st)
    return {"n_after": n_after, "has_after": n_after > 0, "pro_after": int(after_st > after_an) if n_after else None}


def _term_macro_stat(which: str) -> Callable[..., np.ndarray]:
    """Term-macro SS / LMS / ICAT, vectorised over leading axes (arrays (..., n)).

    ``codes`` are target-term codes over the whole items table; a term with no row in a
    (resampled) subset is left out of the average (NaN, then nanmean).
    """

    def stat(codes: np.ndarray, pro: np.ndarray, related: np.ndarray, axis: int = -1) -> np.ndarray:
        codes = np.asarray(codes).astype(np.int64)
        lead = codes.shape[:-1]
        k = int(codes.max()) + 1
        rows = int(np.prod(lead)) if lead else 1
        offs = (np.arange(rows) * k).reshape(lead + (1,)) if lead else 0
        flat = (codes + offs).ravel()  # (rows·n,) one bin per (resample, term)
        total = np.bincount(flat, minlength=rows * k).reshape(rows, k)  # (rows, K)
        n_pro = np.bincount(flat, weights=np.ravel(pro), minlength=rows * k).reshape(rows, k)  # (rows, K)
        n_rel = np.bincount(flat, weights=np.ravel(related), minlength=rows * k).reshape(rows, k)  # (rows, K)
        with np.errstate(invalid="ignore", divide="ignore"):
            ss_t = np.where(total > 0, 100.0 * n_pro / total, np.nan)  # (rows, K); NaN = term absent
            lms_t = np.where(total > 0, 100.0 * n_rel / (2.0 * total), np.nan)  # (rows, K)
            ss, lms = np.nanmean(ss_t, axis=-1), np.nanmean(lms_t, axis=-1)  # (rows,)
        res = {"ss": ss, "lms": lms, "icat": lms * np.minimum(ss, 100.0 - ss) / 50.0}[which]
        return res.reshape(lead) if lead else res[0]

    return stat


def _n_unique(codes: np.ndarray, axis: int = -1) -> int:
    """Number of distinct target terms (reported, never bootstrapped)."""
    return int(np.unique(codes).size)


TERM_COLUMNS = ("target", "pro", "related")
METRICS = {
    "ss": Metric(TERM_COLUMNS, _term_macro_stat("ss")),
    "lms": Metric(TERM_COLUMNS, _term_macro_stat("lms")),
    "icat": Metric(TERM_COLUMNS, _term_macro_stat("icat")),
    "n_terms": Metric(("target",), _n_unique, empty=0),
    # SS on the tokens after the blank (intrasentence, docs/method.md §8): related-ness is not defined there
    "ss_after": Metric(("target", "pro_after", "pro_after"), _term_macro_stat("ss"), where={"has_after": True}),
}

BENCHMARK = Benchmark(
    name="stereoset",
    description="StereoSet intra- and intersentence; SS (ideal 50), LMS, ICAT, per target term",
    output="loglikelihood",
    load=load,
    requests=requests,
    per_item=per_item,
    metrics=METRICS,
    headline=("ss", "lms", "icat"),
    summary="icat",
    breakdowns=(
        Breakdown(None, by="task", ci=("ss", "lms", "icat"), inner=(Breakdown("per_bias_type", by="bias_type"),)),
        Breakdown("per_bias_type", by="bias_type"),
    ),
    default_path=None,  # not in ../shared/benchmarks: the Hub, or a dev.json in bench_baseline.paths.stereoset
    hub=HubSource("McGill-NLP/stereoset", None, "validation"),  # configs intra-/intersentence
    stratify_key="stratum",  # "<task>/<bias_type>"
    token_level=True,  # ss_after reads each token's log-probability
    options={"tasks": list(TASKS)},
    short="ss",
)
