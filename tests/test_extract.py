"""Routing extraction to Parquet: pads, round trip, resume, CLI, ARR recording, what is refused
before <out>.parts/ is touched (tests/test_bad_inputs.py runs the command line on bad input)."""

from __future__ import annotations

import json

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
from routelab.cli import main as cli_main
from routelab.errors import RoutelabError
from routelab.extract import extract_routing
from routelab.tables import read_prompt_texts as read_prompts
from routelab.models import ModelSpec, load_model
from routelab.routing import RoutingEdit, attach
from routelab.tables import read_routing_meta as read_meta

PROMPTS = [
    "the doctor is kind .",
    "the old female nurse was kind and the young male teacher was kind .",
    "a teacher",
    "the engineer , the doctor and the nurse .",
    "the young doctor was a kind engineer of the old nurse .",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tm.save_tiny_olmoe(tmp_path_factory.mktemp("tiny_olmoe"))


@pytest.fixture(scope="module")
def lm(model_dir):
    return load_model(ModelSpec(path=str(model_dir), dtype="float32", device="cpu"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p


def _alone(lm, text):
    """Routing of one prompt run alone, unpadded: {layer: (logits (n, K), topk (n, k))}."""
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    with attach(lm, record=True) as s:
        lm.model(input_ids=ids)
    return ids[0], {c.layer: (c.logits, c.index) for c in s.records}


def test_rows_match_unpadded_runs_and_pads_are_never_recorded(lm, prompt_file, tmp_path):
    out = tmp_path / "r.parquet"
    summary = extract_routing(lm, read_prompts(prompt_file), out, batch_size=3, chunk_size=4, progress=False)
    df = pl.read_parquet(out)
    n_real = sum(len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS)
    assert df.height == n_real * len(lm.moe_layers) == summary["rows"]
    assert df["token_id"].ne(lm.tokenizer.pad_token_id).all()
    for pid, text in enumerate(PROMPTS):
        ids, alone = _alone(lm, text)
        rows = df.filter(pl.col("prompt_id") == str(pid))
        for layer, (logits, topk) in alone.items():
            r = rows.filter(pl.col("layer") == layer).sort("pos")
            assert r["pos"].to_list() == list(range(len(ids)))
            assert r["token_id"].to_list() == ids.tolist()
            torch.testing.assert_close(torch.tensor(r["logits"].to_list()), logits, rtol=1e-5, atol=1e-5)
            assert r["topk"].to_list() == topk.tolist()
    # rows ordered (prompt, layer, pos)
    assert df["prompt_id"].to_list() == sorted(df["prompt_id"].to_list(), key=int)


def test_parquet_roundtrip_schema_and_metadata(lm, prompt_file, tmp_path):
    out = tmp_path / "r.parquet"
    extract_routing(lm, read_prompts(prompt_file), out, progress=False, model_name="tiny")
    meta = read_meta(out)
    assert (meta.model, meta.family, meta.num_experts, meta.top_k) == ("tiny", "OLMoE", 8, 2)
    assert meta.moe_layers == [0, 1, 2] and meta.dtype == "float32" and meta.transformers_version.startswith("5.")
    schema = pq.read_schema(out)
    assert schema.field("logits").type.list_size == 8 and schema.field("logits").type.value_type == "float"
    assert schema.field("topk").type.list_size == 2 and schema.field("topk").type.value_type == "int16"
    df = pl.read_parquet(out)
    top = torch.tensor(df["logits"].to_list()).topk(2, dim=-1).indices.sort(-1).values
    assert top.tolist() == torch.tensor(df["topk"].to_list()).sort(-1).values.tolist()


def test_resume_after_crash_gives_same_rows(lm, prompt_file, tmp_path):
    prompts = read_prompts(prompt_file) * 1
    full = tmp_path / "full.parquet"
    extract_routing(lm, prompts, full, chunk_size=2, progress=False)
    resumed = tmp_path / "resumed.parquet"
    r = extract_routing(lm, prompts, resumed, chunk_size=2, progress=False, stop_after_chunks=2)
    assert r["stopped"] and not resumed.exists()  # a killed run leaves no final file
    shards = sorted((tmp_path / "resumed.parquet.parts").glob("chunk-*.parquet"))
    assert len(shards) == 2
    done_ids = set(pl.read_parquet(shards)["prompt_id"].unique().to_list())
    summary = extract_routing(lm, prompts, resumed, chunk_size=2, progress=False)
    computed = {pid for pid, _ in prompts if pid not in done_ids}
    assert summary["tokens_computed"] == sum(len(lm.tokenizer(t)["input_ids"]) for p, t in prompts if p in computed)
    assert pl.read_parquet(resumed).equals(pl.read_parquet(full))
    assert not (tmp_path / "resumed.parquet.parts").exists()


def test_cli_extract_plain_and_under_arr(model_dir, prompt_file, tmp_path, lm):
    out = tmp_path / "cli.parquet"
    assert cli_main(["extract", "--model", str(model_dir), "--prompts", str(prompt_file), "--out", str(out),
                     "--device", "cpu"]) == 0
    plain = pl.read_parquet(out)
    assert plain["prompt_id"].unique().sort().to_list() == ["0", "1", "2", "3", "4"]
    # ARR with a profile that penalises each layer's busiest expert heavily
    busiest = (plain.select("layer", pl.col("topk").arr.to_list().alias("e")).explode("e").group_by("layer", "e").len()
               .sort("len", descending=True).group_by("layer").first())
    phi = [{"layer": l, "expert": e, "phi": 1.0 if e == b else 0.0}
           for l, b in busiest.select("layer", "e").iter_rows() for e in range(8)]
    prof = tmp_path / "profile.parquet"
    pl.DataFrame(phi).write_parquet(prof)
    out2 = tmp_path / "arr.parquet"
    assert cli_main(["extract", "--model", str(model_dir), "--prompts", str(prompt_file), "--out", str(out2),
                     "--profile", str(prof), "--lam", "50", "--device", "cpu"]) == 0
    arr = pl.read_parquet(out2)
    assert read_meta(out2).edit["lambda"] == 50.0
    for l, b in busiest.select("layer", "e").iter_rows():
        sel = arr.filter(pl.col("layer") == l)["topk"].to_list()
        assert all(b not in row for row in sel)
        # recorded logits are z − λφ (z itself is unchanged at the first MoE layer only: later
        # layers see hidden states the earlier edits changed); top-k of softmax(recorded) is the selection
        z = torch.tensor(arr.filter(pl.col("layer") == l)["logits"].to_list())
        if l == 0:
            z0 = torch.tensor(plain.filter(pl.col("layer") == l)["logits"].to_list())
            torch.testing.assert_close(z, z0 - 50 * torch.tensor([1.0 if e == b else 0.0 for e in range(8)]))
        assert F.softmax(z, -1).topk(2).indices.sort(-1).values.tolist() == torch.tensor(sel).sort(-1).values.tolist()


def test_cli_errors_are_clean(model_dir, prompt_file, tmp_path, capsys):
    assert cli_main(["extract", "--model", str(tmp_path / "nope"), "--prompts", str(prompt_file),
                     "--out", str(tmp_path / "x.parquet")]) == 2
    assert f"--model {tmp_path / 'nope'}: not found" in capsys.readouterr().err
    assert cli_main(["extract", "--model", str(model_dir), "--prompts", str(prompt_file),
                     "--out", str(tmp_path / "x.parquet"), "--lam", "1"]) == 2
    assert cli_main(["extract", "--model", str(model_dir), "--prompts", str(tmp_path / "missing.txt"),
                     "--out", str(tmp_path / "x.parquet")]) == 2
    assert not (tmp_path / "x.parquet").exists()


def test_load_model_unknown_architecture(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(architectures=["LlamaForCausalLM"]).save_pretrained(tmp_path)
    with pytest.raises(RoutelabError, match="Supported families: OLMoE"):
        load_model(ModelSpec(path=str(tmp_path)))


def test_shards_of_another_model_are_not_resumed(tmp_path, prompt_file):
    """Killed run, then the model is retrained in place: the old shards must be discarded."""
    model_dir = tm.save_tiny_olmoe(tmp_path / "model", seed=0)
    lm0 = load_model(ModelSpec(path=str(model_dir), dtype="float32", device="cpu"))
    prompts = read_prompts(prompt_file)
    out = tmp_path / "r.parquet"
    extract_routing(lm0, prompts, out, chunk_size=2, progress=False, stop_after_chunks=2)
    tm.save_tiny_olmoe(model_dir, seed=1)  # "retrained" weights in the same folder
    lm1 = load_model(ModelSpec(path=str(model_dir), dtype="float32", device="cpu"))
    summary = extract_routing(lm1, prompts, out, chunk_size=2, progress=False)
    assert summary["tokens_computed"] == sum(len(lm1.tokenizer(t)["input_ids"]) for _, t in prompts)
    fresh = tmp_path / "fresh.parquet"
    extract_routing(lm1, prompts, fresh, chunk_size=2, progress=False)
    assert pl.read_parquet(out).equals(pl.read_parquet(fresh))


def test_a_resume_with_another_batch_size_starts_afresh(lm, prompt_file, tmp_path, capsys):
    """The batch size decides which prompts are padded together (logits differ in the last bits),
    so it is part of the fingerprint: shards of batch size 2 are not mixed into a batch-3 file."""
    prompts = read_prompts(prompt_file)
    out = tmp_path / "r.parquet"
    extract_routing(lm, prompts, out, chunk_size=2, batch_size=2, progress=False, stop_after_chunks=2)
    summary = extract_routing(lm, prompts, out, chunk_size=2, batch_size=3, progress=False)
    assert summary["tokens_computed"] == sum(len(lm.tokenizer(t)["input_ids"]) for _, t in prompts)
    assert f"extract: discarded 2 finished chunks in {out}.parts" in capsys.readouterr().err
    fresh = tmp_path / "fresh.parquet"
    extract_routing(lm, prompts, fresh, chunk_size=2, batch_size=3, progress=False)
    assert out.read_bytes() == fresh.read_bytes()


def test_a_parts_folder_routelab_did_not_make_is_refused_and_kept(lm, prompt_file, tmp_path):
    out = tmp_path / "r.parquet"
    parts = tmp_path / "r.parquet.parts"
    parts.mkdir()
    (parts / "mine.txt").write_text("not routelab's")
    with pytest.raises(RoutelabError, match="not made by routelab extract"):
        extract_routing(lm, read_prompts(prompt_file), out, progress=False)
    assert [f.name for f in parts.iterdir()] == ["mine.txt"] and not out.exists()


def test_bad_edit_and_long_prompts_are_refused_before_the_parts_folder(lm, prompt_file, tmp_path):
    out = tmp_path / "r.parquet"
    with pytest.raises(RoutelabError, match="edit of layer 7: not an MoE layer"):
        extract_routing(lm, read_prompts(prompt_file), out, edit=RoutingEdit.mask({7: [0]}), progress=False)
    too_long = [("a", "the doctor is kind ."), ("b", " ".join(["the kind nurse"] * 30))]  # BOS + 90 > 64 positions
    with pytest.raises(RoutelabError, match=r"1 prompts are longer than the model's 64 positions \(longest: prompt_id b, "
                                            r"91 tokens\): set extract.max_length \(routelab extract: --max-length\)"):
        extract_routing(lm, too_long, out, progress=False)
    assert not (tmp_path / "r.parquet.parts").exists() and not out.exists()


def test_max_length_truncates_and_counts(lm, tmp_path):
    prompts = [("a", "the doctor is kind ."), ("b", " ".join(["the kind nurse"] * 30))]  # 6 and 91 tokens
    out = tmp_path / "r.parquet"
    summary = extract_routing(lm, prompts, out, max_length=6, progress=False)
    assert summary["truncated"] == 1 and summary["tokens"] == 12
    df = pl.read_parquet(out)
    assert df.group_by("prompt_id").agg(pl.col("pos").max()).sort("prompt_id")["pos"].to_list() == [5, 5]
    with pytest.raises(RoutelabError, match="a max length of 65 tokens .* use 1 to 64"):
        extract_routing(lm, prompts, tmp_path / "x.parquet", max_length=65, progress=False)


def test_the_manifest_records_the_fingerprint_while_shards_wait(lm, prompt_file, tmp_path):
    out = tmp_path / "r.parquet"
    extract_routing(lm, read_prompts(prompt_file), out, chunk_size=2, progress=False, stop_after_chunks=1)
    manifest = json.loads((tmp_path / "r.parquet.parts" / "manifest.json").read_text())
    assert manifest["n_prompts"] == 5 and len(manifest["fingerprint"]) == 64
