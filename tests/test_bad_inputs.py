"""Every bad input is one clear line and exit code 2; an interrupted extraction resumes (issue 9).

Each case runs the real command line in a subprocess (`python -m routelab.cli`, `python -m
stages.<name>`) in one shared work folder and asserts: exit code 2, one error line on stderr
that names the input as it was typed and says what to do, no "Traceback", and the same
files in the work folder before and after. Hints name only real flags and params keys.
Cases that fail before torch loads take about half a second each; the others load torch
(and the tiny model), about 5 s each.

Run: .venv/bin/pytest tests/test_bad_inputs.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch

import tiny_models as tm
from routelab.cli import build_parser
from routelab.extract import ExtractParams
from routelab.models import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
WORDS = tm.WORDS  # the tiny model's vocabulary


def _flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return set(sub.choices[command]._option_string_actions)


STAGE_FLAGS = {"extract": {"--model", "--prompts", "--out", "--metrics", "--params"},
               "bench_baseline": {"--model", "--out", "--splits", "--metrics", "--params"}}
SECTIONS = {"extract": ExtractParams, "models.tiny": ModelSpec}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The work folder every case runs in: a tiny model, broken copies of it, bad input files."""
    w = tmp_path_factory.mktemp("work")
    model = tm.save_tiny_olmoe(w / "model")
    for name in ("m_trunc", "m_noweights", "m_notok"):
        shutil.copytree(model, w / name)
    weights = (w / "m_trunc/model.safetensors").read_bytes()
    (w / "m_trunc/model.safetensors").write_bytes(weights[: len(weights) // 2])  # an interrupted copy
    (w / "m_noweights/model.safetensors").unlink()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (w / "m_notok" / f).unlink()
    (w / "models").mkdir()  # so `models/testbd` is a local path with a typo, not a Hub id
    (w / "p.txt").write_text("the doctor is kind .\na teacher\n")
    (w / "long.txt").write_text("the doctor is kind .\n" + " ".join(["the kind nurse"] * 30) + "\n")  # 91 > 64 positions
    (w / "latin1.txt").write_bytes("the caf\xe9 doctor\n".encode("latin-1"))
    (w / "p.csv").write_text("prompt_id,text\n0,the doctor is kind .\n")
    (w / "pdir").mkdir()
    (w / "afile").write_text("a file, not a folder\n")
    (w / "notparquet.parquet").write_text("not a parquet file\n")
    pl.DataFrame({"prompt_id": ["0", "1"], "words": ["a", "b"]}).write_parquet(w / "prompts[v1].parquet")
    pl.DataFrame({"prompt_id": ["0", "1"], "text": ["the doctor", None]}).write_parquet(w / "nulltext.parquet")
    pl.DataFrame({"prompt_id": ["0", "1"], "text": [1, 2]}).write_parquet(w / "inttext.parquet")
    profile = [{"layer": l, "expert": e, "phi": float(e == 0)} for l in range(3) for e in range(8)]
    pl.DataFrame(profile).write_parquet(w / "profile.parquet")
    pl.DataFrame([*profile, *({"layer": 3, "expert": e, "phi": 0.0} for e in range(8))]).write_parquet(
        w / "profile_4_layers.parquet")  # a profile of a model with 4 MoE layers
    (w / "ppl_latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    pl.DataFrame({"a": [1]}).write_parquet(w / "crows.parquet")
    (w / "taken.parquet.parts").mkdir()
    (w / "taken.parquet.parts/notes.txt").write_text("someone else's folder\n")
    params = {
        "models": {"tiny": {"path": "model", "device": "cpu", "dtype": "float32"}},
        "extract": {"chunk_size": 4},
        "bench_baseline": {"benchmarks": ["crows_pairs"], "paths": {"crows_pairs": "crows.parquet"}},
    }
    (w / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    return w


def _env(tmp_path_factory) -> dict[str, str]:
    hf_home = tmp_path_factory.mktemp("hf_home")  # outside the work folder: an empty Hugging Face cache
    # One torch thread: on a shared 2-core machine two spinning threads per tiny forward slow a
    # run tenfold whenever the other core is busy.
    # src/ first: the commands run this checkout's routelab, not whichever one is installed (a git worktree)
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(hf_home),
                PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), PYTHONDONTWRITEBYTECODE="1",
                OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return _env(tmp_path_factory)


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _error_lines(stderr: str) -> list[str]:
    """stderr without transformers' weight-loading bar (a progress display, not a message)."""
    return [line for line in stderr.splitlines() if line.strip() and "Loading weights" not in line]


def _check_hint(line: str, flags: set[str]) -> None:
    """Every flag and params key the line names exists; no Python argument names."""
    for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", line):
        assert flag in flags, f"names {flag}, not a flag here: {line}"
    for section, cls in SECTIONS.items():
        for key in re.findall(rf"\b{re.escape(section)}\.(\w+)", line):
            assert key in {f.name for f in dataclasses.fields(cls)}, f"names {section}.{key}: {line}"
    assert not re.search(r"\b\w+=(True|False|None)\b|\b\w+_path=", line), f"names a Python argument: {line}"


def _assert_one_clean_error(res: subprocess.CompletedProcess, prefix: str, needles: tuple[str, ...],
                            flags: set[str]) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith(prefix), res.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    _check_hint(lines[0], flags)


def _extract(*args: str, prompts: str = "p.txt", out: str = "out.parquet", model: str = "model") -> list[str]:
    return ["routelab.cli", "extract", "--model", model, "--prompts", prompts, "--out", out, *args]


def _bench(benchmark: str, data: str, *args: str) -> list[str]:
    return ["routelab.cli", "bench", "--model", "model", "--benchmark", benchmark, "--data", data, "--out", "m.json",
            *args]


# (id, command line, what the one line must contain). Grouped as in the issue; the first block
# fails before torch loads.
CASES = [
    # The error printer: a path in square brackets is text, not rich markup.
    ("markup-brackets", _extract(prompts="prompts[v1].parquet"), ("prompts[v1].parquet", "lacks column(s) text", "prompt_id, text")),
    # Input files
    ("prompts-not-utf8", _extract(prompts="latin1.txt"), ("latin1.txt", "not UTF-8", "save it as UTF-8")),
    ("prompts-null-text", _extract(prompts="nulltext.parquet"), ("nulltext.parquet", "null text", "prompt_id '1'")),
    ("prompts-int-text", _extract(prompts="inttext.parquet"), ("inttext.parquet", "Int64, not strings")),
    ("prompts-folder", _extract(prompts="pdir"), ("prompts file pdir is a folder", ".txt", ".parquet")),
    ("prompts-csv", _extract(prompts="p.csv"), ("p.csv", "unknown format '.csv'", ".txt", ".parquet")),
    ("profile-not-parquet", _extract("--profile", "notparquet.parquet", "--lam", "1"),
     ("notparquet.parquet", "not a readable Parquet", "`profile` stage")),
    # Output paths: checked before anything loads
    ("out-under-proc", _extract(out="/proc/routelab-out.parquet"), ("--out /proc/routelab-out.parquet", "choose a writable place")),
    ("out-is-folder", _extract(out="pdir"), ("--out pdir is a folder", "path of a file")),
    ("out-parent-is-file", _extract(out="afile/out.parquet"), ("--out afile/out.parquet", "afile is a file")),
    ("items-unwritable", _bench("crows_pairs", "crows.parquet", "--items", "/proc/routelab-items.parquet"),
     ("--items /proc/routelab-items.parquet", "choose a writable place")),
    ("parts-not-ours", _extract(out="taken.parquet"), ("--out taken.parquet", "taken.parquet.parts", "not made by routelab", "move or delete")),
    # Misleading messages
    ("lam-inf", _extract("--profile", "profile.parquet", "--lam", "inf"), ("--lam inf", "finite number")),
    ("lam-nan", _extract("--profile", "profile.parquet", "--lam", "nan"), ("--lam nan", "finite number")),
    ("lam-without-profile", _extract("--lam", "1"), ("--profile and --lam go together",)),
    ("batch-size-zero", _extract("--batch-size", "0"), ("--batch-size", "must be ≥ 1")),
    ("max-logits-bytes-zero", _bench("perplexity", "ppl_latin1.txt", "--max-logits-bytes", "0"),
     ("--max-logits-bytes 0", "whole number of bytes > 0")),
    ("max-logits-bytes-words", _bench("perplexity", "ppl_latin1.txt", "--max-logits-bytes", "256MB"),
     ("--max-logits-bytes 256MB", "whole number of bytes > 0")),
    # Devices (torch loads, no model)
    ("device-tpu", _extract("--device", "tpu"), ("--device tpu", "unknown device", "cpu")),
    pytest.param("device-cuda-without-gpu", _extract("--device", "cuda"), ("--device cuda", "no CUDA GPU", "use cpu"),
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")),
    # Model folders
    ("weights-truncated", _extract(model="m_trunc"), ("--model m_trunc", "cannot load its weights", "copy it again")),
    ("weights-missing", _extract(model="m_noweights"), ("--model m_noweights", "cannot load its weights")),
    ("no-tokenizer", _extract(model="m_notok"), ("--model m_notok", "no tokenizer files", "save the tokenizer")),
    ("relative-path-typo", _extract(model="models/testbd"), ("--model models/testbd", "not found (relative to")),
    ("hub-id-offline", _extract(model="no-such-org/no-such-moe"),
     ("--model no-such-org/no-such-moe", "no such local folder", "Hugging Face cache", "offline")),
    ("prompt-too-long", _extract(prompts="long.txt"), ("64 positions", "prompt_id 1", "--max-length")),
    ("profile-of-another-model", _extract("--profile", "profile_4_layers.parquet", "--lam", "1"),
     ("profile_4_layers.parquet", "layers [0, 1, 2, 3]", "[0, 1, 2]", "recompute")),
    # Benchmark files
    ("perplexity-not-utf8", _bench("perplexity", "ppl_latin1.txt"), ("perplexity: ppl_latin1.txt", "not UTF-8")),
    ("crows-given-parquet", _bench("crows_pairs", "crows.parquet"),
     ("crows_pairs: crows.parquet", "not UTF-8", "[id or unnamed index], sent_more")),  # brackets printed as text
    # Stages: the same checks, the stage's prefix, params keys in the hints
    ("stage-prompts-not-utf8", ["stages.extract", "--model", "tiny", "--prompts", "latin1.txt", "--out", "r.parquet",
                                "--metrics", "m.json"], ("latin1.txt", "not UTF-8")),
    ("stage-out-parent-is-file", ["stages.extract", "--model", "tiny", "--prompts", "p.txt", "--out", "afile/r.parquet",
                                  "--metrics", "m.json"], ("--out afile/r.parquet", "afile is a file")),
    ("stage-crows-given-parquet", ["stages.bench_baseline", "--model", "tiny", "--out", "b", "--splits", "s",
                                   "--metrics", "m.json"], ("crows_pairs: crows.parquet", "not UTF-8")),
]


@pytest.mark.parametrize("args, needles", [
    pytest.param(*c.values[1:], id=c.values[0], marks=c.marks) if isinstance(c, type(pytest.param())) else
    pytest.param(*c[1:], id=c[0]) for c in CASES
])
def test_bad_input_is_one_clear_line_and_leaves_nothing(work, env, args, needles):
    before = _listing(work)
    res = _run(args, work, env)
    if args[0] == "routelab.cli":
        prefix, flags = f"routelab {args[1]}: error: ", _flags(args[1])
    else:
        name = args[0].split(".")[1]
        prefix, flags = f"stage {name}: error: ", STAGE_FLAGS[name]
    _assert_one_clean_error(res, prefix, needles, flags)
    assert _listing(work) == before, "files left behind"


@pytest.mark.parametrize("flag", ["--out", "--items"])
def test_unwritable_folder_is_refused_before_the_model_loads(work, env, flag):
    """A folder in the work folder, typed as a relative path, where no file can be created.

    Not a chmod 555 folder: root ignores permission bits, so as root (CI containers) that
    write succeeds and the case could only be skipped. ``ro`` links to /sys instead, where the
    kernel refuses new files to every user, root included (EACCES; EROFS where /sys is mounted
    read-only): check_writable's probe fails there for everyone, before the model loads.
    """
    ro = work / "ro"
    if not ro.is_symlink():  # the second flag finds it made
        ro.symlink_to("/sys", target_is_directory=True)
    paths = {"--out": "m.json", "--items": "items.parquet", flag: "ro/x"}
    before = _listing(work)
    res = _run(["routelab.cli", "bench", "--model", "model", "--benchmark", "crows_pairs", "--data", "crows.parquet",
                "--out", paths["--out"], "--items", paths["--items"]], work, env)
    _assert_one_clean_error(res, "routelab bench: error: ", (f"{flag} ro/x", "cannot write in ro"), _flags("bench"))
    assert "Loading weights" not in res.stderr, "refused only after the model loaded"
    assert _listing(work) == before


def test_negative_lam_and_truncation_are_said_in_one_line_each(work, env, tmp_path):
    """Not errors: a negative λ raises the sensitive experts (a note says so); --max-length
    truncates, and the summary line says how many prompts."""
    out = tmp_path / "r.parquet"
    res = _run(_extract("--profile", "profile.parquet", "--lam", "-1", "--max-length", "6", prompts="long.txt",
                        out=str(out)), work, env)
    assert res.returncode == 0, res.stderr
    assert "note: --lam -1 is negative: it raises the logits of the most sensitive experts (z + 1·φ)" in res.stderr
    # prompt 0: BOS + 5 words = 6 tokens, kept whole; prompt 1: 91 tokens, cut to 6
    assert re.fullmatch(rf"extract: 2 prompts, 12 tokens × 3 MoE layers → {out} \(\d+\.\d+ MB, \d+\.\d s\); "
                        r"1 of 2 prompts truncated to 6 tokens", res.stdout.strip()), res.stdout
    last = pl.read_parquet(out).group_by("prompt_id").agg(pl.col("pos").max()).sort("prompt_id")
    assert last["pos"].to_list() == [5, 5]


def test_ctrl_c_says_what_was_kept_and_a_rerun_resumes_byte_identically(work, env, tmp_path):
    rng = random.Random(0)
    prompts = tmp_path / "many.txt"
    prompts.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20)))
                                 for _ in range(900)) + "\n")  # 300 chunks of 3: many left after the first
    out = tmp_path / "r.parquet"
    parts = tmp_path / "r.parquet.parts"
    def command(target: Path) -> list[str]:
        return [sys.executable, "-m", *_extract("--chunk-size", "3", "--device", "cpu", prompts=str(prompts),
                                                out=str(target), model=str(work / "model"))]

    argv = command(out)
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(parts.glob("chunk-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # Ctrl-C, once the first chunk is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and not out.exists()
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"routelab extract: interrupted: kept (\d+) of 300 chunks \((\d+) of 900 prompts\) in "
                     rf"{re.escape(str(parts))}; run the same command again to resume from there", last)
    assert m, err
    kept = int(m[1])
    assert 1 <= kept < 300 and int(m[2]) == 3 * kept
    assert len(list(parts.glob("chunk-*.parquet"))) == kept

    res = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"extract: resuming: {kept} of 300 chunks ({3 * kept} of 900 prompts) already done" in res.stderr
    assert not parts.exists()
    # The same command uninterrupted, to another file: the same bytes.
    ref = tmp_path / "ref.parquet"
    res = subprocess.run(command(ref), cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "resuming" not in res.stderr, res.stderr
    assert out.read_bytes() == ref.read_bytes()
