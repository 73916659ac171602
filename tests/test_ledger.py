"""The ledger's journal under real processes and real files (issue #14 scenario 7): concurrent
runs, SIGKILL mid-round and mid-write, deleted or edited files, explicit resets, the CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from client.ledger import LedgerCorrupt
from client.ledger_admin import open_ledger, reset_ledger
from client.privacy import PrivacyLedger
from common.errors import FedtuneError, PrivacyBudgetExceeded
from tests import simhelp
from tests.test_privacy import _independent_epsilon, journal_entries

ROOT = Path(__file__).resolve().parents[1]
Q, STEPS = 0.05, 20


def _ledger(site_dir, budget=3.0):
    return PrivacyLedger(site_dir, site="site-a", source="/data/a.csv", num_examples=1000,
                         budget=budget)


def _run(site_dir, run, rounds, train_s, out):
    """One DP run at the site as Site._fit_dp does it: plan -> check -> 'train' -> record under
    the lock, each round; what happened goes to `out` (a queue)."""
    led = _ledger(site_dir)
    for r in range(1, rounds + 1):
        try:
            with led.locked():
                led.plan(run, sample_rate=Q, steps_per_round=STEPS, rounds=rounds, run_epsilon=2.0)
                led.check(run, r)
                time.sleep(train_s)  # training, while the other run waits on the lock
                led.record(run, r)
            out.put((run, r, "trained"))
        except PrivacyBudgetExceeded:
            out.put((run, r, "refused"))


def test_two_concurrent_dp_runs_are_both_recorded_and_never_pass_the_budget(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_run, args=(tmp_path, run, 2, 0.3, out)) for run in ("A", "B")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = [out.get(timeout=5) for _ in range(4)]
    entries = journal_entries(tmp_path)  # the whole chain verifies
    rounds = [(e["run"], e["round"]) for e in entries if e["kind"] == "round"]
    trained = [(run, r) for run, r, what in results if what == "trained"]
    assert sorted(rounds) == sorted(trained) and {run for run, _ in rounds} == {"A", "B"}
    assert {e["run"] for e in entries if e["kind"] == "plan"} == {"A", "B"}
    # 2 + 2 > 3: whichever order the lock gave, the later plan or round stayed within the budget
    spent = _ledger(tmp_path).spent()
    assert 2.0 < spent <= 3.0 + 1e-6 and spent == pytest.approx(_independent_epsilon(tmp_path))


def _hold_lock_mid_round(site_dir, ready):
    led = _ledger(site_dir, budget=10.0)
    with led.locked():
        led.plan("R", sample_rate=Q, steps_per_round=STEPS, rounds=2, run_epsilon=2.0)
        led.record("R", 1)
        led.check("R", 2)
        ready.set()
        time.sleep(600)  # "training" round 2 when the site is killed


def test_sigkill_mid_round_and_mid_write_then_restart_equals_an_uninterrupted_run(tmp_path):
    clean = _ledger(tmp_path / "clean", budget=10.0)
    clean.plan("R", sample_rate=Q, steps_per_round=STEPS, rounds=2, run_epsilon=2.0)
    clean.record("R", 1)
    clean.record("R", 2)

    sd = tmp_path / "killed"
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock_mid_round, args=(sd, ready))
    proc.start()
    assert ready.wait(60)
    os.kill(proc.pid, signal.SIGKILL)  # holding the lock, round 2 not recorded
    proc.join(30)
    with open(sd / "ledger" / "journal.jsonl", "ab") as fh:  # and a write cut short by the kill
        fh.write(b'{"kind":"round","run":"R","round":2,"noise_mul')
    again = _ledger(sd, budget=10.0)  # the kernel released the lock; the torn line is dropped
    assert [e["round"] for e in journal_entries_tolerant(sd) if e["kind"] == "round"] == [1]
    again.record("R", 2)  # the restarted site retries the round that never left
    assert again.spent() == pytest.approx(clean.spent(), rel=1e-9)
    assert _independent_epsilon(sd) == pytest.approx(clean.spent(), rel=1e-6)
    with pytest.raises(FedtuneError, match="already trained"):
        again.check("R", 2)


def journal_entries_tolerant(site_dir):
    lines = (site_dir / "ledger" / "journal.jsonl").read_bytes().split(b"\n")
    return [json.loads(line) for line in lines[:-1]]


def _spend(site_dir):
    led = _ledger(site_dir, budget=10.0)
    led.plan("R", sample_rate=Q, steps_per_round=STEPS, rounds=1, run_epsilon=2.0)
    return led.record("R", 1)


def test_edited_or_deleted_journal_is_detected_and_named(tmp_path):
    _spend(tmp_path)
    journal, marker = tmp_path / "ledger" / "journal.jsonl", tmp_path / "lineage.json"
    text = journal.read_text()
    journal.write_text(text.replace('"noise_multiplier":', '"noise_multiplier":1', 1))
    with pytest.raises(LedgerCorrupt, match="journal.jsonl"):
        _ledger(tmp_path)
    journal.write_text("\n".join(text.splitlines()[:-1]) + "\n")  # last entry dropped
    with pytest.raises(LedgerCorrupt, match="removed or rewritten"):
        _ledger(tmp_path)
    journal.unlink()  # deleting the journal does not give a fresh budget
    with pytest.raises(LedgerCorrupt, match="was deleted"):
        _ledger(tmp_path)
    journal.write_text(text)
    marker.unlink()
    with pytest.raises(LedgerCorrupt, match="lineage record"):
        _ledger(tmp_path)


def test_reset_is_explicit_and_recorded(tmp_path):
    eps = _spend(tmp_path)
    with pytest.raises(ValueError, match="reason"):
        reset_ledger(tmp_path, reason=" ")
    reset_ledger(tmp_path, reason="new data-sharing agreement 2027")
    assert _ledger(tmp_path).spent() == 0.0 and eps > 0
    reset = [e for e in journal_entries(tmp_path) if e["kind"] == "reset"]
    assert reset[0]["reason"] == "new data-sharing agreement 2027"
    (tmp_path / "ledger" / "journal.jsonl").write_text("garbage\n")  # a broken ledger: moved aside
    assert "moved aside" in reset_ledger(tmp_path, reason="disk restored from a bad backup")
    assert list((tmp_path / "ledger").glob("journal.jsonl.broken-*"))
    assert journal_entries(tmp_path)[-1]["kind"] == "reset" and _ledger(tmp_path).spent() == 0.0


def test_other_site_or_data_file_cannot_use_the_lineage(tmp_path):
    _spend(tmp_path)
    other = PrivacyLedger(tmp_path, site="site-a", source="/data/b.csv", num_examples=1000, budget=3.0)
    with pytest.raises(FedtuneError, match="belongs to site"):
        other.plan("X", sample_rate=Q, steps_per_round=STEPS, rounds=1, run_epsilon=1.0)


def test_old_json_ledgers_are_imported_not_forgotten(tmp_path):
    old = {"version": 1, "dataset": "ab" * 32, "num_examples": 1000, "delta": 1e-4, "plans": {},
           "entries": [{"run": "old", "round": 1, "noise_multiplier": 1.0, "sample_rate": Q,
                        "steps": STEPS, "accountant": "rdp", "budget": 3.0}]}
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / f"{'ab' * 12}.json").write_text(json.dumps(old))
    eps = _spend(tmp_path)
    first = journal_entries(tmp_path)[0]
    assert first["kind"] == "lineage" and [i["run"] for i in first["imported"]] == ["old"]
    assert eps == pytest.approx(_independent_epsilon(tmp_path))
    fresh = _spend(tmp_path / "fresh")
    assert eps > fresh


def _cli(*args):
    return simhelp.run("ledger", *args, timeout=120, extra_env={"PYTHONPATH": str(ROOT)})


def test_cli_shows_lineage_runs_rounds_and_verification(tmp_path):
    eps = _spend(tmp_path)
    shown = _cli("--site-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "journal verifies" in out and open_ledger(tmp_path).lineage["lineage"] in out
    assert "plan   run R" in out and "round  run R round 1" in out
    assert out.strip().splitlines()[-1] == f"spent epsilon {eps:.4f} of budget 10.0"
    assert _cli("reset", "--site-dir", str(tmp_path)).returncode == 2  # no reason, no reset
    assert _cli("reset", "--site-dir", str(tmp_path), "--reason", "audit").returncode == 0
    assert "RESET  reason: audit" in _cli("--site-dir", str(tmp_path)).stdout
    (tmp_path / "lineage.json").unlink()
    broken = _cli("--site-dir", str(tmp_path))
    assert broken.returncode == 2 and "journal verifies: NO" in broken.stderr


@pytest.mark.parametrize("marker", ['[]', '{"lineage": "x"}', '{"lineage": "x", "site": "site-a", '
                                    '"source": "/data/a.csv", "count": "2", "head": "h"}'])
def test_a_damaged_lineage_record_is_named_not_a_crash(tmp_path, marker):
    """The lineage record is checked field by field: a wrong shape stops the site with the file
    named (LedgerCorrupt, code 'refused'), never a TypeError/KeyError from deep inside."""
    _spend(tmp_path)
    (tmp_path / "lineage.json").write_text(marker)
    with pytest.raises(LedgerCorrupt, match="lineage.json is damaged"):
        _ledger(tmp_path)
    with pytest.raises(LedgerCorrupt, match="aside by hand"):  # reset cannot guess the lineage
        reset_ledger(tmp_path, reason="restored by the operator")


def test_a_journal_line_that_is_not_an_entry_is_named(tmp_path):
    _spend(tmp_path)
    journal = tmp_path / "ledger" / "journal.jsonl"
    journal.write_text(journal.read_text() + "[1, 2]\n")
    with pytest.raises(LedgerCorrupt, match=r"journal.jsonl line \d+ is not a JSON entry"):
        _ledger(tmp_path)


@pytest.mark.parametrize("old", ["not json", "[]", '{"entries": [{"run": "old", "round": "x"}]}'])
def test_a_damaged_old_json_ledger_stops_the_site_instead_of_being_forgotten(tmp_path, old):
    (tmp_path / "ledger").mkdir()
    (tmp_path / "ledger" / f"{'ab' * 12}.json").write_text(old)
    with pytest.raises(LedgerCorrupt, match=f"old privacy ledger .*{'ab' * 12}.json cannot be imported"):
        _spend(tmp_path)
    assert not (tmp_path / "lineage.json").exists()  # nothing was started without it
