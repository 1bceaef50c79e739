"""Run by SAELens's own environment (.venv-saelens, with sae-bench 0.6.0 installed without its
dependencies: its numpy < 2 pin is for other evaluations), not by pytest: SAEBench's own
feature absorption, stage by stage, on a GPT-2 folder (`saelens_model.load_gpt2`) and an SAE
folder, each stage's randomness seeded as ours seeds it, everything written under <out dir>.

    python tests/saebench_absorption.py <model dir> <sae dir> <layer> <seed> <min probe F1> \
        <out dir>

<out dir>/vocab.json holds our vocabulary (its order is the split's); SAEBench reads the
residual at `blocks.<layer - 1>.hook_resid_post`, the tensor ours reads at
`blocks.<layer>.hook_resid_pre`.
"""

import json
import random
import statistics
import sys
from pathlib import Path

import torch
from sae_bench.evals.absorption import feature_absorption as fa
from sae_bench.evals.absorption import k_sparse_probing as ksp
from sae_bench.evals.absorption.common import load_probe
from sae_bench.evals.absorption.feature_absorption_calculator import FeatureAbsorptionCalculator
from sae_bench.evals.absorption.main import _aggregate_results_df
from sae_bench.evals.absorption.probing import (
    create_dataset_probe_training,
    gen_and_save_df_acts_probing,
    save_probe_and_data,
    train_linear_probe_for_task,
)
from sae_bench.evals.absorption.prompting import first_letter_formatter
from sae_bench.evals.absorption.vocab import get_alpha_tokens
from sae_lens import SAE
from saelens_model import load_gpt2

TEMPLATE, POS = "{word} has the first letter:", -6
model_dir, sae_dir, layer, seed, min_f1, out = sys.argv[1:]
layer, seed, min_f1, out = int(layer) - 1, int(seed), float(min_f1), Path(out)
hook = f"blocks.{layer}.hook_resid_post"
model = load_gpt2(model_dir)
model.cfg.model_name = "tiny"
probes = out / "probes"
task = probes / "tiny" / f"layer_{layer}"
vocab = json.loads((out / "vocab.json").read_text())
(out / "their_vocab.json").write_text(json.dumps(sorted(get_alpha_tokens(model.tokenizer))))

# the split and the ground-truth probe (`train_and_save_probes`, one stage at a time)
random.seed(seed)
train, test = create_dataset_probe_training(vocab=vocab, formatter=first_letter_formatter(),
                                            num_prompts_per_token=1, base_template=TEMPLATE)
(out / "prompts.json").write_text(json.dumps(
    [[[p.word, p.base, c] for p, c in side] for side in (train, test)]))
train_df, test_df, x_train, x_test = gen_and_save_df_acts_probing(
    model, train, test, task, hook, batch_size=64, position_idx=POS)
torch.manual_seed(seed)
probe, probe_data = train_linear_probe_for_task(train_df, test_df, "cpu", x_train, x_test,
                                                batch_size=64, num_epochs=50, lr=1e-2)
save_probe_and_data(probe, probe_data, task)
torch.save({"weight": probe.weights.detach(), "bias": probe.biases.detach(),
            "x_train": probe_data["X_train"], "x_test": probe_data["X_test"]}, out / "probe.pt")

# the k-sparse probes and their metrics (`run_k_sparse_probing_experiment`); its AUCs, which
# no score uses, are undefined for a letter with no test word: NaN there
auc = ksp.metrics.roc_auc_score
ksp.metrics.roc_auc_score = lambda y, p: auc(y, p) if 0 < y.sum() < len(y) else float("nan")
sae = SAE.load_from_disk(sae_dir)
torch.manual_seed(seed)
raw, meta = ksp.load_and_run_eval_probe_and_sae_k_sparse_raw_scores(
    sae, model, layer, "tiny", 10, TEMPLATE, POS, probes, "cpu", verbose=False)
metrics = ksp.build_metrics_df(raw, meta, max_k_value=10)
ksp.add_feature_splits_to_metrics_df(metrics, max_k_value=10, f1_jump_threshold=0.03)
raw_dir = out / "raw" / "tiny"
raw_dir.mkdir(parents=True)
raw.to_parquet(raw_dir / ksp.get_sparse_probing_raw_results_filename("tiny", layer))

# absorption (`run_feature_absortion_experiment`, then `run_eval`'s aggregation)
random.seed(seed)
calculator = FeatureAbsorptionCalculator(
    model=model, icl_word_list=vocab, max_icl_examples=10, base_template=TEMPLATE,
    answer_formatter=first_letter_formatter(), word_token_pos=POS,
    full_absorption_probe_cos_sim_threshold=fa.FULL_ABSORPTION_PROBE_COS_THRESHOLD,
    absorption_fraction_probe_cos_sim_threshold=fa.ABSORPTION_FRACTION_PROBE_COS_THRESHOLD,
    probe_projection_proportion_threshold=fa.ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD,
    absorption_fraction_max_absorbing_latents=fa.ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS,
    batch_size=10)
negs = fa.get_stats_and_likely_false_negative_tokens(metrics, "tiny", layer, raw_dir)
words = fa.calculate_projection_and_cos_sims(
    calculator, sae, load_probe("tiny", layer, probes, torch.float32, "cpu"), layer, negs)
agg = _aggregate_results_df(words)
by_letter = {r["letter"]: r for r in metrics.to_dict("records")}
details = [{"first_letter": r["letter"],
            "mean_absorption_fraction": float(r["mean_absorption_fraction"]),
            "full_absorption_rate": float(r["full_absorption_rate"]),
            "num_full_absorption": int(r["num_full_absorption"]),
            "num_probe_true_positives": int(r["num_probe_true_positives"]),
            "num_split_features": int(r["num_split_feats"])}
           for r in agg.to_dict("records") if by_letter[r["letter"]]["f1_probe"] > min_f1]
col = lambda k: [d[k] for d in details]  # noqa: E731
(out / "result.json").write_text(json.dumps({
    "probe_f1": {r["letter"]: float(r["f1_probe"]) for r in by_letter.values()},
    "k_sparse_f1": {k: {r["letter"]: float(r[f"f1_sparse_sae_{k}"]) for r in by_letter.values()}
                    for k in range(1, 11)},
    "feats": {k: {r["letter"]: r[f"sparse_sae_k_{k}_feats"].tolist()
                  for r in by_letter.values()} for k in range(1, 11)},
    "main_latents": {r["letter"]: list(map(int, r["split_feats"])) for r in by_letter.values()},
    "abs_words": words["token"].tolist(),
    "details": details,
    "mean": {"mean_absorption_fraction_score": statistics.mean(col("mean_absorption_fraction")),
             "mean_full_absorption_score": statistics.mean(col("full_absorption_rate")),
             "mean_num_split_features": statistics.mean(col("num_split_features"))}}))
