"""Placeholder: the reproduction doctor is being written (issue 7)."""

from __future__ import annotations


def diagnose(config, *, explicit=None, world_size: int = 1) -> list:
    return []


def format_findings(findings) -> str:
    return ""
