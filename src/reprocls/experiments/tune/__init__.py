"""`reprocls tune`, one module per concern: space.py (search spaces checked against the recipe schema),
strategies.py (samplers and pruners by name), plan.py (what every worker works from), storage.py (the study
database, dead trials and their retries), objective.py (one trial as a run folder), summary.py (study.json,
best.yaml, the printed summary) and search.py (the command). Kept free of imports, so listing the strategies does
not load Optuna."""
