"""One evaluation of one dictionary as SAEBench writes it (`BaseEvalOutput`, SAEBench 0.6.0
`sae_bench/evals/base_eval_output.py`): `eval_type_id`, `eval_config`, `eval_id`,
`datetime_epoch_millis`, `eval_result_metrics` (category -> name -> value),
`eval_result_details`, `eval_result_unstructured`, `sae_bench_commit_hash`, `sae_lens_id`,
`sae_lens_release_id`, `sae_lens_version`, `sae_cfg_dict`; NaN written as -1, as SAEBench's
`replace_nans_with_negative_one` does, so its graphing reads our files as its own."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from e2e.io import atomic_write_text

# What `sae_bench_commit_hash` holds: these results were not computed by SAEBench's code.
NOT_SAEBENCH = "e2e-sae-hpc (SAEBench's definitions, not its code)"


def eval_output(eval_type_id: str, eval_config: dict[str, Any],
                metrics: dict[str, dict[str, float]], details: list[dict[str, Any]],
                sae_cfg: dict[str, Any], unstructured: Any = None) -> dict[str, Any]:
    """The output record of one evaluation (`eval_type_id`: "core", "absorption_first_letter",
    "sparse_probing_sae_probes", ...) of the dictionary whose SAELens cfg.json is `sae_cfg`."""
    return _no_nan({
        "eval_type_id": eval_type_id, "eval_config": eval_config,
        "eval_id": str(uuid.uuid4()), "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics, "eval_result_details": details,
        "eval_result_unstructured": unstructured, "sae_bench_commit_hash": NOT_SAEBENCH,
        "sae_lens_id": None, "sae_lens_release_id": None, "sae_lens_version": None,
        "sae_cfg_dict": sae_cfg})


def write_output(path: Path, record: dict[str, Any]) -> None:
    """Writes `record` as JSON atomically (a reader never sees half a file)."""
    atomic_write_text(path, json.dumps(record, indent=2))


def _no_nan(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return -1
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj
