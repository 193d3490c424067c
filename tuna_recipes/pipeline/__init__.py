"""The pipeline: settings (config), steps and their skipping (run, manifest), evaluation and tables (evaluate, report),
sweeps (sweep)."""
