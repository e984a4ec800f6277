"""Routing extraction: prompts → data/routing/<model>.parquet (schema: routelab.tables).

Memory is bounded whatever the number of prompts: prompts are processed in chunks (in
prompt order; length-bucketed batches inside a chunk), each chunk is written as one shard
(atomically) under ``<out>.parts/``, and at the end the shards are streamed row group by row
group into ``<out>`` (atomically). A killed or interrupted run resumes from the finished
shards: no prompt is computed twice, no row is duplicated, and the file is byte-identical to
an uninterrupted run's. A change of prompts, model, edit, device, torch threads, chunk size or
batch size invalidates the shards (their manifest no longer matches: the batch size changes
which prompts are padded together and the thread count how sums are split, and so the logits
in their last bits) and the run starts afresh.

Everything that can be refused is refused before ``<out>.parts/`` is touched: prompts that
tokenise to nothing, prompts longer than the model's positions, and the edit (checked against
the model when it attaches). routelab.io.check_resumable_output checks the output path and
``<out>.parts/`` before a model loads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from routelab.errors import RoutelabError
from routelab.io import PARTS_MANIFEST, atomic_path, parts_folder, parts_manifest, write_text
from routelab.models import LoadedModel
from routelab.progress import progress as progress_display
from routelab.routing import RoutingEdit, attach
from routelab.tables import RoutingMeta, routing_schema

@dataclass
class ExtractParams:
    """The ``extract`` section of params.yaml."""

    chunk_size: int = 512  # prompts per resumable shard (bounds memory; a killed run resumes per shard)
    max_length: int | None = None  # truncate prompts to this many tokens (None: never)


def _fingerprint(
    prompts: Sequence[tuple[str, str]], meta: RoutingMeta, lm: LoadedModel, edit: RoutingEdit | None,
    chunk_size: int, batch_size: int, max_length: int | None,
) -> str:
    """What finished shards were computed from: prompts, model (config, revision, weights' files),
    tokenizer, edit, device, torch threads, chunk and batch size, max length. A resume reuses shards only when all of it matches."""
    h = hashlib.sha256()
    h.update(json.dumps([asdict(meta), chunk_size, batch_size, max_length, lm.spec.path, lm.spec.revision,
                         str(lm.device), torch.get_num_threads()]).encode())
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


def _check_lengths(lm: LoadedModel, prompts: Sequence[tuple[str, str]], max_length: int | None, chunk_size: int) -> int:
    """Refuse prompts that tokenise to nothing or exceed the model's positions; return how many
    ``max_length`` truncates. Tokenised once more per chunk later: cheap next to the forward."""
    limit = getattr(lm.model.config, "max_position_embeddings", None)
    how = "extract.max_length (routelab extract: --max-length)"
    if max_length is not None and (max_length < 1 or (limit is not None and max_length > limit)):
        raise RoutelabError(
            f"a max length of {max_length} tokens ({how}): use 1 to {limit or '∞'}, the model's positions")
    lengths = np.concatenate([  # (N,) tokens per prompt, special tokens included
        np.array([len(ids) for ids in lm.tokenizer([t for _, t in prompts[i : i + chunk_size]])["input_ids"]])
        for i in range(0, len(prompts), chunk_size)
    ])
    empty = [prompts[i][0] for i in np.flatnonzero(lengths == 0)]
    if empty:
        raise RoutelabError(f"{len(empty)} prompts tokenise to nothing (prompt_id {', '.join(empty[:5])}): remove them")
    if max_length is None and limit is not None and lengths.max() > limit:
        n, longest = int((lengths > limit).sum()), int(lengths.argmax())
        raise RoutelabError(
            f"{n} prompts are longer than the model's {limit} positions (longest: prompt_id {prompts[longest][0]}, "
            f"{lengths[longest]} tokens): set {how} to {limit} or less to truncate them, or shorten them"
        )
    return 0 if max_length is None else int((lengths > max_length).sum())


def _prepare_parts(parts: Path, fingerprint: str, n_prompts: int) -> None:
    """Keep the shards of the same inputs (resume), discard routelab shards of other inputs
    (with a note), refuse a folder routelab did not make; then write the manifest."""
    if parts.exists():
        manifest = parts_manifest(parts)
        if manifest is None:
            raise RoutelabError(f"{parts} was not made by routelab extract (no manifest of its own): move or delete it")
        if manifest["fingerprint"] != fingerprint:
            n = len(list(parts.glob("chunk-*.parquet")))
            shutil.rmtree(parts)
            print(f"extract: discarded {n} finished chunks in {parts}: they were computed from other inputs "
                  "(prompts, model files, tokenizer, edit, device, torch threads, chunk or batch size, "
                  "max length)", file=sys.stderr, flush=True)  # fmt: skip
    parts.mkdir(parents=True, exist_ok=True)
    write_text(parts / PARTS_MANIFEST, json.dumps({"fingerprint": fingerprint, "n_prompts": n_prompts}))


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

    ``stop_after_chunks`` stops early without merging (used to simulate a killed run). Ctrl-C
    raises KeyboardInterrupt with one line saying what was kept and how to resume.
    Returns a summary dict (prompts, tokens, rows, bytes, seconds, tokens_computed, truncated).
    """
    if not prompts:
        raise RoutelabError("no prompts to extract")
    if batch_size < 1 or chunk_size < 1:
        raise RoutelabError(f"batch size and chunk size must be ≥ 1 (got {batch_size}, {chunk_size})")
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
    truncated = _check_lengths(lm, prompts, max_length, chunk_size)
    parts = parts_folder(out)
    chunks = [prompts[i : i + chunk_size] for i in range(0, len(prompts), chunk_size)]
    shard = lambda c: parts / f"chunk-{c:06d}.parquet"  # noqa: E731
    t0 = time.perf_counter()
    n_tokens = 0
    with attach(lm, edit=edit, record=True) as session:  # a bad edit is refused here, before any output
        _prepare_parts(parts, _fingerprint(prompts, meta, lm, edit, chunk_size, batch_size, max_length), len(prompts))
        todo = [c for c in range(len(chunks)) if not shard(c).exists()]
        resumed = len(prompts) - sum(len(chunks[c]) for c in todo)
        if resumed:
            print(f"extract: resuming: {len(chunks) - len(todo)} of {len(chunks)} chunks ({resumed} of {len(prompts)} "
                  f"prompts) already done in {parts}", file=sys.stderr, flush=True)
        try:
            with progress_display(f"extract[{meta.model}]", total=len(prompts), unit="prompts", enabled=progress,
                                  done=resumed) as bar:
                for done, c in enumerate(todo):
                    if stop_after_chunks is not None and done >= stop_after_chunks:
                        return {"stopped": True, "chunks_done": len(chunks) - len(todo) + done}
                    table, tokens = _chunk_table(lm, session, chunks[c], schema, batch_size, max_length, bar.advance)
                    n_tokens += tokens
                    with atomic_path(shard(c)) as tmp:
                        pq.write_table(table, tmp)
            # Merge shards in prompt order into the final file (row groups of at most 65,536 rows).
            with atomic_path(out) as tmp:
                with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                    for c in range(len(chunks)):
                        for batch in pq.ParquetFile(shard(c)).iter_batches(batch_size=1 << 16):
                            writer.write_batch(batch)
        except KeyboardInterrupt:
            kept = [c for c in range(len(chunks)) if shard(c).exists()]
            raise KeyboardInterrupt(
                f"kept {len(kept)} of {len(chunks)} chunks ({sum(len(chunks[c]) for c in kept)} of {len(prompts)} "
                f"prompts) in {parts}; run the same command again to resume from there"
            ) from None
    shutil.rmtree(parts)
    rows = pq.ParquetFile(out).metadata.num_rows
    return {
        "prompts": len(prompts),
        "rows": rows,
        "tokens": rows // max(len(meta.moe_layers), 1),
        "bytes": out.stat().st_size,
        "seconds": time.perf_counter() - t0,
        "tokens_computed": n_tokens,
        "truncated": truncated,
    }


def _chunk_table(lm, session, chunk, schema, batch_size, max_length, advance) -> tuple[pa.Table, int]:
    """Forward one chunk (length-bucketed batches) and build its rows in prompt order."""
    tok = lm.tokenizer
    enc = tok([text for _, text in chunk], add_special_tokens=True, truncation=max_length is not None,
              max_length=max_length)["input_ids"]  # none empty: _check_lengths refused those
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
