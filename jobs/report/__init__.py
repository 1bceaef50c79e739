"""Reporting: what finished cells saved, read back (`results`), and the paper's tables, headline
and figures from it, MFR's, the fine-tune stage's and the auto-interp scores' sections; the
collector (`collect`). Imports the plan (grid names, fine-tune recipes), no room above it."""
