"""`reprocls report FOLDER`: bring what a page reads up to date, then write the page. A study's study.json is
refreshed from its database; a run from before mistakes.json existed gets it computed from its weights and data.
The pages themselves (reports/) only read."""

from __future__ import annotations

import json
from pathlib import Path

from reprocls import run_layout as layout
from reprocls.config import ConfigError
from reprocls.experiments.evaluate import load_trained_run, predict_split
from reprocls.reports.mistakes import write_mistakes
from reprocls.reports.pages import page_kind, write_page
from reprocls.reports.run_page import write_run_pages


def find_missing_mistakes(run_dir: Path) -> str:
    """Compute mistakes.json and its grid when a run lacks them; '' when they are there now, else why not."""
    listed = run_dir / layout.MISTAKES_JSON
    if listed.exists() and ((run_dir / layout.MISTAKES_PNG).exists() or not json.loads(listed.read_text())["mistakes"]):
        return ""
    try:
        trained = load_trained_run(run_dir)
        session = trained.session
        write_mistakes(run_dir, predict_split(session.model, session.splits.test, session, trained.config.data),
                       session.splits)
        return ""
    except (ConfigError, FileNotFoundError, ValueError, OSError, RuntimeError) as error:
        return str(error)


def rewrite_report(target: str | Path, *, study: str | None = None) -> Path:
    """(Re)write the report of a run, study or reproduction folder; `study` names the study to report where a
    study.db holds several."""
    folder = Path(target)
    if (folder / layout.STUDY_DB).exists():
        from reprocls.experiments.tune.summary import refresh_summary  # Optuna only for study folders

        refresh_summary(folder, study)
    if page_kind(folder) == "run":
        return write_run_pages(folder, mistakes_missing=find_missing_mistakes(folder))
    return write_page(folder)
