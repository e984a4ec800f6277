"""The routing-log schema, defined once: extraction writes it, profiling and tests read it.

One row per (prompt, MoE layer, real token). Pads are never rows.

| column    | type                     | meaning                                                        |
|-----------|--------------------------|----------------------------------------------------------------|
| prompt_id | string                   | id of the prompt (txt input: the line number from 0)          |
| layer     | int16                    | true decoder-layer index of the MoE block (dense layers absent)|
| pos       | int32                    | token position from 0 over the tokenizer's output (specials in)|
| token_id  | int32                    | the token at ``pos``                                           |
| logits    | fixed_size_list<f32>[K]  | router logits the routing rule ran on (edited when an edit is  |
|           |                          | active, see metadata ``edit``); −inf marks a masked expert     |
| topk      | fixed_size_list<i16>[k]  | selected experts, in the router's own order                    |

Routing probabilities are a pure function of ``logits`` (the family's score function:
softmax for all families but DeepSeek-V3, which uses sigmoid); they are not stored twice.

File metadata (key ``routelab``, JSON): model, family, num_experts (K), top_k (k),
moe_layers, dtype, transformers_version, torch_version, edit (null or a description).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from routelab.errors import RoutelabError

META_KEY = b"routelab"
COLUMNS = ("prompt_id", "layer", "pos", "token_id", "logits", "topk")


@dataclass
class RoutingMeta:
    """What a routing file says about where it came from."""

    model: str
    family: str
    num_experts: int
    top_k: int
    moe_layers: list[int]
    dtype: str
    transformers_version: str
    torch_version: str
    score_fn: str = "softmax"  # how probabilities follow from logits: softmax | sigmoid
    edit: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def arrow_schema(meta: RoutingMeta) -> pa.Schema:
    """The pyarrow schema of a routing file with K experts and top-k, carrying ``meta``."""
    schema = pa.schema(
        [
            ("prompt_id", pa.string()),
            ("layer", pa.int16()),
            ("pos", pa.int32()),
            ("token_id", pa.int32()),
            ("logits", pa.list_(pa.float32(), meta.num_experts)),
            ("topk", pa.list_(pa.int16(), meta.top_k)),
        ]
    )
    return schema.with_metadata({META_KEY: json.dumps(asdict(meta)).encode()})


def read_meta(path: str | Path) -> RoutingMeta:
    """Read the metadata of a routing file; a clear error when it is not one."""
    path = Path(path)
    if not path.exists():
        raise RoutelabError(f"routing file {path} not found: run the `extract` stage first")
    try:
        md = pq.read_schema(path).metadata or {}
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for non-parquet files
        raise RoutelabError(f"{path} is not a Parquet file ({exc})") from None
    if META_KEY not in md:
        raise RoutelabError(f"{path} has no '{META_KEY.decode()}' metadata: not a routelab routing file")
    return RoutingMeta(**json.loads(md[META_KEY]))
