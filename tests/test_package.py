"""reprocls as an installed package: recipes by name, --version, one-line messages for missing extras, a user's
own model file, and a wheel that works outside the clone."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import reprocls
from reprocls.cli import main
from reprocls.config import ConfigError, load_config, shipped_configs

REPO = Path(__file__).parent.parent


def test_shipped_recipes_resolve_by_name_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert load_config("quickstart").name == "quickstart"
    assert load_config("fashion_mnist/resnet20").model.name == "resnet20"
    assert load_config("configs/fashion_mnist/resnet20.yaml").name == "resnet20"  # the README's paths work too
    with pytest.raises(ConfigError, match="`reprocls recipes` lists the shipped ones"):
        load_config("quickstrat")
    assert (shipped_configs() / "quickstart.yaml").read_text() == (REPO / "configs/quickstart.yaml").read_text()


def test_recipes_and_version(capsys: pytest.CaptureFixture) -> None:
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert "quickstart" in listed and "fashion_mnist/resnet20" in listed and "resnet20_lr_wd" in listed
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"reprocls {reprocls.__version__}"


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    for name in [m for m in sys.modules if m.startswith("reprocls.experiments.tune.") and not m.endswith("strategies")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main(["tune", "quickstart", "--space", "resnet20_lr_wd", "--trials", "1", f"output_dir={tmp_path}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error == ("reprocls: error: reprocls tune needs the optional extra 'tune' (optuna is not installed): "
                     "pip install 'reprocls[tune]'")
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    from reprocls.compress.formats import EXPORT_FORMATS
    from reprocls.extras import MissingExtra

    with pytest.raises(MissingExtra, match=r"ONNX export needs the optional extra 'compress'.*reprocls\[compress\]"):
        EXPORT_FORMATS.get("onnx")(None, None, tmp_path / "m", {})


def test_a_users_own_model_file_is_imported_and_a_rerun_registers_again(tmp_path: Path, fmnist_root: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from reprocls.experiments.run import train_recipe
    from reprocls.models import MODELS

    source = tmp_path / "my_models.py"
    source.write_text('''"""A user's model, registered where reprocls can find it."""
from torch import nn

from reprocls import register_model


@register_model
def tiny_user_net(*, num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """Two layers and a head."""
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
''')
    monkeypatch.chdir(tmp_path)
    overrides = ["model.module=my_models.py", "model.name=tiny_user_net", f"data.root={fmnist_root}",
                 "data.limit_train=256", "data.limit_eval=64", "schedule.epochs=1", "schedule.name=constant",
                 f"output_dir={tmp_path / 'runs'}"]
    try:
        _, results = train_recipe(load_config("quickstart", overrides), progress=False, echo=False)
        assert results["model"] == "tiny_user_net" and results["params"] == 8 * 9 + 8 + 8 * 10 + 10
        from reprocls.recipe import import_user_module

        import_user_module("my_models.py")  # the same recipe again: no "already registered"
        assert "tiny_user_net" in MODELS
        with pytest.raises(ConfigError, match=r"model\.module: cannot import 'no_such_module_here'"):
            import_user_module("no_such_module_here")
    finally:
        MODELS._entries.pop("tiny_user_net", None)


@pytest.mark.slow
def test_the_wheel_works_outside_the_clone(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, timeout=600, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("reprocls-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "reprocls/configs/quickstart.yaml" in names and "reprocls/configs/search/resnet20_lr_wd.yaml" in names
    assert any(name.endswith("licenses/LICENSE") or name.endswith("LICENSE") for name in names)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    here = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "project_dependencies.pth").write_text(f"{here}\n")  # torch & co. from the test venv, not reprocls
    subprocess.run([str(env_dir / "bin" / "pip"), "install", "--no-deps", "-q", str(wheel)], check=True, timeout=600)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import reprocls; print(reprocls.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert str(site) in where.stdout  # the installed wheel, not the clone
    trained = subprocess.run([str(env_dir / "bin" / "reprocls"), "train", "quickstart", "schedule.epochs=1",
                              "data.limit_train=512", "data.limit_eval=128", "schedule.name=constant", "-q"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert list((work / "runs").glob("quickstart-*/results.json"))
