"""prepare_site end to end: splits, manifest reuse and change detection, report, real data."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from common.data import DataConfig, format_report, prepare_site, shareable_report
from common.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # shared/ sits beside the clone
BANKING = SHARED / "banking77" / "train.csv"
MEDICAL = SHARED / "medical_abstracts" / "train.csv"
LABELS = ["card", "loan", "fraud"]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def make_csv(tmp_path, n=90, name="site.csv", extra=""):
    lines = ["text,label,patient"]
    for i in range(n):
        lab = LABELS[i % 3]
        lines.append(f"Customer question number {i} about {lab} topic {i * 7},{lab},p{i // 3}")
    lines.append("Email me at alice.smith@example.com about the card,card,p999")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def test_basic_prepare_shapes_and_types(tmp_path):
    path = make_csv(tmp_path)
    site = prepare_site(path, cfg=DataConfig(), seed=0, label_names=LABELS)
    assert list(site.train.columns) == ["text", "label"]
    sizes = [len(site.train), len(site.val), len(site.test)]
    assert sum(sizes) == 91 and sizes[0] > sizes[1] > sizes[2] > 0
    assert str(site.train["label"].dtype) == "int64" and set(site.train["label"]) <= {0, 1, 2}
    assert "[EMAIL]" in " ".join(pd.concat([site.train, site.val, site.test])["text"])
    assert site.report["pii"]["EMAIL"] == 1 and len(site.fingerprint) == 64
    assert site.report["fingerprint"] == site.fingerprint
    strs = prepare_site(path, cfg=DataConfig(), seed=0)
    assert strs.train["label"].map(type).eq(str).all()


def test_group_aware_split(tmp_path):
    path = make_csv(tmp_path)
    site = prepare_site(path, cfg=DataConfig(group_column="patient", scrub_pii=False), seed=1)
    raw = pd.read_csv(path, dtype=str)
    owner = dict(zip(raw["text"], raw["patient"]))
    groups = {name: {owner[t] for t in getattr(site, name)["text"]} for name in ("train", "val", "test")}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert site.report["steps"]["split"]["groups_train"] == len(groups["train"])


def test_determinism_same_seed_same_split_different_seed_differs(tmp_path):
    path = make_csv(tmp_path)
    a = prepare_site(path, cfg=DataConfig(), seed=4)
    b = prepare_site(path, cfg=DataConfig(), seed=4)
    c = prepare_site(path, cfg=DataConfig(), seed=5)
    assert a.fingerprint == b.fingerprint and a.train.equals(b.train)
    assert a.fingerprint != c.fingerprint


def test_manifest_reused_and_stable(tmp_path):
    path, site_dir = make_csv(tmp_path), tmp_path / "site"
    first = prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)
    manifest = json.loads((site_dir / "split_manifest.json").read_text())
    assert manifest["input_sha256"] == sha(path) and manifest["seed"] == 0 and manifest["config_hash"]
    assert sum(len(v) for v in manifest["records"].values()) == 91
    second = prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)
    assert second.report["steps"]["split"]["source"] == "manifest"
    for name in ("train", "val", "test"):
        assert getattr(first, name).equals(getattr(second, name))
    assert first.fingerprint == second.fingerprint
    assert json.loads((site_dir / "report.json").read_text())["fingerprint"] == first.fingerprint
    assert not list(site_dir.glob("*.tmp"))


def test_manifest_survives_reordering_rows(tmp_path):
    path, site_dir = make_csv(tmp_path), tmp_path / "site"
    first = prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    again = prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)
    assert again.report["steps"]["split"]["source"] == "manifest (file re-saved, same rows)"
    for name in ("train", "val", "test"):
        assert set(getattr(first, name)["text"]) == set(getattr(again, name)["text"])


def test_changed_input_is_an_error_not_a_silent_resplit(tmp_path):
    path, site_dir = make_csv(tmp_path), tmp_path / "site"
    prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)
    before = (site_dir / "split_manifest.json").read_bytes()
    with path.open("a") as fh:
        fh.write("A brand new question,loan,p1000\n")
    with pytest.raises(DataError) as err:
        prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)
    msg = str(err.value)
    assert "data changed since the manifest was written" in msg and "1 row(s) added, 0 row(s) removed" in msg
    assert "deleting the manifest" in msg and "new site dir" in msg and "resplit" in msg
    assert (site_dir / "split_manifest.json").read_bytes() == before
    site = prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir, resplit=True)
    assert site.report["steps"]["split"]["source"] == "new"
    assert (site_dir / "split_manifest.json").read_bytes() != before


def test_changed_seed_or_split_settings_is_an_error(tmp_path):
    path, site_dir = make_csv(tmp_path), tmp_path / "site"
    prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)
    with pytest.raises(DataError, match="seed changed"):
        prepare_site(path, cfg=DataConfig(), seed=1, site_dir=site_dir)
    with pytest.raises(DataError, match="conflict_policy: 'drop' -> 'first'"):
        prepare_site(path, cfg=DataConfig(conflict_policy="first"), seed=0, site_dir=site_dir)
    # settings that do not change membership keep the manifest usable
    site = prepare_site(path, cfg=DataConfig(scrub_pii=False), seed=0, site_dir=site_dir)
    assert site.report["steps"]["split"]["source"] == "manifest"


def test_added_column_is_a_change(tmp_path):
    path, site_dir = make_csv(tmp_path), tmp_path / "site"
    prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",note"] + [line + ",x" for line in lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"columns changed: added \['note'\]"):
        prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)


def test_corrupt_manifest(tmp_path):
    path, site_dir = make_csv(tmp_path), tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "split_manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="split manifest is unreadable.*delete it"):
        prepare_site(path, cfg=DataConfig(), seed=0, site_dir=site_dir)


def test_raw_file_untouched_and_report_has_no_text(tmp_path):
    path = make_csv(tmp_path)
    before = sha(path)
    site = prepare_site(path, cfg=DataConfig(augment="swap:0.2"), seed=0, site_dir=tmp_path / "s")
    assert sha(path) == before
    blob = json.dumps(site.report) + format_report(site.report)
    for needle in ("Customer question", "alice", "example.com", "topic"):
        assert needle not in blob
    json.dumps(shareable_report(site.report, min_count=5))


def test_augment_only_touches_train(tmp_path):
    path = make_csv(tmp_path)
    plain = prepare_site(path, cfg=DataConfig(), seed=0)
    aug = prepare_site(path, cfg=DataConfig(augment="swap:0.2,delete:0.1", augment_copies=2), seed=0)
    assert aug.val.equals(plain.val) and aug.test.equals(plain.test)
    assert len(aug.train) > len(plain.train) and aug.train.iloc[: len(plain.train)].equals(plain.train)
    assert aug.report["steps"]["augment"]["rows_added"] == len(aug.train) - len(plain.train)
    assert aug.fingerprint != plain.fingerprint


def test_shareable_report_suppresses_small_counts(tmp_path):
    site = prepare_site(make_csv(tmp_path), cfg=DataConfig(), seed=0)
    shared = shareable_report(site.report, min_count=5)
    assert shared["pii"]["EMAIL"] == "<5" and shared["pii"]["PHONE"] == "<5"
    assert shared["steps"]["load"]["rows_in"] == 91 and "seed" not in shared
    assert "max_chars" not in shared["lengths"]["train"] and shared["suppressed_below"] == 5
    assert site.report["pii"]["EMAIL"] == 1  # the original is untouched
    assert "<5" in format_report(shared)


def test_regression_task(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("text,y\n" + "".join(f"row number {i},{i / 10}\n" for i in range(40)))
    site = prepare_site(path, cfg=DataConfig(label_column="y"), seed=0, task="regression")
    assert str(site.train["label"].dtype) == "float64" and len(site.train) == 28
    assert site.report["labels"]["train"]["rows"] == 28


@pytest.mark.skipif(not BANKING.exists(), reason="shared banking77 data not present")
def test_real_banking77_four_exact_duplicate_pairs():
    before = sha(BANKING)
    site = prepare_site(BANKING, cfg=DataConfig(), seed=0)
    clean = site.report["steps"]["clean"]
    assert site.report["input"]["rows"] == 10003
    assert clean["exact_duplicates_removed"] == 4
    assert clean["conflict_groups"] == 1  # "Has my top up gone through?" vs "...top-up..."
    assert len(site.report["labels"]["train"]) == 77 and sha(BANKING) == before


@pytest.mark.skipif(not MEDICAL.exists(), reason="shared medical_abstracts data not present")
def test_real_medical_abstracts_conflicts_found_and_resolved():
    before = sha(MEDICAL)
    site = prepare_site(MEDICAL, cfg=DataConfig(), seed=0)
    clean = site.report["steps"]["clean"]
    assert clean["conflict_groups"] == 79 and clean["conflict_rows"] == 162
    assert clean["conflict_rows_removed"] == 162 and clean["rows_out"] == 2021 - 162
    majority = prepare_site(MEDICAL, cfg=DataConfig(conflict_policy="majority"), seed=0)
    assert majority.report["steps"]["clean"]["conflict_rows_removed"] == 162 - 79
    texts = pd.concat([majority.train, majority.val, majority.test])["text"]
    assert texts.is_unique and sha(MEDICAL) == before


def test_nothing_left_after_cleaning_is_a_data_error(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("text,label\n   ,a\n\u200b,b\n")
    with pytest.raises(DataError, match="no rows left.*empty_dropped': 2"):
        prepare_site(path, cfg=DataConfig(), seed=0)
