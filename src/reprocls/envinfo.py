"""A snapshot of the software and hardware a result was measured on, saved beside every run."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torchvision

from reprocls._version import __version__
from reprocls.config import flatten


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo, or platform's best guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(path: Path) -> dict[str, Any]:
    """Commit and dirty flag of the repository holding `path`, if it is in one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def pip_freeze() -> list[str]:
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []


def environment(*, with_packages: bool = True) -> dict[str, Any]:
    """Python, torch, torchvision, CUDA/cuDNN, CPU/GPU, threads, git state and (optionally) pip freeze."""
    cuda = torch.cuda.is_available()
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "reprocls": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cpu": cpu_model(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "git": git_state(Path(__file__).parent),
    }
    if with_packages:
        info["pip_freeze"] = pip_freeze()
    return info


def parse_freeze(lines: Sequence[str]) -> dict[str, str]:
    """pip freeze lines as {normalised name: version or source}, so snapshots from two machines can be compared."""
    packages = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for separator in ("==", " @ "):
            if separator in line:
                name, version = line.split(separator, 1)
                packages[re.sub(r"[-_.]+", "-", name.strip()).lower()] = version.strip()
                break
        else:
            packages[line] = "installed"
    return packages


def differing_values(entries: Sequence[dict[str, Any]]) -> tuple[dict[str, list[Any]], int]:
    """({key: value per entry} for keys whose values differ, count of keys that agree) across flat mappings."""
    missing = "(absent)"
    differences, equal = {}, 0
    for key in sorted(set().union(*entries)):
        values = [entry.get(key, missing) for entry in entries]
        if all(value == values[0] for value in values[1:]):
            equal += 1
        else:
            differences[key] = values
    return differences, equal


def environment_differences(environments: Sequence[dict[str, Any]]) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """(differing snapshot keys such as torch or git.commit, differing package versions) across environment.json
    snapshots; package lists are compared only when every snapshot recorded one."""
    flat = [flatten({k: v for k, v in env.items() if k != "pip_freeze"}) for env in environments]
    differences, _ = differing_values(flat)
    freezes = [env.get("pip_freeze") or [] for env in environments]
    if not all(freezes):
        if any(freezes):
            differences["pip_freeze"] = ["recorded" if f else "not recorded" for f in freezes]
        return differences, {}
    packages, _ = differing_values([parse_freeze(f) for f in freezes])
    return differences, packages
