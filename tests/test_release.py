"""`fedtune keygen / release / verify`: signed bundles that fail loudly on any change."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest

from common.adapter import save_adapter
from common.config import ModelConfig
from common.model import build_model, model_fingerprint
from fedtune.cli import main
from fedtune.release import sign_bundle, verify_bundle
from fedtune.release_keys import ReleaseError, load_private_key, load_public_key
from fedtune.release_trust import TrustError, key_fingerprint
from tests.test_export_predict import copy_run, other_base, shared_run

RAW_SITE = re.compile(r"\bsite-[01]\b")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    assert main(["keygen", "--out", str(d)]) == 0
    return d / "fedtune_ed25519.key", d / "fedtune_ed25519.pub"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_model_dir, keys) -> Path:
    run = copy_run(shared_run(tmp_path_factory, tiny_model_dir), tmp_path_factory.mktemp("rel") / "run")
    (run / "audit.json").write_text(json.dumps({"site-0": 0.51, "site-1": 0.55}))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:  # the keys the DP work reports per site and round
        for per in row["per_site"].values():
            per["train"].update(epsilon=1.25 * row["round"], delta=1e-5, epsilon_budget=4.0)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run.parent / "bundle"
    assert main(["release", str(run), "--key", str(keys[0]), "--out", str(out)]) == 0
    return out


@pytest.fixture
def fresh(bundle, tmp_path) -> Path:
    """A private copy of the good bundle for one test to damage."""
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def pin(pub: Path) -> str:
    return key_fingerprint(load_public_key(pub))


def _fails(path: Path, pub: Path, *, match: str) -> str:
    with pytest.raises(ReleaseError) as info:
        verify_bundle(path, pub=pub, pins=[pin(pub)], check_base=False)
    assert re.search(match, str(info.value)), str(info.value)
    return str(info.value)


def test_keygen_private_key_0600_and_no_overwrite(keys, capsys):
    key, pub = keys
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    assert main(["keygen", "--out", str(key.parent)]) == 2
    assert "--force" in capsys.readouterr().err and key.read_bytes() == before
    load_private_key(key)


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_release_and_verify_ok(bundle, keys, tiny_model_dir, capsys):
    assert main(["verify", str(bundle), "--pub", str(keys[1]), "--pin", pin(keys[1]),
                 "--base-model", str(tiny_model_dir)]) == 0
    assert "verify: OK" in capsys.readouterr().out
    names = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert {"MANIFEST.json", "MANIFEST.sig", "model_card.json", "model_card.md", "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json", "adapter/labels.json", "adapter/fedtune.json"} <= set(names)
    card = json.loads((bundle / "model_card.json").read_text())
    assert card["base_model"]["sha256"] == model_fingerprint(str(tiny_model_dir))
    assert card["training"]["rounds"] == 2 and card["task"]["labels"] == [f"intent_{i}" for i in range(4)]
    assert len(card["sites"]) == 2 and all(re.fullmatch(r"site-[0-9a-f]{8}", s) for s in card["sites"])
    assert set(card["membership_inference_audit"]["per_site"]) == set(card["sites"])
    dp = card["differential_privacy"]["per_site"]
    assert set(dp) == set(card["sites"]) and all(v["epsilon"] == 2.5 and v["delta"] == 1e-5 for v in dp.values())
    assert "## Differential privacy" in (bundle / "model_card.md").read_text()
    assert set(card["data_quality"]["per_site"]) == set(card["sites"]) and "accuracy" in card["final_metrics"]
    assert card["code_version"]["fedtune"] and "git_commit" in card["code_version"]
    for name in ("model_card.json", "model_card.md"):  # pseudonyms only, never the raw site names
        assert not RAW_SITE.search((bundle / name).read_text()), name


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_release_refuses_overwrite_and_readable_key(bundle, keys, tmp_path_factory, tiny_model_dir, capsys):
    run = bundle.parent / "run"
    assert main(["release", str(run), "--key", str(keys[0]), "--out", str(bundle)]) == 2
    assert "--force" in capsys.readouterr().err
    loose = tmp_path_factory.mktemp("loose") / "k.key"
    shutil.copy(keys[0], loose)
    loose.chmod(0o644)
    assert main(["release", str(run), "--key", str(loose), "--out", str(loose.parent / "b")]) == 2
    assert "chmod 600" in capsys.readouterr().err


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_every_flipped_byte_fails_naming_the_file(bundle, keys, tmp_path):
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    for name in files:
        copy = Path(shutil.copytree(bundle, tmp_path / name.replace("/", "_")))
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / name).write_bytes(bytes(data))
        expect = "MANIFEST.json" if name.startswith("MANIFEST") else re.escape(name) + ": sha256 differs"
        _fails(copy, keys[1], match=expect)


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_extra_or_missing_file_fails(fresh, keys):
    (fresh / "adapter" / "backdoor.py").write_text("print('hi')\n")
    _fails(fresh, keys[1], match=r"adapter/backdoor.py: not in the signed manifest")
    (fresh / "adapter" / "backdoor.py").unlink()
    (fresh / "model_card.md").unlink()
    _fails(fresh, keys[1], match=r"model_card.md: missing")


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_wrong_key_fails(bundle, tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path / "k2")]) == 0
    k2 = tmp_path / "k2" / "fedtune_ed25519.pub"
    assert main(["verify", str(bundle), "--pub", str(k2), "--pin", pin(k2), "--skip-base-model-check"]) == 2
    err = capsys.readouterr().err
    assert "signature check FAILED" in err and "wrong public key" in err
    assert main(["verify", str(bundle), "--pub", str(tmp_path / "k2" / "fedtune_ed25519.key")]) == 2
    assert "PRIVATE key" in capsys.readouterr().err


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_swapped_adapter_fails(fresh, keys, tiny_model_dir, tmp_path):
    """An adapter trained on another base: caught by hash, by the card, and by --base-model."""
    base2 = other_base(tiny_model_dir, tmp_path / "base2")
    built = build_model(ModelConfig(base=str(base2), max_length=32), num_labels=4)
    foreign = tmp_path / "foreign-adapter"
    save_adapter(built.model, foreign, label_names=[f"intent_{i}" for i in range(4)],
                 base_fingerprint=model_fingerprint(str(base2)))
    shutil.rmtree(fresh / "adapter")
    shutil.copytree(foreign, fresh / "adapter")
    _fails(fresh, keys[1], match=r"adapter/adapter_model.safetensors: sha256 differs")
    sign_bundle(fresh, load_private_key(keys[0]))  # even re-signed by the publisher's own key
    _fails(fresh, keys[1], match=r"adapter/fedtune.json: the adapter was trained on base model .* does not belong")


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_wrong_base_model_fails(bundle, keys, tiny_model_dir, tmp_path, capsys):
    base2 = other_base(tiny_model_dir, tmp_path / "base2")
    assert main(["verify", str(bundle), "--pub", str(keys[1]), "--pin", pin(keys[1]),
                 "--base-model", str(base2)]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and "model_card.json" in err


# ---- issue #15 scenario 8: the key is pinned, the base model checked by default ------------------
@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_unpinned_or_impostor_key_is_refused(bundle, keys, tmp_path, capsys):
    """Mallory re-signs the bundle with her own key and hands both over: refused unless pinned."""
    assert main(["keygen", "--out", str(tmp_path / "m")]) == 0
    assert "fingerprint sha256:" in capsys.readouterr().out
    forged = Path(shutil.copytree(bundle, tmp_path / "forged"))
    sign_bundle(forged, load_private_key(tmp_path / "m" / "fedtune_ed25519.key"))
    mallory = tmp_path / "m" / "fedtune_ed25519.pub"
    with pytest.raises(TrustError, match="no pinned publisher key.*--pin sha256:"):
        verify_bundle(forged, pub=mallory, check_base=False)
    with pytest.raises(TrustError, match="not pinned"):
        verify_bundle(forged, pub=mallory, pins=[pin(keys[1])], check_base=False)
    assert main(["verify", str(forged), "--pub", str(mallory), "--pin", pin(keys[1]),
                 "--skip-base-model-check"]) == 2
    assert "not pinned" in capsys.readouterr().err


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_pins_from_a_release_policy_file(bundle, keys, tiny_model_dir, tmp_path):
    policy = tmp_path / "release-policy.toml"
    policy.write_text(f'publisher-key-sha256 = ["{pin(keys[1])}"]\n'
                      f'base-model-sha256 = ["{model_fingerprint(str(tiny_model_dir))}"]\n')
    assert verify_bundle(bundle, pub=keys[1], policy=policy, base_model=tiny_model_dir)["base_model_checked"]
    policy.write_text(f'publisher-key-sha256 = ["{pin(keys[1])}"]\nbase-model-sha256 = ["{"0" * 64}"]\n')
    with pytest.raises(TrustError, match="base-model-sha256"):
        verify_bundle(bundle, pub=keys[1], policy=policy, check_base=False)
    policy.write_text('publisher-keys = ["x"]\n')
    with pytest.raises(TrustError, match="unknown key"):
        verify_bundle(bundle, pub=keys[1], policy=policy, check_base=False)


@pytest.mark.slow  # the bundle comes from a real simulated federation (shared_run)
def test_base_model_check_is_on_by_default(bundle, keys, capsys):
    with pytest.raises(ReleaseError, match="--base-model DIR.*--skip-base-model-check"):
        verify_bundle(bundle, pub=keys[1], pins=[pin(keys[1])])
    assert main(["verify", str(bundle), "--pub", str(keys[1]), "--pin", pin(keys[1])]) == 2
    assert main(["verify", str(bundle), "--pub", str(keys[1]), "--pin", pin(keys[1]),
                 "--skip-base-model-check"]) == 0
    captured = capsys.readouterr()
    assert "WARNING --skip-base-model-check" in captured.err and "NOT checked" in captured.out
