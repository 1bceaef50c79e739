"""Glue around the `e2e` library: grids, submission, the per-cell job and the collector."""

import os

# Jobs print their own progress bars; the libraries' per-file bars only bury them in the logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
