"""Stage `prompts`: the FARE demographic prompt set for one model → data/prompts/<model>.parquet.

Usage: python -m stages.prompts --model diffuse --out data/prompts/diffuse.parquet \
           --metrics metrics/diffuse/prompts.json
The vocabulary comes from the model's spec (`models.<name>.vocabulary`): `english` for real
models, a testbed corpus directory for the testbeds (their own, in-distribution words).
"""

from routelab.config import load_params, section
from routelab.models import model_spec
from routelab.io import write_parquet
from routelab.prompts import PromptsParams, build_prompts, english_vocabulary, summary
from routelab.stage import run_stage, stage_args, write_metrics
from routelab.testbed import load_vocabulary
from transformers import AutoTokenizer  # after routelab: the compute path is pinned before torch loads


def main() -> str:
    args = stage_args(__doc__, "--model", "--out", "--metrics", outputs=("--out", "--metrics"))
    params = load_params(args.params)
    cfg = section(PromptsParams, params.get("prompts"), "prompts")
    spec = model_spec(params, args.model)
    vocab = english_vocabulary() if spec.vocabulary == "english" else load_vocabulary(spec.vocabulary)
    tokenizer = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code,
                                              revision=spec.revision)
    df = build_prompts(vocab, tokenizer, cfg)
    write_parquet(df, args.out)
    s = summary(df)
    write_metrics(args.metrics, s)
    return (f"prompts[{args.model}]: {s['n_neutral']} neutral + {s['n_demographic']} demographic prompts "
            f"over {s['n_groups']} groups, {s['n_contexts']} contexts "
            f"({s['n_validation']} validation / {s['n_test']} test) → {args.out}")


if __name__ == "__main__":
    run_stage(main, "prompts")
