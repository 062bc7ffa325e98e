"""A pretraining run's pages: report.md and report.html with the pretraining loss and the k-NN monitor per epoch,
the views, the k-NN and (after `reprocls probe`) linear-probe accuracies, drawn from the run folder alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from reprocls import run_layout as layout
from reprocls.reports import html
from reprocls.reports.folders import read_history, read_results
from reprocls.reports.plots import epoch_axes, save
from reprocls.reports.run_page import config_section, environment_section
from reprocls.reports.tables import percent

CAPTION = ("Pretraining loss (the method's own: NT-Xent, InfoNCE or BYOL's regression) and the weighted k-NN top-1 of "
           "the validation images against the training images' embeddings, per epoch.")


def plot_pretraining(history: list[dict]) -> Figure:
    """Loss and validation k-NN top-1 per epoch."""
    fig, (ax_loss, ax_knn) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot([r["epoch"] for r in history], [r["train_loss"] for r in history], marker="o")
    monitored = [r for r in history if "val_knn_top1" in r]
    ax_knn.plot([r["epoch"] for r in monitored], [100 * r["val_knn_top1"] for r in monitored], marker="s", color="C1")
    epoch_axes(ax_loss, ax_knn, labels=("pretraining loss", "val k-NN top-1 (%)"))
    fig.tight_layout()
    return fig


def read_probe(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / layout.PROBE_JSON
    return json.loads(path.read_text()) if path.exists() else None


def summary_rows(results: dict[str, Any], probe: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The numbers a reader wants first, as (label, value)."""
    knn = results["knn"]
    rows = [("method", results["method"]), ("backbone", f"{results['model']} ({results['params'] / 1e6:.3f} M params)"),
            ("dataset", results["dataset"]), ("epochs", str(results["epochs"])),
            ("global batch", str(results["global_batch"])),
            (f"val k-NN top-1 (k {knn['k']}, t {knn['temperature']:g})", percent(knn["val_top1"]) if knn["val_top1"] is not None else "—"),
            ("test k-NN top-1", percent(knn["test_top1"]) if knn["test_top1"] is not None else "—"),
            ("train time", f"{results['train_time_s']:.0f} s"), ("train speed", f"{results['images_per_s']:,.0f} img/s")]
    if probe is not None:
        rows += [("linear probe test top-1", percent(probe["test_top1"])),
                 ("probe weight decay (chosen on val)", f"{probe['weight_decay']:g}")]
        if probe.get("random_init") is not None:
            rows.append(("random-init probe test top-1", percent(probe["random_init"]["test_top1"])))
    return rows


def write_pretrain_pages(run_dir: str | Path) -> Path:
    """report.md and report.html of a finished pretraining run; returns the HTML page."""
    run_dir = Path(run_dir)
    results, probe = read_results(run_dir), read_probe(run_dir)
    save(plot_pretraining(read_history(run_dir)), run_dir / layout.CURVES_PNG)
    rows = summary_rows(results, probe)
    probe_note = (f"Linear probe: run `reprocls probe {run_dir}` to train a softmax classifier on the frozen features."
                  if probe is None else f"Linear probe on frozen features, weight decay chosen on validation from "
                  f"{', '.join(f'{float(k):g}: {percent(v)}' for k, v in probe['val_top1'].items())}; test scored once.")
    reference = results.get("reference")
    lines = [f"# {results['run']}", "", *([f"**{reference['text']}** ({reference['source']}, test k-NN)", ""]
                                          if reference else []), "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
             "## Pretraining curves", "", f"![loss and k-NN per epoch]({layout.CURVES_PNG})", "", "## Views", "",
             *[f"- {line}" for line in results["views"]], "", probe_note, ""]
    (run_dir / layout.REPORT_MD).write_text("\n".join(lines))
    sections = [("Pretraining curves", html.figure(run_dir / layout.CURVES_PNG, CAPTION, alt="pretraining curves")),
                ("Views", html.table([["view", "augmentation"], *[[str(i), line] for i, line in
                                                                   enumerate(results["views"], 1)]])),
                ("Linear probe", html.paragraph(probe_note)),
                ("Resolved config", config_section(run_dir)), ("Environment", environment_section(run_dir))]
    subtitle = f"{results['method']} pretraining of {results['model']} on {results['dataset']}, seed {results['seed']}"
    reference = results.get("reference")
    banner = "" if reference is None else html.verdict(f"test k-NN {reference['text']} ({reference['source']})",
                                                       "good" if reference["verdict"] == "reproduced" else "bad")
    document = html.page(results["run"], sections, subtitle=subtitle, intro=banner + html.cards(rows))
    return html.write_page(run_dir / layout.REPORT_HTML, document)
