"""Auto-interpretability: a feature's activation records (`records`), the prompts and their
parsing (`prompts`), and its explanation and scores (`score`). No HTTP here: a chat is any
callable; `jobs.explain.endpoint` is the OpenAI-compatible one."""

SCORERS = ("detection", "fuzzing", "simulation")
