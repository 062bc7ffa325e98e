"""`reprocls nas` on real Fashion-MNIST images: candidates over the MACs budget never train (trainings counted),
the reference trains first, the front becomes ready recipes and a page, the proxies are compared with the parameter
count, and a SIGKILLed search rerun with the same command ends with exactly --trials trained candidates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from reprocls.analysis.proxies import ranks, spearman
from reprocls.config import ConfigError, load_config, load_recipe
from reprocls.experiments.tune import objective
from reprocls.experiments.tune.architecture import load_architecture_space, parse_macs
from reprocls.experiments.tune.nas import doctor_on_reference, nas, pareto_front
from reprocls.recipe import Shape, build_model
from reprocls.reports.pages import page_kind

REPO = Path(__file__).parent.parent
TINY = ["data.batch_size=64", "train.threads=1"]
PROXY = ["data.limit_train=256", "data.limit_eval=128"]  # the search's trainings only
# stage 1's depth and width around ResNet-20 (3 x 16): about half of these 9 points cost more than it does
SPACE = "space: resnet_cifar\nknobs: {depth1: [1, 3, 5], width1: [8, 16, 32], kernel: [3], stem_stride: [1]}\n"


def space_file(folder: Path) -> Path:
    path = folder / "space.yaml"
    path.write_text(SPACE)
    return path


def test_budgets_parse_as_numbers_suffixes_or_a_share_of_the_reference() -> None:
    assert parse_macs("15M", 3e7) == 15e6 and parse_macs("1.5e7", 3e7) == 1.5e7 and parse_macs("50%", 3e7) == 1.5e7
    assert parse_macs("2G", 1) == 2e9
    with pytest.raises(ConfigError, match="--budget-macs fast: give MACs per image"):
        parse_macs("fast", 3e7)


def test_the_front_keeps_exactly_the_points_no_other_beats_on_both() -> None:
    points = [{"id": i, "val_top1": v, "macs": m} for i, (v, m) in
              enumerate([(0.90, 10), (0.92, 20), (0.91, 25), (0.92, 30), (0.95, 40), (0.89, 5)])]
    assert [p["id"] for p in pareto_front(points)] == [5, 0, 1, 4]  # 2 and 3 are beaten by 1
    assert ranks([3, 1, 3, 2]) == [3.5, 1, 3.5, 2]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1) and spearman([1, 2], [1, 2]) is None
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)


def test_a_space_file_names_a_registered_space_and_only_narrows_its_knobs(tmp_path: Path) -> None:
    name, knobs = load_architecture_space(space_file(tmp_path))
    assert name == "resnet_cifar" and knobs["depth1"] == (1, 3, 5) and knobs["width3"] == (32, 48, 64, 96, 128)
    for text, message in (("space: resnet_cifr\n", "Did you mean 'resnet_cifar'"),
                          ("space: resnet_cifar\nknobs: {depth9: [1]}\n", "knobs.depth9 is not a knob"),
                          ("space: resnet_cifar\nknobs: {kernel: [4]}\n", r"knobs.kernel: \[4\] not among")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_architecture_space(tmp_path / "bad.yaml")


def test_the_doctor_checks_the_spaces_network_under_the_proxy_schedule_not_the_recipes_model() -> None:
    searched = load_recipe(REPO / "configs/fashion_mnist/resnet20.yaml", ["data.batch_size=8", "schedule.epochs=4"])
    findings = doctor_on_reference(searched, "mobilenet")
    (tiny,) = [f for f in findings if f.check == "tiny_bn_batch"]
    assert tiny.message.startswith("mobilenet_v3_stages has BatchNorm layers")  # the candidate family, not resnet20
    assert not [f for f in findings if f.check == "short_schedule"]  # a proxy is short on purpose
    assert not [f for f in doctor_on_reference(load_recipe(REPO / "configs/fashion_mnist/resnet20.yaml",
                                                           ["schedule.epochs=4"]), "mobilenet")
                if f.severity != "info"]


@pytest.mark.slow
def test_over_budget_candidates_never_train_and_the_front_becomes_recipes(fmnist_root: Path, tmp_path: Path,
                                                                          monkeypatch, capsys) -> None:
    trained: list = []
    real = objective.train_recipe

    def counting(config, **kwargs):
        trained.append(config)
        return real(config, **kwargs)

    monkeypatch.setattr(objective, "train_recipe", counting)
    recipe = REPO / "configs/fashion_mnist/resnet20.yaml"
    summary = nas(recipe, [f"data.root={fmnist_root}", *TINY], space=space_file(tmp_path), budget_macs="100%",
                  trials=3, proxy_epochs=1, proxy=PROXY, sampler="random", out=tmp_path / "study", progress=False)
    budget = summary["budget_macs"]
    assert budget == summary["reference"]["macs"] == 30_821_248  # 100 % of ResNet-20 at 28 x 28
    candidates = summary["candidates"]
    never = [c for c in candidates if c["skipped"]]
    assert never and all(c["macs"] > budget and c["run_dir"] is None for c in never)  # measured, never trained
    assert len(trained) == summary["trained"] == 3 == sum(c["val_top1"] is not None for c in candidates)
    assert trained[0].model.kwargs == {"depths": [3, 3, 3], "widths": [16, 32, 64], "kernel_size": 3,
                                       "stem_stride": 1} and candidates[0]["reference"]  # the baseline first
    assert all(c["macs"] <= budget for c in candidates if c["val_top1"] is not None and not c["reference"])
    assert all(config.schedule.epochs == 1 and config.data.limit_train == 256 and config.model.name == "cifar_resnet"
               for config in trained)
    assert summary["front"], "no front"
    for member in summary["front"]:
        config = load_config(member["recipe"])  # an ordinary recipe, with the recipe's own schedule
        assert config.schedule.epochs == load_config(recipe).schedule.epochs and config.model.kwargs == member["kwargs"]
        assert config.data.limit_train is None and config.data.batch_size == 64  # no proxy key; the overrides kept
        model = build_model(config, Shape(10, 1, 28))
        assert sum(p.numel() for p in model.parameters()) == member["params"]
    rho = summary["rank_correlation"]
    assert set(rho) == {"params", "naswot", "synflow"}
    assert all(c["proxies"]["params"] == c["params"] for c in candidates if c["proxies"])
    printed = capsys.readouterr().out
    assert "rank correlation with val top-1 (Spearman, trained candidates)" in printed
    assert "not trained:" in printed and "M MACs > budget" in printed
    folder = tmp_path / "study"
    assert page_kind(folder) == "nas" and "Pareto front" in (folder / "report.html").read_text()
    assert json.loads((folder / "nas.json").read_text())["trained"] == 3


@pytest.mark.slow
def test_a_killed_search_rerun_with_the_same_command_trains_exactly_the_asked_trials(fmnist_root: Path,
                                                                                    tmp_path: Path) -> None:
    command = [sys.executable, "-m", "reprocls", "nas", str(REPO / "configs/fashion_mnist/resnet20.yaml"),
               f"data.root={fmnist_root}", *TINY, "--space", str(space_file(tmp_path)), "--budget-macs", "100%",
               "--trials", "2", "--proxy-epochs", "1", *[arg for key in PROXY for arg in ("--proxy", key)],
               "--sampler", "random", "--out", str(tmp_path / "study"), "-q", "--no-doctor"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(command, env={**env, "REPROCLS_FAULT_KILL_AT_STEP": "2"}, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL in the first candidate's second step
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="resnet20-nas", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and json.loads((tmp_path / "study" / "nas.json").read_text())["trained"] == 2
    assert complete[0].user_attrs.get("reference") and complete[0].system_attrs.get("failed_trial") == 0  # retried


def test_a_latency_budget_is_measured_on_this_machine_and_gates_like_macs(tmp_path: Path) -> None:
    from reprocls.experiments.tune.architecture import ArchitecturePlan, measure, over_budget
    from reprocls.models.spaces import space_info

    reference = space_info("resnet_cifar").reference
    plan = ArchitecturePlan(space="resnet_cifar", knobs=space_info("resnet_cifar").knobs, input_size=(1, 28, 28),
                            num_classes=10, budget_macs=1e12, budget_latency_ms=1e-6, latency_batch=2)
    facts = measure(plan, reference)
    assert facts["macs"] == 30_821_248 and facts["latency_ms"] > 0
    assert over_budget(plan, facts) == f"{facts['latency_ms']:.2f} ms > budget 1e-06 ms at batch 2"
    roomy = ArchitecturePlan(**{**plan.__dict__, "budget_latency_ms": 1e6})
    assert over_budget(roomy, facts) is None


def test_the_page_draws_both_fronts_and_the_proxy_table(tmp_path: Path) -> None:
    from reprocls.reports.nas_page import write_nas_page

    rows = [{"trial": i, "knobs": {"depth1": i}, "val_top1": v, "macs": m, "latency_ms": ms, "params": 1000 * (i + 1),
             "reference": i == 0, "recipe": f"front/trial{i:04d}.yaml"}
            for i, (v, m, ms) in enumerate([(0.9, 3e7, 2.0), (0.88, 1e7, 1.0), (0.85, 5e6, 1.5)])]
    summary = {"space": "resnet_cifar", "budget_macs": 1.5e7, "budget_latency_ms": 1.8, "trained": 3,
               "never_trained": 2, "wall_time_s": 12.0, "reference": rows[0], "reference_name": "resnet20",
               "candidates": rows, "front": pareto_front(rows[1:]), "front_latency": pareto_front(rows[1:], "latency_ms"),
               "rank_correlation": {"params": 0.5, "naswot": 0.2, "synflow": None},
               "zoo": [{"model": "resnet20", "macs": 3e7, "params": 1}], "objective": "val top-1"}
    (tmp_path / "nas.json").write_text(json.dumps(summary))
    page = write_nas_page(tmp_path).read_text()
    assert [r["trial"] for r in summary["front_latency"]] == [1]  # trial 2 is slower and less accurate
    assert "Accuracy vs latency" in page and "does not beat it" in page and "n/a" in page
    assert (tmp_path / "pareto.png").stat().st_size > 10_000 and (tmp_path / "pareto_latency.png").exists()
