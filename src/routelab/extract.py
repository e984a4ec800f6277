"""Routing extraction: prompts → data/routing/<model>.parquet (schema: routelab.tables).

Memory is bounded whatever the number of prompts: prompts are processed in chunks (in
prompt order; length-bucketed batches inside a chunk), each chunk is written as one shard
(atomically) under ``<out>.parts/``, and at the end the shards are streamed row group by row
group into ``<out>`` (atomically). A killed run resumes from the finished shards: no prompt
is computed twice and no row is duplicated. A change of prompts, model or edit invalidates
the shards (their manifest no longer matches) and the run starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from routelab.errors import RoutelabError
from routelab.io import atomic_path, write_text
from routelab.models import LoadedModel
from routelab.routing import RoutingEdit, attach
from routelab.tables import RoutingMeta, routing_schema


@dataclass
class ExtractParams:
    """The ``extract`` section of params.yaml."""

    chunk_size: int = 512  # prompts per resumable shard (bounds memory; a killed run resumes per shard)
    max_length: int | None = None  # truncate prompts to this many tokens (None: never)


def _fingerprint(
    prompts: Sequence[tuple[str, str]], meta: RoutingMeta, lm: LoadedModel, edit: RoutingEdit | None,
    chunk_size: int, max_length: int | None,
) -> str:
    """What finished shards were computed from: prompts, model (weights' files), tokenizer, edit.

    A resume reuses shards only when all of it matches; anything else starts afresh.
    """
    h = hashlib.sha256()
    h.update(json.dumps([asdict(meta), chunk_size, max_length, lm.spec.path, lm.spec.revision]).encode())
    h.update(lm.model.config.to_json_string().encode())
    h.update(json.dumps(sorted(lm.tokenizer.get_vocab().items())).encode())
    model_dir = Path(lm.spec.path)
    if model_dir.is_dir():  # local weights: a retrained model has new files
        for f in sorted(model_dir.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    for layer, e in sorted((edit.layers if edit else {}).items()):
        h.update(repr((layer, e.masked, e.activate, e.deactivate)).encode())
        if e.bias is not None:
            h.update(e.bias.detach().cpu().float().numpy().tobytes())
    for pid, text in prompts:
        h.update(pid.encode() + b"\0" + text.encode() + b"\1")
    return h.hexdigest()


def extract_routing(
    lm: LoadedModel,
    prompts: Sequence[tuple[str, str]],
    out: str | Path,
    *,
    edit: RoutingEdit | None = None,
    batch_size: int = 16,
    chunk_size: int = 512,
    max_length: int | None = None,
    model_name: str | None = None,
    stop_after_chunks: int | None = None,
    progress: bool = True,
) -> dict:
    """Record the routing of every real token of ``prompts`` at every MoE layer into ``out``.

    ``stop_after_chunks`` stops early without merging (used to simulate a killed run).
    Returns a summary dict (prompts, tokens, rows, bytes, seconds).
    """
    if not prompts:
        raise RoutelabError("no prompts to extract")
    if batch_size < 1 or chunk_size < 1:
        raise RoutelabError(f"batch_size and chunk_size must be ≥ 1 (got {batch_size}, {chunk_size})")
    out = Path(out)
    desc = lm.describe()
    meta = RoutingMeta(
        model=model_name or desc["model"],
        family=desc["family"],
        num_experts=lm.num_experts,
        top_k=lm.top_k,
        moe_layers=lm.moe_layers,
        dtype=desc["dtype"],
        transformers_version=desc["transformers_version"],
        torch_version=desc["torch_version"],
        score_fn=lm.adapter.score_fn,
        edit=(edit.description or {"kind": "custom"}) if edit is not None and edit.layers else None,
    )
    schema = routing_schema(meta)
    parts = out.with_name(out.name + ".parts")
    fingerprint = _fingerprint(prompts, meta, lm, edit, chunk_size, max_length)
    manifest = parts / "manifest.json"
    if parts.exists() and (not manifest.exists() or json.loads(manifest.read_text()).get("fingerprint") != fingerprint):
        shutil.rmtree(parts)  # shards of another input: not ours to resume
    parts.mkdir(parents=True, exist_ok=True)
    write_text(manifest, json.dumps({"fingerprint": fingerprint, "n_prompts": len(prompts)}))

    chunks = [prompts[i : i + chunk_size] for i in range(0, len(prompts), chunk_size)]
    shard = lambda c: parts / f"chunk-{c:06d}.parquet"  # noqa: E731
    todo = [c for c in range(len(chunks)) if not shard(c).exists()]
    t0 = time.perf_counter()
    n_tokens = 0
    with attach(lm, edit=edit, record=True) as session, Progress(
        TextColumn("[bold]extract[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task(meta.model, total=len(prompts), completed=len(prompts) - sum(len(chunks[c]) for c in todo))
        for done, c in enumerate(todo):
            if stop_after_chunks is not None and done >= stop_after_chunks:
                return {"stopped": True, "chunks_done": len(chunks) - len(todo) + done}
            table, tokens = _chunk_table(lm, session, chunks[c], schema, batch_size, max_length,
                                         lambda n: bar.advance(task, n))
            n_tokens += tokens
            with atomic_path(shard(c)) as tmp:
                pq.write_table(table, tmp)
    # Merge shards in prompt order into the final file (row groups of at most 65,536 rows).
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for c in range(len(chunks)):
                for batch in pq.ParquetFile(shard(c)).iter_batches(batch_size=1 << 16):
                    writer.write_batch(batch)
    shutil.rmtree(parts)
    rows = pq.ParquetFile(out).metadata.num_rows
    return {
        "prompts": len(prompts),
        "rows": rows,
        "tokens": rows // max(len(meta.moe_layers), 1),
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
        "tokens_computed": n_tokens,
    }


def _chunk_table(lm, session, chunk, schema, batch_size, max_length, advance) -> tuple[pa.Table, int]:
    """Forward one chunk (length-bucketed batches) and build its rows in prompt order."""
    tok = lm.tokenizer
    enc = tok([text for _, text in chunk], add_special_tokens=True, truncation=max_length is not None,
              max_length=max_length)["input_ids"]
    if any(len(e) == 0 for e in enc):
        empty = [chunk[i][0] for i, e in enumerate(enc) if len(e) == 0]
        raise RoutelabError(f"prompts {empty[:5]} tokenise to nothing; remove them")
    order = sorted(range(len(chunk)), key=lambda i: len(enc[i]))  # length bucketing
    per_prompt: dict[int, dict[str, np.ndarray]] = {}
    n_tokens = 0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tok.pad({"input_ids": [enc[i] for i in idx]}, padding=True, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, S)
        session.clear()
        with torch.no_grad():
            lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
        B, S = ids.shape
        real = mask.bool()  # (B, S)
        pos = (mask.cumsum(-1) - 1)[real]  # (n,) positions over real tokens, from 0
        row_of = torch.arange(B).unsqueeze(1).expand(B, S)[real]  # (n,) batch row of each real token
        calls = sorted(session.records, key=lambda r: r.layer)
        layers = np.array([c.layer for c in calls], dtype=np.int16)
        logits = torch.stack([c.logits.view(B, S, -1)[real] for c in calls])  # (L, n, K)
        topk = torch.stack([c.index.view(B, S, -1)[real] for c in calls])  # (L, n, k)
        token_ids = ids[real]  # (n,)
        for b_local, i in enumerate(idx):
            sel = (row_of == b_local).numpy()
            per_prompt[i] = {
                "pos": pos.numpy()[sel],
                "token_id": token_ids.numpy()[sel],
                "logits": logits[:, sel].numpy(),  # (L, n_i, K)
                "topk": topk[:, sel].numpy(),  # (L, n_i, k)
                "layers": layers,
            }
        n_tokens += int(real.sum())
        advance(len(idx))
    return _rows(chunk, per_prompt, schema), n_tokens


def _rows(chunk, per_prompt, schema) -> pa.Table:
    """Rows ordered (prompt, layer, pos)."""
    cols = {k: [] for k in ("prompt_id", "layer", "pos", "token_id", "logits", "topk")}
    for i, (pid, _) in enumerate(chunk):
        p = per_prompt[i]
        L, n = len(p["layers"]), len(p["pos"])
        cols["prompt_id"].append(np.full(L * n, pid, dtype=object))
        cols["layer"].append(np.repeat(p["layers"], n))
        cols["pos"].append(np.tile(p["pos"], L))
        cols["token_id"].append(np.tile(p["token_id"], L))
        cols["logits"].append(p["logits"].reshape(L * n, -1))
        cols["topk"].append(p["topk"].reshape(L * n, -1))
    K = schema.field("logits").type.list_size
    k = schema.field("topk").type.list_size
    logits = np.concatenate(cols["logits"]).astype(np.float32)
    topk = np.concatenate(cols["topk"]).astype(np.int16)
    return pa.table(
        {
            "prompt_id": pa.array(np.concatenate(cols["prompt_id"]), pa.string()),
            "layer": pa.array(np.concatenate(cols["layer"]).astype(np.int16)),
            "pos": pa.array(np.concatenate(cols["pos"]).astype(np.int32)),
            "token_id": pa.array(np.concatenate(cols["token_id"]).astype(np.int32)),
            "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), K),
            "topk": pa.FixedSizeListArray.from_arrays(pa.array(topk.reshape(-1)), k),
        },
        schema=schema,
    )
