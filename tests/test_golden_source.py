"""Generated source is deterministic and reviewed as a diff: it must equal the golden
files in tests/golden/. After an intended change of the code generator, regenerate them
with RECLANG_UPDATE_GOLDEN=1 and review the diff."""

import os
from pathlib import Path

import pytest

import reclang

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
CASES = ["gla", "lstm", "mamba_s6", "rwkv6", "lru"]


@pytest.mark.parametrize("name", CASES)
def test_generated_source_matches_golden(name):
    source = reclang.load(ROOT / "specs" / f"{name}.rec").source("sequential")
    path = GOLDEN / f"{name}.sequential.py.txt"
    if os.environ.get("RECLANG_UPDATE_GOLDEN"):
        path.write_text(source)
    assert path.exists(), f"missing {path}: run with RECLANG_UPDATE_GOLDEN=1"
    assert source == path.read_text()
