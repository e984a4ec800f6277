"""Reading and editing routing before top-k, for every family, with one forward hook.

Edits (docs/method.md §3 ARR, §6 SteerMoE, §4 masking) act on the router logits z of each
MoE layer, in float32, in this order:

1. additive per-expert bias            z ← z + b_l            (ARR: b_l = −λ·φ_l)
2. SteerMoE shift in log-softmax space s = log_softmax(z); s_k ← max(s)+ε (activate),
                                       s_k ← min(s)−ε (deactivate); z ← s + logsumexp(z)
   (adding logsumexp back leaves softmax(z) = softmax(s) exactly, and keeps the logit scale
   that sigmoid routers need)
3. masks                               z_k ← −inf (expert off)

then the family's own routing rule (renormalisation, groups, scaling) runs on the edited
logits (routelab.adapters), and the experts see only that choice. Shared experts are never
touched: only the routed router's output changes.

    with attach(lm, edit=RoutingEdit.arr(profile, lam=1.0), record=True) as session:
        lm.model(**batch)
    session.records  # RouterCall per MoE layer call: logits, weights, top-k index

Why over ~500 lines: the edits, the per-row condition table (EditTable), the hook that applies
them and LayerFork (conditions that share the layers before their first edit) all depend on
one row layout of the batch; kept together, that layout is defined once.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import polars as pl
import torch
import transformers
from torch import nn

from routelab.adapters import RouterAdapter
from routelab.errors import RoutelabError
from routelab.tables import load_profile

STEER_EPS = 0.01  # ε of SteerMoE (docs/method.md §6)
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# ----------------------------------------------------------------------------------------
# Edits
# ----------------------------------------------------------------------------------------
@dataclass
class LayerEdit:
    """An edit of one MoE layer's routing; every part optional."""

    bias: torch.Tensor | None = None  # (K,) float32 added to the logits
    masked: tuple[int, ...] = ()  # experts switched off (logit −inf)
    activate: tuple[int, ...] = ()  # SteerMoE A+
    deactivate: tuple[int, ...] = ()  # SteerMoE A−

    def __or__(self, other: "LayerEdit") -> "LayerEdit":
        bias = _add_opt(self.bias, other.bias)
        return LayerEdit(
            bias=bias,
            masked=tuple(sorted(set(self.masked) | set(other.masked))),
            activate=tuple(sorted(set(self.activate) | set(other.activate))),
            deactivate=tuple(sorted(set(self.deactivate) | set(other.deactivate))),
        )


def _add_opt(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@dataclass
class RoutingEdit:
    """Per-layer edits; compose with ``|`` (biases add, masks and steering sets unite)."""

    layers: dict[int, LayerEdit] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)  # recorded in output metadata

    def __or__(self, other: "RoutingEdit") -> "RoutingEdit":
        layers = dict(self.layers)
        for layer, e in other.layers.items():
            layers[layer] = layers[layer] | e if layer in layers else e
        parts = [d for d in (self.description, other.description) if d]
        return RoutingEdit(layers, {"compose": parts} if len(parts) > 1 else (parts[0] if parts else {}))

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def arr(
        cls, profile: pl.DataFrame | str | Path, lam: float, layers: list[int] | None = None
    ) -> "RoutingEdit":
        """ARR soft reweighting: z − λ·φ_l on ``layers`` (all profile layers when None).

        ``profile``: one row per (layer, expert) with a ``phi`` column (the profile stage's
        output, data/profiles/<model>.parquet).
        """
        phi = read_profile(profile)
        if not isinstance(lam, (int, float)) or not math.isfinite(lam):
            raise RoutelabError(f"λ must be a finite number, got {lam!r} (0 leaves routing unchanged)")
        chosen = sorted(phi) if layers is None else list(layers)
        missing = [layer for layer in chosen if layer not in phi]
        if missing:
            raise RoutelabError(
                f"ARR layers {missing} are not in the profile (profile layers: {sorted(phi)})"
            )
        src = str(profile) if isinstance(profile, (str, Path)) else "<DataFrame>"
        return cls(
            {layer: LayerEdit(bias=-float(lam) * phi[layer]) for layer in chosen},
            {"kind": "arr", "lambda": float(lam), "layers": chosen, "profile": src},
        )

    @classmethod
    def mask(cls, experts: dict[int, list[int]]) -> "RoutingEdit":
        """Switch experts off: {layer: [expert, ...]}. Masked experts can never be selected."""
        return cls(
            {int(layer): LayerEdit(masked=tuple(sorted(map(int, ex)))) for layer, ex in experts.items()},
            {"kind": "mask", "experts": {int(k): list(map(int, v)) for k, v in experts.items()}},
        )

    @classmethod
    def steer(
        cls, activate: dict[int, list[int]] | None = None, deactivate: dict[int, list[int]] | None = None
    ) -> "RoutingEdit":
        """SteerMoE (de)activation: {layer: [expert, ...]} for A+ and A− (docs/method.md §6)."""
        activate, deactivate = activate or {}, deactivate or {}
        layers = {}
        for layer in sorted(set(activate) | set(deactivate)):
            layers[layer] = LayerEdit(
                activate=tuple(sorted(map(int, activate.get(layer, [])))),
                deactivate=tuple(sorted(map(int, deactivate.get(layer, [])))),
            )
        return cls(layers, {"kind": "steer", "activate": activate, "deactivate": deactivate})

    @classmethod
    def steer_table(cls, table: pl.DataFrame) -> "RoutingEdit":
        """SteerMoE edit from a table with columns layer, expert, action (activate|deactivate)."""
        need = {"layer", "expert", "action"}
        if not need <= set(table.columns):
            raise RoutelabError(f"steering table needs columns {sorted(need)}, found {table.columns}")
        bad = set(table["action"].unique().to_list()) - {"activate", "deactivate"}
        if bad:
            raise RoutelabError(f"steering table: unknown action(s) {sorted(bad)}; use activate|deactivate")
        sets: dict[str, dict[int, list[int]]] = {"activate": {}, "deactivate": {}}
        for layer, expert, action in table.select("layer", "expert", "action").iter_rows():
            sets[action].setdefault(int(layer), []).append(int(expert))
        return cls.steer(sets["activate"], sets["deactivate"])

    # --- checks ------------------------------------------------------------------------------
    def validate(self, moe_layers: list[int], num_experts: int, top_k: int) -> None:
        """Refuse a bad edit before any forward pass (shape, NaN, too few experts left)."""
        for layer, e in self.layers.items():
            where = f"edit of layer {layer}"
            if layer not in moe_layers:
                raise RoutelabError(f"{where}: not an MoE layer of this model (MoE layers: {moe_layers})")
            if e.bias is not None:
                if tuple(e.bias.shape) != (num_experts,):
                    raise RoutelabError(
                        f"{where}: bias/profile has shape {tuple(e.bias.shape)}, expected ({num_experts},): "
                        "the profile must come from this model (one row per expert and layer)"
                    )
                if not torch.isfinite(e.bias).all():
                    raise RoutelabError(f"{where}: bias/profile holds NaN or inf; recompute the profile")
            for name, ids in (("mask", e.masked), ("activate", e.activate), ("deactivate", e.deactivate)):
                out = [i for i in ids if not 0 <= i < num_experts]
                if out:
                    raise RoutelabError(f"{where}: {name} expert ids {out} outside 0..{num_experts - 1}")
            if len(e.activate) > top_k:
                raise RoutelabError(f"{where}: {len(e.activate)} experts forced on, more than k={top_k}")
            for a, b, what in ((e.activate, e.deactivate, "activated and deactivated"),
                               (e.activate, e.masked, "activated and masked")):
                if set(a) & set(b):
                    raise RoutelabError(f"{where}: experts {sorted(set(a) & set(b))} both {what}")
            left = num_experts - len(set(e.masked) | set(e.deactivate))
            if left < top_k:  # masked ∪ deactivated, so this covers masks alone too
                raise RoutelabError(
                    f"{where}: leaves fewer than k={top_k} experts enabled "
                    f"({left} neither masked nor deactivated of {num_experts}); renormalisation would "
                    "divide 0/0 and switched-off experts would be chosen. Mask or deactivate fewer experts."
                )


def read_profile(profile: pl.DataFrame | str | Path) -> dict[int, torch.Tensor]:
    """{layer: φ_l (K,) float32} from a profile table, checked by routelab.tables.load_profile
    (one row per (layer, expert), experts 0..K-1 in every layer, finite φ)."""
    df = load_profile(profile)  # an empty table fails its shape check
    return {
        int(layer): torch.tensor(grp["phi"].to_list(), dtype=torch.float32)
        for (layer,), grp in df.group_by(["layer"], maintain_order=True)
    }


class EditTable:
    """The edits of one MoE layer for C conditions, as (C, K) tensors gathered per token.

    A single edit is the case C = 1. Per-row conditions (``attach(..., conditions=[...])``)
    let row b of a batch run under condition ``ids[b]``: C conditions are scored in one
    batched forward, and each token's row of the table is ``table[ids[b]]``.
    """

    def __init__(self, edits: list[LayerEdit | None], num_experts: int, device: torch.device):
        C, K = len(edits), num_experts
        self.edited = torch.tensor([e is not None for e in edits], device=device)  # (C,)
        live = [e or LayerEdit() for e in edits]
        self.bias = None
        if any(e.bias is not None for e in live):
            self.bias = torch.stack([
                torch.zeros(K) if e.bias is None else e.bias.detach().float().cpu() for e in live
            ]).to(device)  # (C, K)
        self.masked = self._flags([e.masked for e in live], K, device)  # (C, K) bool or None
        self.activate = self._flags([e.activate for e in live], K, device)
        self.deactivate = self._flags([e.deactivate for e in live], K, device)

    @staticmethod
    def _flags(sets: list[tuple[int, ...]], K: int, device: torch.device) -> torch.Tensor | None:
        if not any(sets):
            return None
        out = torch.zeros(len(sets), K, dtype=torch.bool)
        for c, ids in enumerate(sets):
            out[c, list(ids)] = True
        return out.to(device)

    def apply(self, logits: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Edited float32 logits (N, K) (order: bias, steer, mask; module docstring).

        ``cond`` (N,) is each token's condition index; None means condition 0 for every row.
        """
        pick = (lambda t: t[0]) if cond is None else (lambda t: t[cond])  # (K,) or (N, K)
        z = logits.float()
        if self.bias is not None:
            z = z + pick(self.bias)  # (N, K)
        if self.activate is not None or self.deactivate is not None:
            lse = torch.logsumexp(z, dim=-1, keepdim=True)  # (N, 1)
            s = z - lse  # log_softmax, (N, K)
            s_max = s.max(dim=-1, keepdim=True).values  # (N, 1)
            s_min = s.masked_fill(torch.isneginf(s), float("inf")).min(dim=-1, keepdim=True).values
            steered = torch.zeros_like(s, dtype=torch.bool)
            if self.activate is not None:
                act = pick(self.activate).expand_as(s)
                s = torch.where(act, s_max + STEER_EPS, s)
                steered |= act
            if self.deactivate is not None:
                deact = pick(self.deactivate).expand_as(s)
                s = torch.where(deact, s_min - STEER_EPS, s)
                steered |= deact
            z = torch.where(steered.any(dim=-1, keepdim=True), s + lse, z)  # rows without steering keep z
        if self.masked is not None:
            z = z.masked_fill(pick(self.masked).expand_as(z), float("-inf"))
        return z


def apply_edit(logits: torch.Tensor, edit: LayerEdit) -> torch.Tensor:
    """Edited float32 logits (N, K) of one layer under one edit (order: bias, steer, mask)."""
    return EditTable([edit], logits.shape[-1], logits.device).apply(logits, None)


# ----------------------------------------------------------------------------------------
# Finding routers and checking the adapter
# ----------------------------------------------------------------------------------------
def find_routers(model: nn.Module, adapter: RouterAdapter) -> dict[int, nn.Module]:
    """{true decoder-layer index: router module}, matched by class name, mapped by module name."""
    routers: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        if type(module).__name__ != adapter.router_class:
            continue
        m = _LAYER_RE.search(name)
        if m is None:
            raise RoutelabError(f"{adapter.family}: router {name!r} has no layer index in its name")
        routers[int(m.group(1))] = module
    if not routers:
        classes = sorted({type(m).__name__ for m in model.modules() if re.search("gate|router", type(m).__name__, re.I)})
        raise RoutelabError(
            f"{adapter.family}: no router of class {adapter.router_class} found in the model "
            f"(router-like classes present: {classes or 'none'}); transformers {transformers.__version__}. "
            "The model's family or the transformers version does not match this adapter."
        )
    return dict(sorted(routers.items()))


def parity_check(adapter: RouterAdapter, routers: dict[int, nn.Module], n_tokens: int = 256, seed: int = 0) -> None:
    """With no edit, the adapter's re-implemented routing must reproduce each router's own.

    Runs the router's forward directly (no hooks) on random hidden states and compares the
    selected index SETS per token (DeepSeek returns them unsorted) and the matching weights.
    Tokens whose k-th and (k+1)-th scores tie are skipped: there the choice is arbitrary, not a
    rule. Families that select in fp32 (most) tie only on equal scores; families whose router
    scores in the model dtype (``routes_in_model_dtype``) tie within that dtype's resolution.
    """
    gen = torch.Generator().manual_seed(seed)
    for layer, router in routers.items():
        weight = router.weight
        low_precision = adapter.routes_in_model_dtype and weight.dtype != torch.float32
        hidden = torch.randn(n_tokens, weight.shape[1], generator=gen).to(weight.device, weight.dtype)
        if adapter.router_input_3d:
            hidden = hidden.unsqueeze(0)  # (1, N, H)
        with torch.no_grad():
            out = router.forward(hidden)
            logits = adapter.logits(router, (hidden,), out)  # (N, K)
            w_ref, i_ref = adapter.selection(out)
            w_new, i_new = adapter.rule(router, logits.float())
        k = i_ref.shape[-1]
        scores = adapter.probabilities(logits)  # (N, K) float32
        top = scores.topk(min(k + 1, scores.shape[-1]), dim=-1).values
        rel = 4 * torch.finfo(weight.dtype).eps if low_precision else 1e-6
        if top.shape[-1] > k:
            decisive = (top[:, k - 1] - top[:, k]).abs() > rel * top[:, k - 1].abs().clamp(min=1e-30)
        else:
            decisive = torch.ones(len(top), dtype=torch.bool, device=top.device)
        if not low_precision and decisive.float().mean() < 0.25:
            raise RoutelabError(
                f"{adapter.family} parity check at layer {layer}: only {int(decisive.sum())} of {len(top)} random "
                "tokens route without ties, too few to check the adapter (router weights all equal or zero?)"
            )
        ref_sorted, ref_order = i_ref.sort(dim=-1)
        new_sorted, new_order = i_new.to(i_ref.dtype).sort(dim=-1)
        same_index = (ref_sorted == new_sorted).all(dim=-1) | ~decisive
        w_ref_s = w_ref.float().gather(-1, ref_order)
        w_new_s = w_new.float().gather(-1, new_order)
        atol = 1e-5 if weight.dtype == torch.float32 else 2e-2
        same_weight = torch.isclose(w_ref_s, w_new_s, atol=atol, rtol=atol).all(dim=-1) | ~decisive
        if not bool(same_index.all() and same_weight.all()):
            bad = int((~(same_index & same_weight)).nonzero()[0])
            raise RoutelabError(
                f"{adapter.family} adapter parity check failed at layer {layer} on transformers "
                f"{transformers.__version__}: the router chose {i_ref[bad].tolist()} with weights "
                f"{[round(x, 6) for x in w_ref[bad].float().tolist()]}, routelab's re-implementation "
                f"{i_new[bad].tolist()} with {[round(x, 6) for x in w_new[bad].float().tolist()]}. "
                "This transformers release changed the routing rule: update "
                f"src/routelab/adapters/ for {adapter.family}, or pin transformers to the version in constraints.txt."
            )


# ----------------------------------------------------------------------------------------
# Recording and the hook
# ----------------------------------------------------------------------------------------
@dataclass
class RouterCall:
    """One router call: every row is a token of the flattened (B·S) batch, pads included."""

    layer: int
    logits: torch.Tensor  # (N, K) float32, the logits routing ran on (edited if an edit applied)
    weights: torch.Tensor  # (N, k) float32
    index: torch.Tensor  # (N, k) int64, selected experts


@dataclass
class RoutingSession:
    """What ``attach`` yields: the recorded calls, and the facts of the attached model."""

    adapter: RouterAdapter
    moe_layers: list[int]
    num_experts: int
    top_k: int
    records: list[RouterCall] = field(default_factory=list)
    n_conditions: int = 1  # C: per-row conditions attached (1 = one edit for every row)
    row_conditions: torch.Tensor | None = None  # (B,) condition index of each batch row
    calls: dict[int, int] = field(default_factory=dict)  # router calls per layer (prefill + decode steps)
    tokens: dict[int, int] = field(default_factory=dict)  # token rows routed per layer

    def clear(self) -> None:
        self.records.clear()

    def use_conditions(self, ids: torch.Tensor | list[int]) -> None:
        """Set the condition of each batch row for the next forward passes ((B,) ints in 0..C-1)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_conditions):
            raise RoutelabError(
                f"condition ids {sorted(set(ids.tolist()))[:5]} outside 0..{self.n_conditions - 1} "
                f"({self.n_conditions} conditions attached)"
            )
        self.row_conditions = ids

    def probabilities(self, call: RouterCall) -> torch.Tensor:
        """Routing probabilities G(h) (N, K) of a recorded call."""
        return self.adapter.probabilities(call.logits)


@contextlib.contextmanager
def attach(
    model: nn.Module | Any,
    adapter: RouterAdapter | None = None,
    *,
    edit: RoutingEdit | None = None,
    conditions: list[RoutingEdit | None] | None = None,
    record: bool = False,
    check_parity: bool = True,
) -> Iterator[RoutingSession]:
    """Install routing edits and/or recording on every MoE router; removed on exit.

    ``model`` is a transformers model (then pass ``adapter``) or a routelab LoadedModel.
    ``edit`` applies to every row. ``conditions`` (C edits, None = no edit) applies per row:
    call ``session.use_conditions(ids)`` with the (B,) condition index of each batch row before
    a forward; rows are b-major (token b·S + s), in prefill and in every decoding step.
    A bad edit is refused here, before any forward pass; the adapter's parity check runs
    once per attach (``check_parity=False`` skips it for repeated attaches in a loop).
    """
    if adapter is None:
        adapter, model = model.adapter, model.model
    if model.training:
        raise RoutelabError("model is in training mode (Mixtral jitter, Phi-MoE sampling): call model.eval() first")
    if getattr(model, "_routelab_attached", False):
        raise RoutelabError(
            "routing hooks are already attached to this model: compose edits with `|` in one attach "
            "(a nested attach would record the routing before the outer edit)"
        )
    if edit is not None and conditions is not None:
        raise RoutelabError("attach: pass either one edit for every row or per-row conditions, not both")
    routers = find_routers(model, adapter)
    num_experts, top_k = adapter.sizes(model.config)
    per_row = conditions is not None
    edits = [e or RoutingEdit() for e in conditions] if per_row else [edit or RoutingEdit()]
    if not edits:
        raise RoutelabError("attach: an empty list of conditions; give at least one (None = no edit)")
    for e in edits:
        e.validate(list(routers), num_experts, top_k)
    if check_parity:
        parity_check(adapter, routers)
    session = RoutingSession(adapter, list(routers), num_experts, top_k, n_conditions=len(edits))
    handles = []
    model._routelab_attached = True
    try:
        for layer, router in routers.items():
            layer_edits = [e.layers.get(layer) for e in edits]
            table = None
            if any(le is not None for le in layer_edits):
                table = EditTable(layer_edits, num_experts, router.weight.device)
            hook = _make_hook(adapter, layer, table, session, record, per_row)
            handles.append(router.register_forward_hook(hook, prepend=True))
        yield session
    finally:
        for h in handles:
            h.remove()
        model._routelab_attached = False


def _make_hook(
    adapter: RouterAdapter, layer: int, table: EditTable | None, session: RoutingSession, record: bool, per_row: bool
):
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any):
        logits = adapter.logits(module, inputs, output)  # (N, K), N = B·S flattened tokens
        session.calls[layer] = session.calls.get(layer, 0) + 1
        session.tokens[layer] = session.tokens.get(layer, 0) + logits.shape[0]
        if table is None:  # no condition edits this layer: read what the router did
            if record:
                weights, index = adapter.selection(output)
                session.records.append(
                    RouterCall(layer, logits.detach().float().cpu(), weights.detach().float().cpu(), index.detach().cpu())
                )
            return None
        cond = _token_conditions(session, logits.shape[0], logits.device) if per_row else None  # (N,)
        edited = table.apply(logits, cond)  # (N, K) float32
        weights, index = adapter.rule(module, edited)  # (N, k) each
        if per_row and not bool(table.edited.all()):
            # Rows whose condition leaves this layer alone keep the router's own output exactly
            # (no recomputation: per-row scores then equal separate runs bit for bit).
            keep = ~table.edited[cond]  # (N,)
            w0, i0 = adapter.selection(output)
            weights = torch.where(keep[:, None], w0.to(weights.dtype), weights)
            index = torch.where(keep[:, None], i0.to(index.dtype), index)
            edited = torch.where(keep[:, None], logits.float(), edited)
        if record:
            session.records.append(
                RouterCall(layer, edited.detach().cpu(), weights.detach().float().cpu(), index.detach().cpu())
            )
        return adapter.repack(output, edited, weights, index)

    return hook


def _token_conditions(session: RoutingSession, n_tokens: int, device: torch.device) -> torch.Tensor:
    """(N,) condition of each flattened token: row b's condition repeated over its S tokens."""
    ids = session.row_conditions
    if ids is None:
        raise RoutelabError(
            "per-row conditions are attached but no condition ids were set: call "
            "session.use_conditions(ids) with one id per batch row before the forward"
        )
    if n_tokens % ids.numel():
        raise RoutelabError(
            f"router saw {n_tokens} tokens, not a multiple of the {ids.numel()} batch rows given to "
            "session.use_conditions: set one condition id per row of the batch being run"
        )
    return ids.to(device).repeat_interleave(n_tokens // ids.numel())


# ----------------------------------------------------------------------------------------
# Sharing the layers before a fork: C conditions that differ only from some layer on
# ----------------------------------------------------------------------------------------
_DECODER_RE = re.compile(r"^(.*(?:^|\.)layers\.(\d+))$")


def decoder_layers(model: nn.Module) -> dict[int, nn.Module]:
    """{decoder-layer index: the decoder layer module} (modules named ``….layers.<i>``)."""
    out = {}
    for name, module in model.named_modules():
        m = _DECODER_RE.match(name)
        if m:
            out[int(m.group(2))] = module
    return dict(sorted(out.items()))


class LayerFork:
    """Run C conditions in one forward, computing the layers before each condition's first
    edited layer once, on the shared rows (docs/method.md §3, the AALS probes and the λ sweep).

        rows (B requests)      layers < f1        at f1: + B rows of c1 …   at the last fork the
        ┌ trunk (B) ┐  ───────► trunk ──────────► trunk | c1 | … ───────► shared rows are dropped
                                                                          (or kept for a condition
                                                                          that edits nothing)

    The trunk is unedited, so the rows of a condition are exactly what a separate run under it
    computes: a pre-hook on the decoder layer where conditions start copies the trunk's hidden
    states into their rows. Needs a model whose decoder layers take hidden states (R, S, H) and
    broadcast everything else over rows (positions from (1, S), no padding mask): right-padded
    scoring, and families with ``adapter.layer_fork``.
    """

    def __init__(self, model: nn.Module, session: RoutingSession, first_layers: Sequence[int | None]):
        if not session.adapter.layer_fork:
            raise RoutelabError(
                f"{session.adapter.family}: its decoder layers cannot take added rows mid-forward "
                "(a mask built per batch row); score its conditions without a fork"
            )
        self.model, self.session = model, session
        self.no_edit = len(first_layers)  # the condition index attached for the trunk (no edit)
        self.first = list(first_layers)
        layers = decoder_layers(model)
        self.forks = sorted({f for f in self.first if f is not None})
        missing = [f for f in self.forks if f not in layers]
        if missing:
            raise RoutelabError(f"LayerFork: decoder layers {missing} not found (layers: {sorted(layers)})")
        self.layers = {f: layers[f] for f in self.forks}
        self.keep_trunk = any(f is None for f in self.first)
        self.blocks: list[int] = []

    @contextlib.contextmanager
    def batch(self, B: int) -> Iterator[None]:
        """Hooks for one forward over B shared rows; ``rows(c)`` then locates condition c's rows."""
        self.blocks = [self.no_edit]  # one B-row block per entry: a condition index (no_edit = trunk)
        self.session.use_conditions([self.no_edit] * B)
        handles = []
        try:
            for f in self.forks:
                handles.append(self.layers[f].register_forward_pre_hook(self._hook(f, B), with_kwargs=True))
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, f: int, B: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            hidden = args[0] if args else kwargs["hidden_states"]  # (len(blocks)·B, S, H)
            new = [c for c, first in enumerate(self.first) if first == f]
            t = self.blocks.index(self.no_edit)
            trunk = hidden[t * B : (t + 1) * B]  # (B, S, H)
            last = f == self.forks[-1] and not self.keep_trunk
            keep = [i for i, c in enumerate(self.blocks) if not (last and c == self.no_edit)]
            parts = [hidden[i * B : (i + 1) * B] for i in keep] + [trunk] * len(new)
            self.blocks = [self.blocks[i] for i in keep] + new
            ids = [c for c in self.blocks for _ in range(B)]
            self.session.use_conditions(ids)
            out = torch.cat(parts, dim=0)  # (len(blocks)·B, S, H)
            if args:
                return (out, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": out}

        return hook

    def rows(self, c: int, B: int) -> slice:
        """The rows of condition c in the forward's output (after ``batch``)."""
        block = self.no_edit if self.first[c] is None else c
        i = self.blocks.index(block)
        return slice(i * B, (i + 1) * B)
