"""report.html of a run, checked in a real headless Chromium: every section and image renders, the numbers are
results.json's, the mistakes shown are real mistakes ranked by confidence, and `reprocls report` rewrites it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from browser import render
from reprocls.cli import main
from reprocls.config import load_config
from reprocls.data import FileSplit, make_loader
from reprocls.engine.precision import autocast
from reprocls.reports import html
from reprocls.experiments.rewrite import rewrite_report as write_html_report
from reprocls.experiments.run import save_test_mistakes
from reprocls.metrics.mistakes import covers_split
from reprocls.reports.mistakes import MISTAKES_SHOWN, plot_mistakes, raw_image
from reprocls.reports.tables import percent
from reprocls.experiments.evaluate import load_trained_run as load_run
from reprocls.experiments.run import train_recipe
from reprocls.metrics.mistakes import Mistake, PredictionLog

REPO = Path(__file__).parent.parent
SECTIONS = ["Training curves", "Confusion matrix (test)", "Most confident mistakes (test)", "Per-class accuracy (test)",
            "Resolved config", "Environment"]
TINY = ["data.limit_train=512", "data.limit_eval=256", "schedule.epochs=2", "data.batch_size=64", "train.threads=1",
        "model.name=resnet20"]


@pytest.fixture(scope="module")
def tiny_run(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    config = load_config(REPO / "configs/quickstart.yaml",
                         [f"data.root={fmnist_root}", f"output_dir={tmp_path_factory.mktemp('runs')}", *TINY])
    return train_recipe(config, progress=False, echo=False)


@pytest.fixture(scope="module")
def rendered(tiny_run, tmp_path_factory: pytest.TempPathFactory):
    return render(tiny_run[0] / "report.html", tmp_path_factory.mktemp("browser"))


def copy_run(run_dir: Path, to: Path, *leave_out: str) -> Path:
    """A copy of a run folder without its checkpoints and the named files, to change without touching the fixture."""
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("checkpoints", "tensorboard", *leave_out))
    return to


def test_page_renders_every_section_and_image(tiny_run, rendered) -> None:
    run_dir, results = tiny_run
    assert rendered.title == results["run"] == run_dir.name
    assert rendered.headings == SECTIONS
    assert rendered.images == 3 and rendered.images_decoded == rendered.images  # curves, confusion, mistakes grid
    assert all(width > 300 and height > 200 for width, height in rendered.image_sizes)
    assert rendered.scripts == 0


def test_page_shows_the_numbers_of_results_json(tiny_run, rendered) -> None:
    _, results = tiny_run
    text = rendered.text
    assert f"TEST TOP-1\n{percent(results['test']['top1'])}" in text  # cards are upper-cased by the stylesheet
    assert f"VAL TOP-1\n{percent(results['val']['top1'])}" in text
    assert f"TEST LOSS\n{results['test']['loss']:.4f}" in text
    reference = results["reference"]
    assert reference["verdict"] != "reproduced"  # two epochs on 512 images are far from the paper's 94.9 %
    assert f"Not reproduced: test top-1 {percent(results['test']['top1'])} vs 94.90 % reported" in text
    assert f"gap {100 * reference['gap']:+.2f} points" in text


def test_per_class_table_has_one_row_per_class(tiny_run, rendered) -> None:
    _, results = tiny_run
    block = rendered.text.split("Per-class accuracy (test)\n", 1)[1].split("\nResolved config", 1)[0]
    rows = [line.split("\t") for line in block.strip().splitlines()]
    assert rows[0][:2] == ["class", "top-1"]
    assert [row[0] for row in rows[1:]] == results["classes"]
    confusion = np.array(results["test"]["confusion"])
    for row, name, count in zip(rows[1:], results["classes"], confusion.sum(1)):
        assert row[1] == percent(results["test"]["per_class"][name]) and row[3] == f"{count:,}"


def test_page_is_self_contained(tiny_run) -> None:
    source = (tiny_run[0] / "report.html").read_text()
    assert "<script" not in source and "<link" not in source and 'src="http' not in source
    sources = re.findall(r'src="([^"]*)"', source)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_config_and_environment_are_on_the_page(tiny_run, rendered) -> None:
    run_dir, _ = tiny_run
    assert "limit_train: 512" in rendered.text and "name: resnet20" in rendered.text
    environment = json.loads((run_dir / "environment.json").read_text())
    assert f"torch\t{environment['torch']}" in rendered.text
    assert f"pip freeze ({len(environment['pip_freeze'])} packages)" in rendered.text
    assert environment["pip_freeze"][0] not in rendered.text  # folded away until opened


def test_mistakes_are_real_and_ranked_by_confidence(tiny_run) -> None:
    run_dir, results = tiny_run
    listed = json.loads((run_dir / "mistakes.json").read_text())
    loaded = load_run(run_dir)
    session = loaded.session
    loader = make_loader(session.splits.test, session.splits, loaded.config.data, train=False, device=session.device,
                         seed=0, channels_last=session.channels_last)
    session.model.eval()
    with torch.no_grad(), autocast(session.device, session.amp_dtype):  # the precision the run evaluated in
        probabilities = torch.cat([session.model(images).float().softmax(1) for images, _ in loader])
    labels = session.splits.test.labels
    wrong = probabilities.argmax(1) != labels
    confusion = np.array(results["test"]["confusion"])
    assert listed["images"] == len(labels) == confusion.sum()
    assert listed["wrong"] == int(wrong.sum()) == confusion.sum() - np.trace(confusion) > MISTAKES_SHOWN
    rows = listed["mistakes"]
    assert len(rows) == MISTAKES_SHOWN
    confidences = [row["confidence"] for row in rows]
    assert confidences == sorted(confidences, reverse=True)
    for row in rows:
        assert row["true"] == labels[row["index"]] != row["predicted"] == probabilities[row["index"]].argmax()
        assert row["confidence"] == pytest.approx(float(probabilities[row["index"], row["predicted"]]), abs=1e-5)
        assert row["true_confidence"] == pytest.approx(float(probabilities[row["index"], row["true"]]), abs=1e-5)
        assert row["true_name"] == results["classes"][row["true"]]
    unlisted = [i for i in torch.nonzero(wrong).flatten().tolist() if i not in {row["index"] for row in rows}]
    assert max(float(probabilities[i].max()) for i in unlisted) <= confidences[-1] + 1e-6


def test_report_cli_rebuilds_missing_mistakes_and_the_page(tiny_run, tmp_path: Path, capsys) -> None:
    run_dir, _ = tiny_run
    old = copy_run(run_dir, tmp_path / "old-run", "mistakes.*", "report.html")  # a run from before report.html existed
    assert main(["report", str(old)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {old / 'report.html'}"
    rebuilt, original = (json.loads((folder / "mistakes.json").read_text()) for folder in (old, run_dir))
    pairs = [[(row["index"], row["predicted"]) for row in listed["mistakes"]] for listed in (rebuilt, original)]
    assert pairs[0] == pairs[1]
    assert [r["confidence"] for r in rebuilt["mistakes"]] == pytest.approx([r["confidence"] for r in original["mistakes"]])
    page = render(old / "report.html", tmp_path)
    assert page.headings == SECTIONS and page.images_decoded == page.images == 3


def test_report_says_why_when_mistakes_cannot_be_computed(tiny_run, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    old = copy_run(run_dir, tmp_path / "no-weights", "mistakes.*", "report.html", "model.safetensors")
    page = write_html_report(old).read_text()
    assert "could not be computed for this run" in page and "has no model.safetensors" in page
    assert page.count("<h2>") == len(SECTIONS) and not (old / "mistakes.json").exists()


def test_a_run_without_mistakes_shows_no_grid(tiny_run, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    perfect = copy_run(run_dir, tmp_path / "perfect", "mistakes.*", "report.html")
    record = json.loads((run_dir / "mistakes.json").read_text()) | {"wrong": 0, "mistakes": []}
    (perfect / "mistakes.json").write_text(json.dumps(record))
    page = render(write_html_report(perfect), tmp_path)
    assert f"0 of {record['images']:,} test images are misclassified (0.00 %). There is nothing to show." in page.text
    assert page.images == page.images_decoded == 2 and page.headings == SECTIONS


def test_report_dispatches_on_the_folder_kind(tmp_path: Path, monkeypatch, capsys) -> None:
    from reprocls.reports.pages import PAGES

    written = []
    for kind, marker in [("study", "study.json"), ("reproduction", "reproduction.json")]:
        fake = lambda folder, name=kind: written.append((name, folder)) or folder / "report.html"  # noqa: E731
        monkeypatch.setitem(PAGES._entries, kind, fake)
        folder = tmp_path / kind
        folder.mkdir()
        (folder / marker).write_text("{}")
        assert write_html_report(folder) == folder / "report.html"
    assert written == [("study", tmp_path / "study"), ("reproduction", tmp_path / "reproduction")]
    assert main(["report", str(tmp_path)]) == 2
    assert ("pass a run folder (results.json), a `reprocls pretrain` run, an architecture search (nas.json), a study "
            "folder (study.json) or a reproduction folder") in capsys.readouterr().err


def test_distributed_style_partial_log_falls_back_to_a_full_pass(tiny_run, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    loaded = load_run(run_dir)
    session = loaded.session
    labels = session.splits.test.labels
    shard = PredictionLog(labels)  # what rank 0 records when the test split is sharded across two processes
    shard.add(torch.randn(len(labels) // 2, session.splits.num_classes))
    confusion = torch.tensor(json.loads((run_dir / "results.json").read_text())["test"]["confusion"])
    assert not covers_split(shard, confusion)
    folder = copy_run(run_dir, tmp_path / "copy", "mistakes.*")
    payload = save_test_mistakes(folder, shard, confusion, session.model, session, loaded.config)
    recorded = json.loads((run_dir / "mistakes.json").read_text())  # from the run's own (whole, in order) test pass
    assert payload["wrong"] == recorded["wrong"] == int(confusion.sum() - confusion.trace())
    assert [r["index"] for r in payload["mistakes"]] == [r["index"] for r in recorded["mistakes"]]
    assert (folder / "mistakes.png").exists()


def test_prediction_log_ranks_mistakes_and_breaks_ties_by_index() -> None:
    log = PredictionLog(torch.tensor([0, 1, 2, 0, 1]))
    log.add(torch.tensor([[0.0, 3.0, 0.0], [0.0, 5.0, 0.0]]))  # image 0 wrong (p=0.8), image 1 right
    log.add(torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 9.0]]))  # 2 and 3 wrong (p=0.8), 4 very wrong
    assert log.complete and log.wrong().tolist() == [True, False, True, True, True]
    mistakes = log.most_confident_mistakes(3)
    assert [(m.index, m.true, m.predicted) for m in mistakes] == [(4, 1, 2), (0, 0, 1), (2, 2, 0)]
    assert mistakes[0].confidence > mistakes[1].confidence == pytest.approx(mistakes[2].confidence)
    assert mistakes[1].true_confidence == pytest.approx(float(torch.tensor([0.0, 3.0, 0.0]).softmax(0)[0]))
    log.add(torch.zeros(1, 3))  # one row more than the split has
    assert not log.complete


def test_grid_shows_stored_pixels_grey_as_grey_and_colour_as_colour(tmp_path: Path) -> None:
    grey = np.full((28, 28), 200, dtype=np.uint8)
    red = np.zeros((20, 30, 3), dtype=np.uint8)
    red[..., 0] = 255
    mistake = Mistake(0, 0, 1, 0.9, 0.05)
    plot_mistakes([grey, grey], [mistake, mistake], ["a", "b"], tmp_path / "grey.png")
    pixels = np.asarray(Image.open(tmp_path / "grey.png").convert("RGB")).reshape(-1, 3)
    assert (pixels == [200, 200, 200]).all(1).sum() > 2 * 0.8 * 28 * 28  # drawn at least at its own size, not colour-mapped
    plot_mistakes([grey, red], [mistake, mistake], ["a", "b"], tmp_path / "mixed.png")
    pixels = np.asarray(Image.open(tmp_path / "mixed.png").convert("RGB")).reshape(-1, 3)
    assert (pixels == [255, 0, 0]).all(1).sum() > 0.8 * 20 * 30 and (pixels == [200, 200, 200]).all(1).sum() > 0.8 * 28 * 28


def test_bar_cells_are_markup_and_other_cells_are_escaped() -> None:
    table = html.table([["class", "bar"], ["<b>", html.bar(0.5, width=100)], ["nan", html.bar(float("nan"))]])
    assert "<td>&lt;b&gt;</td>" in table and 'style="width:50.0px"' in table and 'style="width:0.0px"' in table


def test_image_folder_run_shows_its_files(fmnist_folder: Path, tmp_path: Path) -> None:
    config = load_config(REPO / "configs/quickstart.yaml", [
        "data.name=image_folder", f"data.root={fmnist_folder}", "data.image_size=28", "data.channels=3", "data.workers=0",
        "data.batch_size=32", "schedule.epochs=1", "optim.lr=0.001", "train.threads=1", "model.name=resnet20",
        f"output_dir={tmp_path}", "name=folder"])
    run_dir, results = train_recipe(config, progress=False, echo=False)
    listed = json.loads((run_dir / "mistakes.json").read_text())
    assert listed["images"] == 18 and listed["wrong"] > 0  # one tiny epoch: far from perfect on purpose
    loaded = load_run(run_dir)
    test_split = loaded.session.splits.test
    assert isinstance(test_split, FileSplit)
    shown = FileSplit([test_split.samples[row["index"]] for row in listed["mistakes"]])
    loader = make_loader(shown, loaded.session.splits, loaded.config.data, train=False, device=torch.device("cpu"), seed=0,
                         channels_last=False)
    loaded.session.model.eval()
    with torch.no_grad():
        predicted = torch.cat([loaded.session.model(images).argmax(1) for images, _ in loader]).tolist()
    assert predicted == [row["predicted"] for row in listed["mistakes"]]
    for row in listed["mistakes"]:
        path = Path(row["path"])
        assert path.parent.name == row["true_name"] != row["predicted_name"] and path.is_relative_to(fmnist_folder)
        stored = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(raw_image(test_split, row["index"], 3), stored)  # the file's own pixels, in colour
    page = render(run_dir / "report.html", tmp_path)
    assert page.headings == SECTIONS and page.images_decoded == page.images == 3
    assert f"TEST TOP-1\n{percent(results['test']['top1'])}" in page.text
