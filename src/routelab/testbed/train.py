"""Training the testbed OLMoE from scratch, deterministically, and saving the model folder.

``train_from_scratch`` is the recipe of the variants ``control`` and ``diffuse``;
``train_and_evaluate`` runs it on a corpus folder, saves the model and scores the saved
folder with ``routelab.testbed.truth``. The other recipe (``plant.py``, variants ``routed``
and ``routed_null``) reuses ``deterministic``, ``documents``, ``epoch_blocks``, ``lr_at`` and
``save_model``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, OlmoeConfig, OlmoeForCausalLM, PreTrainedTokenizerFast

from routelab import compute
from routelab.errors import RoutelabError
from routelab.io import atomic_dir, write_json
from routelab.progress import progress as progress_display
from routelab.testbed.params import ModelParams, PlantParams, TestbedParams, TrainParams, rng, strength_for, variant
from routelab.testbed.corpus import CORPUS_FILES, read_design, read_records, require_corpus_dir
from routelab.testbed.truth import common_fact_mc1, ground_truth


def model_config(p: ModelParams, tokenizer: PreTrainedTokenizerFast) -> OlmoeConfig:
    """The ``OlmoeConfig`` of the testbed model for a tokenizer."""
    return OlmoeConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.heads,
        num_experts=p.experts,
        num_experts_per_tok=p.top_k,
        norm_topk_prob=p.norm_topk_prob,
        router_aux_loss_coef=p.aux_loss_coef,
        output_router_logits=False,  # training asks for them per call
        max_position_embeddings=p.max_positions,
        initializer_range=p.init_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels and the pinned thread count (routelab.compute); the previous settings
    come back after."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(compute.threads())
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0])
        torch.set_num_threads(prev[1])


def documents(records: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerFast) -> list[np.ndarray]:
    """Token ids of every document: BOS + words + EOS, as the evaluation sees a sentence (BOS first)."""
    ids = tokenizer([r["text"] for r in records], add_special_tokens=True)["input_ids"]
    return [np.asarray(x + [tokenizer.eos_token_id], dtype=np.int64) for x in ids]


def epoch_blocks(docs: list[np.ndarray], seq_len: int, gen: np.random.Generator) -> np.ndarray:
    """Shuffle documents, concatenate them and cut (n_blocks, seq_len) training blocks."""
    stream = np.concatenate([docs[i] for i in gen.permutation(len(docs))])  # (N,)
    n = len(stream) // seq_len
    return stream[: n * seq_len].reshape(n, seq_len)  # (n_blocks, seq_len)


def lr_at(tp: TrainParams | PlantParams, step: int) -> float:
    """Learning rate of an optimizer step: linear warm-up, then cosine decay to lr * min_lr_ratio (either recipe's params)."""
    if step < tp.warmup_steps:
        return tp.lr * (step + 1) / tp.warmup_steps
    frac = (step - tp.warmup_steps) / max(1, tp.steps - tp.warmup_steps)
    return tp.lr * (tp.min_lr_ratio + (1 - tp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def _check_train_params(params: TestbedParams) -> None:
    tp = params.train
    if tp.steps < 1 or tp.batch_size < 1 or tp.seq_len < 8:
        raise RoutelabError(
            f"testbed.train: steps={tp.steps}, batch_size={tp.batch_size}, seq_len={tp.seq_len}: "
            "need steps >= 1, batch_size >= 1, seq_len >= 8"
        )
    if tp.extra_steps < 0 or tp.max_extra_steps < 0 or (tp.max_extra_steps and not tp.extra_steps):
        raise RoutelabError(
            f"testbed.train: extra_steps={tp.extra_steps}, max_extra_steps={tp.max_extra_steps}: need both >= 0, "
            "and extra_steps >= 1 when max_extra_steps > 0 (max_extra_steps 0 trains exactly `steps`)"
        )
    if tp.seq_len > params.model.max_positions:
        raise RoutelabError(
            f"testbed.train.seq_len = {tp.seq_len} exceeds testbed.model.max_positions = "
            f"{params.model.max_positions}: raise max_positions or lower seq_len"
        )


def train_from_scratch(
    records: Sequence[dict[str, Any]],
    tokenizer: PreTrainedTokenizerFast,
    params: TestbedParams,
    *,
    progress: bool = True,
    learned: Callable[[OlmoeForCausalLM], dict[str, float]] | None = None,
) -> tuple[OlmoeForCausalLM, dict[str, Any]]:
    """Train a new testbed OLMoE on ``records``; returns (model in eval mode, training log).

    ``learned`` (model -> score per skill, 1.0 once learned; train_and_evaluate passes the common
    facts' MC1 per relation): after ``steps``, while a score is below 1, train ``extra_steps``
    more at the cosine floor (lr x min_lr_ratio), up to ``max_extra_steps``. The common facts are
    training data, so this is a fit criterion on the training set, not on held-out items; a run
    that learned them in ``steps`` is bit-identical to one without the criterion. The log
    records the extra steps and the scores after each round.

    Deterministic for a seed: weights from ``torch.manual_seed(seed)``, data order from the
    seeded ``train_data`` stream, deterministic kernels and the pinned compute path
    (routelab.compute: kernels, threads; fused AdamW, whose sqrt is ATen's, not MKL's).
    Documents are packed into ``seq_len`` blocks, reshuffled each epoch. The loss is
    cross-entropy + aux_loss_coef x the router load-balancing loss; the log holds both apart.
    """
    _check_train_params(params)
    tp = params.train
    docs = documents(records, tokenizer)
    if sum(len(d) for d in docs) < tp.seq_len:
        raise RoutelabError(f"testbed: corpus has fewer tokens than one block of seq_len = {tp.seq_len}")
    data_rng = rng(params.seed, "train_data")

    log: dict[str, Any] = {"step": [], "loss": [], "aux_loss": [], "lr": []}
    t0 = time.perf_counter()
    with deterministic():
        torch.manual_seed(params.seed)
        model = OlmoeForCausalLM(model_config(params.model, tokenizer))
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tp.lr, betas=(0.9, 0.95), fused=True,  # fused: one ATen kernel, the same bits on every CPU (compute.py)
        )  # fmt: skip
        blocks, cursor = epoch_blocks(docs, tp.seq_len, data_rng), 0

        def train_step(step: int, lr: float) -> float:
            nonlocal blocks, cursor
            if cursor + tp.batch_size > len(blocks):
                blocks, cursor = epoch_blocks(docs, tp.seq_len, data_rng), 0
            batch = torch.from_numpy(blocks[cursor : cursor + tp.batch_size])  # (B, T)
            cursor += tp.batch_size
            for g in opt.param_groups:
                g["lr"] = lr
            out = model(input_ids=batch, labels=batch, output_router_logits=True)
            out.loss.backward()  # CE + aux_loss_coef * load-balancing loss
            torch.nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            aux = float(out.aux_loss.detach())
            ce = float(out.loss.detach()) - params.model.aux_loss_coef * aux
            log["step"].append(step)
            log["loss"].append(ce)
            log["aux_loss"].append(aux)
            log["lr"].append(lr)
            return ce

        with progress_display("testbed train", total=tp.steps, unit="steps", enabled=progress) as bar:
            for step in range(tp.steps):
                ce = train_step(step, lr_at(tp, step))
                bar.advance(1)
                bar.update(loss=ce)
        extra, scores = 0, []
        if learned is not None and tp.max_extra_steps:
            floor = tp.lr * tp.min_lr_ratio
            while True:
                model.eval()
                scores.append(learned(model))
                model.train()
                if min(scores[-1].values(), default=1.0) >= 1.0 or extra >= tp.max_extra_steps:
                    break
                n = min(tp.extra_steps, tp.max_extra_steps - extra)
                with progress_display("testbed train (until learned)", total=n, unit="steps", enabled=progress) as bar:
                    for step in range(tp.steps + extra, tp.steps + extra + n):
                        ce = train_step(step, floor)
                        bar.advance(1)
                        bar.update(loss=ce)
                extra += n
        log["extra_steps"] = extra
        log["learned"] = scores  # the criterion after `steps` and after each extra round
        model.eval()
    log["train_seconds"] = time.perf_counter() - t0
    log["final_loss"] = float(np.mean(log["loss"][-10:]))  # mean of the last 10 steps
    log["tokens_seen"] = (tp.steps + extra) * tp.batch_size * tp.seq_len
    log["corpus_tokens"] = int(sum(len(d) for d in docs))
    return model, log


def save_model(
    model: OlmoeForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    log: dict[str, Any],
    out_dir: str | Path,
    *,
    extra: dict[str, Any] | None = None,
) -> None:
    """``save_pretrained`` model + tokenizer, ``train_log.json`` and ``extra`` JSON files into ``out_dir`` (atomically).

    The folder then loads like any real checkpoint: ``AutoModelForCausalLM.from_pretrained``.
    ``extra``: file name -> JSON content (the planted variants' ``plant.json``).
    """
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # wall time stays out: the folder's hash must depend on the params alone. The until-learned
        # record goes to the metrics (testbed.json): its extra steps are in the step/loss lists already
        write_json(tmp / "train_log.json", {k: v for k, v in log.items() if k not in ("train_seconds", "extra_steps", "learned")})
        for name, content in (extra or {}).items():
            write_json(tmp / name, content)


def train_and_evaluate(
    corpus_dir: str | Path,
    model_dir: str | Path,
    params: TestbedParams,
    *,
    variant_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train from scratch on a corpus directory, save the model to ``model_dir``, return its metrics.

    The metrics are the ground truth of the SAVED folder (``truth.ground_truth``) plus the
    strength, final loss, steps and training seconds. ``variant_name`` (optional; ``control``
    or ``diffuse``): checks that the corpus was generated with that variant's strength.
    """
    corpus_dir = require_corpus_dir(corpus_dir)
    design = read_design(corpus_dir)
    if variant_name is not None:
        corpus = variant(variant_name, "testbed_train").corpus
        want = strength_for(params, corpus)
        if not math.isclose(design["strength"], want):
            raise RoutelabError(
                f"--corpus {corpus_dir} was generated with strength {design['strength']} but variant "
                f"'{variant_name}' trains on the '{corpus}' corpus (strength {want}): pass --corpus data/testbed/{corpus}"
            )
    tokenizer = AutoTokenizer.from_pretrained(corpus_dir / CORPUS_FILES["tokenizer"])
    model, log = train_from_scratch(
        read_records(corpus_dir), tokenizer, params, progress=progress,
        learned=lambda m: common_fact_mc1(m, tokenizer, corpus_dir, params.train.eval_batch_size),
    )  # fmt: skip
    save_model(model, tokenizer, log, model_dir)
    truth = ground_truth(model_dir, corpus_dir, batch_size=params.train.eval_batch_size, seed=params.seed)
    return {
        "strength": design["strength"],
        "final_loss": log["final_loss"],
        "train_seconds": log["train_seconds"],
        "steps": params.train.steps,
        "extra_steps": log["extra_steps"],  # run until the common facts were learned (TrainParams.max_extra_steps)
        "common_fact_mc1_by_relation": log["learned"],  # the criterion after `steps` and after each extra round
        **truth,
    }
