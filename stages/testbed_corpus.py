"""Generate the planted-bias testbed corpus and its benchmark sets (METHOD.md §5).

Usage:
    python -m stages.testbed_corpus --params params.yaml --variant testbed --out data/testbed/testbed

Writes into --out: corpus.jsonl, vocabulary.json, design.json, tokenizer/,
crows_pairs/crows_pairs_anonymized.csv, truthfulqa/{mc_task.json,qa_primer.txt},
heldout_neutral.txt. Variant ``testbed`` uses testbed.strength, ``control`` uses
testbed.control_strength; everything else is shared.
"""

from __future__ import annotations

import argparse

from routelab import testbed
from routelab.config import load_params, section
from routelab.stage import run_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml", help="params file (section: testbed)")
    ap.add_argument("--variant", required=True, help="testbed | control")
    ap.add_argument("--out", required=True, help="output corpus directory")
    args = ap.parse_args()
    cfg = section(testbed.TestbedParams, load_params(args.params).get("testbed"), "testbed")
    strength = testbed.strength_for(cfg, args.variant)
    corpus = testbed.generate_corpus(cfg.corpus, strength=strength, seed=cfg.seed)
    c = testbed.write_corpus(corpus, args.out)
    print(
        f"testbed_corpus {args.variant}: strength {strength}, {c['n_records']} documents "
        f"({c['n_tokens']} tokens, vocab {c['vocab_size']}), {c['n_crows_pairs']} CrowS pairs, "
        f"{c['n_mc']} MC facts, {c['n_heldout_lines']} held-out lines -> {args.out}"
    )


if __name__ == "__main__":
    run_stage(main)
