"""The analysis step: geometry, downstream reconstruction, multi-dimensional features and the
feature browser with its fixed pages (`browser_assets/`). Imports the plan (its cost model) and
reporting (the collector, tables, plots), no room above it."""
