"""Compressed updates through a real simulated federation: the site's compression mod encodes,
the outbound guard lets only the encoded parts out, the coordinator decodes and validates."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import make_texts
from tests.simhelp import run_simulate

pytestmark = pytest.mark.slow  # real federations (deselect with -m "not slow")


@pytest.mark.parametrize("mode", ["int8"])
def test_compressed_federation_runs_and_sends_less(tmp_path, tiny_model_dir, mode):
    texts, labels = make_texts(200, 4)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "pooled.csv", index=False)
    runs = {}
    for m in ("none", mode):
        run_simulate(tmp_path / m, [f"model.base={tiny_model_dir}", f"simulation.data={tmp_path / 'pooled.csv'}",
                                    "simulation.sites=2", "simulation.partition=iid", "federation.rounds=2",
                                    "model.max-length=32", f"compression.mode={m}"], "--quiet",
                     extra_env={"FEDTUNE_AUDIT_DIR": str(tmp_path / f"audit-{m}")})
        runs[m] = [json.loads(x) for x in (tmp_path / m / "metrics.jsonl").read_text().splitlines()]
    for plain, packed in zip(runs["none"], runs[mode]):
        assert packed["rejected"] == {} and packed["failures"] == []
        assert sorted(packed["sites_trained"]) == ["site-0", "site-1"]
        assert packed["upload_bytes"] < 0.5 * plain["upload_bytes"]
    entries = [json.loads(line) for f in (tmp_path / f"audit-{mode}").glob("*.jsonl")
               for line in f.read_text().splitlines()]
    assert entries and all(e["violations"] == [] for e in entries)
