"""The plan: what a grid runs, checked before anything is written or submitted. The named grids
and their cells, packs and fine-tune children, the options of `submit.py`, sources and stages,
the container command, the cost and memory models, the plan as printed. Imports `jobs.cli` and
no other room."""
