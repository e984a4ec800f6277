"""Stage `testbed_corpus`: one testbed corpus and its benchmark sets (docs/method.md §10).

Usage: python -m stages.testbed_corpus --name stereotyped --out data/testbed/stereotyped
Writes into --out: corpus.jsonl, vocabulary.json, design.json, tokenizer/,
crows_pairs/crows_pairs_anonymized.csv, truthfulqa/{mc_task.json,qa_primer.txt},
heldout_neutral.txt. The name picks the strength (routelab.testbed.CORPORA: stereotyped ->
testbed.strength, balanced -> testbed.control_strength); everything else is shared.
"""

from routelab import testbed
from routelab.config import load_params, section
from routelab.stage import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, "--name", "--out")
    cfg = section(testbed.TestbedParams, load_params(args.params).get("testbed"), "testbed")
    strength = testbed.strength_for(cfg, args.name)
    corpus = testbed.generate_corpus(cfg.corpus, strength=strength, seed=cfg.seed)
    c = testbed.write_corpus(corpus, args.out)
    print(
        f"testbed_corpus {args.name}: strength {strength}, {c['n_records']} documents "
        f"({c['n_tokens']} tokens, vocab {c['vocab_size']}), {c['n_crows_pairs']} CrowS pairs, "
        f"{c['n_mc']} MC facts, {c['n_heldout_lines']} held-out lines -> {args.out}"
    )


if __name__ == "__main__":
    run_stage(main)
