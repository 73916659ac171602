"""Membership-inference audit: the pure AUC function and `fedtune audit` on a simulated run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from client.audit import loss_threshold_auc
from client.trainer import encode
from common.config import ModelConfig
from common.errors import DataError
from common.model import build_model
from fedtune.cli import main
from tests.conftest import make_texts
from tests.test_export_predict import copy_run, shared_run


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    built = build_model(ModelConfig(base=str(tiny_model_dir), max_length=32), num_labels=4)
    texts, labels = make_texts(80, 4)
    ids = np.array([int(s.split("_")[1]) for s in labels])
    data = encode(built.tokenizer, texts, ids, max_length=32)
    return built.model, data


def _part(data, idx):
    from client.trainer import Encoded

    return Encoded(ids=[data.ids[i] for i in idx], labels=data.labels[idx])


def test_auc_in_unit_interval_and_deterministic(tiny):
    model, data = tiny
    train, test = _part(data, range(0, 50)), _part(data, range(50, 80))
    a = loss_threshold_auc(model, train, test, num_labels=4)
    assert 0.0 <= a <= 1.0
    assert loss_threshold_auc(model, train, test, num_labels=4) == a
    b = loss_threshold_auc(model, train, test, num_labels=4, max_examples=10, seed=1)
    assert 0.0 <= b <= 1.0


def test_identical_splits_give_chance(tiny):
    model, data = tiny
    assert loss_threshold_auc(model, data, data, num_labels=4) == pytest.approx(0.5)


def test_empty_split_is_a_clear_error(tiny):
    model, data = tiny
    with pytest.raises(DataError, match="test 0"):
        loss_threshold_auc(model, data, _part(data, []), num_labels=4)


@pytest.mark.slow  # a real simulated federation (shared_run)
def test_audit_command_writes_auc_per_site(tmp_path_factory, tiny_model_dir, capsys):
    run = copy_run(shared_run(tmp_path_factory, tiny_model_dir), tmp_path_factory.mktemp("audit") / "run")
    assert main(["audit", str(run)]) == 0
    result = json.loads((run / "audit.json").read_text())
    assert set(result) == {"site-0", "site-1"}
    assert all(0.0 <= v <= 1.0 for v in result.values())
    assert "loss-threshold AUC" in capsys.readouterr().out


@pytest.mark.slow  # a real simulated federation (shared_run)
def test_audit_needs_site_folders(tmp_path_factory, tiny_model_dir, capsys):
    run = copy_run(shared_run(tmp_path_factory, tiny_model_dir), tmp_path_factory.mktemp("nosites") / "run")
    import re
    import shutil

    shutil.rmtree(Path(run) / "sites")
    toml = (run / "config.toml").read_text()  # a configured simulation.sites-dir must not exist either
    (run / "config.toml").write_text(re.sub(r'(?m)^sites-dir = ".*"$', f'sites-dir = "{run / "gone"}"', toml))
    assert main(["audit", str(run)]) == 2
    assert "simulation run directories" in capsys.readouterr().err
