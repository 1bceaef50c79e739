"""The field's evaluations of a dictionary, in their own definitions and names, apart from the
paper's (`e2e.metrics`): SAEBench's `core` (`e2e.evals.core`), and its results in SAEBench's
JSON schema (`e2e.evals.saebench`), which SAEBench's own graphing reads (issue 45)."""
