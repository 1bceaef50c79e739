"""Glue around the `e2e` library: grids, the plan, submission, the per-cell job, the collector
and the analysis step. Every entry point is `python jobs/<name>.py key=value ...` (`jobs.cli`)."""

import os

# Jobs print their own progress bars; the libraries' per-file bars only bury them in the logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
