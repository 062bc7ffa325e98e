"""`reprocls <command>`: a thin command-line layer over the library (commands.py, parser.py)."""

from __future__ import annotations

import argparse
import sys
import warnings

from reprocls.cli.parser import build_parser
from reprocls.config import ConfigError
from reprocls.engine.checkpoint import CheckpointError
from reprocls.extras import MissingExtra, install_hint
from reprocls.run_layout import FolderBusy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Overrides may also follow options (`train R.yaml -q optim.lr=0.1`), which argparse alone would refuse."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    loose = [item for item in stray if not item.startswith("-") and hasattr(args, "overrides")]
    if loose:  # `optim.lr` without a value: say what an override looks like, in one line
        print(f"reprocls: error: {loose[0][:100]!r} is neither an option nor a key=value override; write it as "
              f"{loose[0][:100].split('=')[0]}=<value>, e.g. optim.lr=0.05", file=sys.stderr)
        raise SystemExit(2)
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # epoch lines reach a log file (nohup, SLURM) as they happen
    warnings.simplefilter("default", UserWarning)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, MissingExtra) as error:
        print(f"reprocls: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        hint = install_hint(error.name or "", f"reprocls {args.command}")
        if hint is None:
            raise
        print(f"reprocls: error: {hint}", file=sys.stderr)
        return 2
    except (CheckpointError, FloatingPointError, FolderBusy) as error:
        print(f"reprocls: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a disk, permission or device problem outside the run's own writes
        print(f"reprocls: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reprocls: interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main", "parse_args"]
