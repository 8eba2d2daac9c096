"""Helpers the tests share, one module per stage. pyproject.toml puts tests/ on the import
path, so a test module says ``from support.agent import AgentProc``; test modules never
import each other."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
ROOT = TESTS.parent  # the repository
CORPUS = TESTS / "records" / "corpus" / "records"  # committed record encodings, valid and bad
