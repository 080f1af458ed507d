"""Local data for the offline test tasks (rys_capitals*, rys_obvious).

lm-eval resolves `dataset_kwargs.data_files` against the current directory, so a shipped task
using it would run from one place only. `custom_dataset: !function rys_capitals_data.load` is
resolved next to the YAML instead, and this loader reads the JSONL next to itself: the task works
from any cwd, offline, with no Hugging Face download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).resolve().parent


def _rows(name: str) -> datasets.DatasetDict:
    """All rows of NAME.jsonl, split by their `split` field (default "test")."""
    lines = (HERE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    splits: dict[str, list[dict]] = {}
    for row in (json.loads(line) for line in lines if line.strip()):
        splits.setdefault(row.pop("split", "test"), []).append(row)
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def load(**_: Any) -> datasets.DatasetDict:
    """rys_capitals.jsonl (lm-eval passes metadata, unused)."""
    return _rows("rys_capitals")


def load_obvious(**_: Any) -> datasets.DatasetDict:
    """rys_obvious.jsonl: sequences with one obvious continuation, written for rys (no benchmark
    items)."""
    return _rows("rys_obvious")
