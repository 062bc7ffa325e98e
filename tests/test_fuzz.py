"""A seeded fuzz of the recipe front door: a few hundred generated bad recipes and overrides (wrong types, values out
of range, non-finite numbers, paths, YAML shapes), each run through `reprocls train` in-process. Every one must end
in exit code 2 with one line that names the key, quickly, in bounded memory, and leave no run folder."""

from __future__ import annotations

import dataclasses
import random
import resource
import time
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from reprocls.cli import main
from reprocls.config import RunConfig
from reprocls.config.loading import _resolve_hints, strip_optional
from reprocls.experiments import run as run_module

REPO = Path(__file__).parent.parent
QUICK = str(REPO / "configs/quickstart.yaml")
CASES = 300
SEED = 20261202
FREE_FORM = {"model.kwargs", "reference"}  # builder arguments and the optional reference block: shapes only
BOMB = "{a: &a [x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a], c: [*b, *b, *b, *b, *b, *b, *b, *b]}"


def schema_keys(cls: type = RunConfig, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Every leaf key of the recipe with its type and field."""
    keys = {}
    hints = _resolve_hints(cls)
    for field in dataclasses.fields(cls):
        hint, _ = strip_optional(hints[field.name])
        if dataclasses.is_dataclass(hint):
            keys.update(schema_keys(hint, f"{prefix}{field.name}."))
        else:
            keys[f"{prefix}{field.name}"] = (hint, field)
    return keys


def bad_values(key: str, hint: Any, field: dataclasses.Field) -> list[str]:
    """YAML values this key must refuse, as override text."""
    wrong_shape = ["{a: 1}", "[[1, 2], 3]"]
    origin = typing.get_origin(hint)
    if hint is bool:
        return ["maybe", "3", "[true]", *wrong_shape]
    if hint is int:
        values = ["abc", "1.5", ".inf", "-.inf", ".nan", "1e400", "99999999999999999999999", "[1]", *wrong_shape]
        check = field.metadata.get("check")
        values += [str(v) for v in (-1, 0, 10**9, -10**9) if check is not None and not check(v)]
        return values
    if hint is float:
        values = ["abc", ".inf", "-.inf", ".nan", "1e400", "-1e400", "[0.1]", "true", *wrong_shape]
        check = field.metadata.get("check")
        values += [str(v) for v in (-1.0, -1e-9, 1e9, -1e9) if check is not None and not check(v)]
        return values
    if hint is str:
        values = ["[a, b]", "12", "true", *wrong_shape]
        if key == "name":
            values += ["../../x", "/abs/path", "a/b", "''", ".hidden", "'x y'", "'" + "n" * 300 + "'"]
        if key == "output_dir":
            values = ["[a]", "{a: 1}", "12", "/etc/passwd"]
        if field.metadata.get("members"):
            values += ["definitely-not-registered"]
        return values
    if origin is Literal:
        return ["definitely-not-a-choice", "[auto]", "{a: 1}", "12.5"]
    if origin is list:
        (item,) = typing.get_args(hint)
        values = ["abc", "{a: 1}", "[abc]", "[[1]]"]
        if item is float:
            values += ["[.inf]", "[.nan]", "[-.inf, 1]"]
        check = field.metadata.get("check")
        values += [text for text, value in (("[]", []), ("[-1, -1, -1]", [-1, -1, -1]), ("[1, 2, 3, 4, 5]", [1, 2, 3, 4, 5]))
                   if check is not None and not check(value)]
        return values
    if origin is dict:
        return ["[1, 2]", "abc", "12", BOMB, "{a: 1, a: 2}"]
    return ["[[[]]]", "{a: {b: {c: 1}}}", ".nan"]


def syntax_cases() -> list[tuple[list[str], str]]:
    """Overrides whose key or YAML is broken, or that name no key at all."""
    return [(["optim.lrr=0.1"], "optim.lrr"), (["nosuch=1"], "nosuch"), (["optim.=1"], "optim."), (["=3"], "=3"),
            (["optim.lr"], "optim.lr"), (["optim.lr=[1, 2"], "optim.lr"), (["model.kwargs={a: "], "model.kwargs"),
            (["data.augment.nope=1"], "data.augment.nope"), (["optim.lr.x=1"], "optim.lr"), (["data=3"], "data"),
            (["model=[1]"], "model"), (["optim.lr=!!python/object/apply:os.system [touch /tmp/x]"], "optim.lr"),
            ([f"model.kwargs={BOMB}"], "model.kwargs"), (["model.kwargs={a: 1, a: 2}"], "model.kwargs")]


def all_cases() -> list[tuple[list[str], str]]:
    cases = syntax_cases()
    for key, (hint, field) in schema_keys().items():
        if key in FREE_FORM and hint is not dict:
            continue
        cases += [([f"{key}={value}"], key) for value in bad_values(key, hint, field)]
    return cases


RECIPES = {  # recipe files: (text, what the line must name)
    "list.yaml": ("- model\n- data\n", "list.yaml"), "scalar.yaml": ("42\n", "scalar.yaml"),
    "duplicate.yaml": ("optim:\n  lr: 0.1\n  lr: 0.2\n", "'lr' appears twice"),
    "bomb.yaml": ("model:\n  kwargs: " + BOMB + "\n", "alias"), "python.yaml": ("optim: !!python/object/apply:os.getcwd []\n", "python.yaml"),
    "tabs.yaml": ("optim:\n\tlr: 0.1\n", "tabs.yaml"), "unknown.yaml": ("optimizer:\n  lr: 0.1\n", "optimizer"),
    "nested.yaml": ("optim: [1, 2]\n", "optim"), "inf.yaml": ("optim:\n  lr: .inf\n", "optim.lr"),
}


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching the training loop means a bad value was accepted: fail at once instead of training."""
    def accepted(*args, **kwargs):
        raise AssertionError("a bad recipe reached training")

    monkeypatch.setattr(run_module, "fit", accepted)


def test_fuzzed_overrides_are_each_one_line_naming_the_key(capsys, tmp_path: Path, no_training) -> None:
    pool = all_cases()
    assert len(pool) >= CASES
    chosen = random.Random(SEED).sample(pool, CASES)
    out = tmp_path / "runs"
    memory_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slowest = 0.0
    for overrides, key in chosen:
        start = time.perf_counter()
        try:
            code = main(["train", QUICK, "-q", "--no-doctor", f"output_dir={out}", *overrides])
        except SystemExit as stop:  # refused while parsing the command line
            code = stop.code
        slowest = max(slowest, time.perf_counter() - start)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (overrides, err[-1500:])
        assert len(lines) == 1 and lines[0].startswith("reprocls: error: "), (overrides, err[-1500:])
        assert key.rstrip(".") in lines[0] or key in lines[0], (overrides, lines[0])
        assert len(lines[0]) < 1200, (overrides, len(lines[0]))
        assert not out.exists() or not any(out.iterdir()), (overrides, list(out.iterdir()))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - memory_before) / 1024
    assert slowest < 5.0, slowest
    assert grown_mb < 500, grown_mb


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_fuzzed_recipe_files_are_each_one_line(capsys, tmp_path: Path, no_training, name: str) -> None:
    text, named = RECIPES[name]
    recipe = tmp_path / name
    recipe.write_text(text)
    out = tmp_path / "runs"
    start = time.perf_counter()
    code = main(["train", str(recipe), "-q", "--no-doctor", f"output_dir={out}"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("reprocls: error: "), err[-1500:]
    assert named in lines[0], lines[0]
    assert time.perf_counter() - start < 5 and not out.exists()
