"""Auto-interp: an OpenAI-compatible endpoint with its answer cache, a server started inside the
job, and the step that explains and scores features, then rebuilds the tables and the browser's
data. Imports the plan (its options), reporting and the analysis (the browser's writer)."""
