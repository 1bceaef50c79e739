"""The job system around the `e2e` library, in five rooms whose imports go one way (docs/layout.md):
`plan` -> `report` -> `analysis` -> `explain` -> `run`. The entry points sit beside them:
`python jobs/<name>.py key=value ...` (submit, stage, collect, analyze, autointerp) and
`python -m jobs.cell <cell_dir> ...`, all parsed by `jobs.cli`."""

import os

# Jobs print their own progress bars; the libraries' per-file bars only bury them in the logs.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
