"""`fedtune explain`: faithful attributions on a tiny trained model, the CLI writes only under
--out (HTML + JSON, atomically), PII is scrubbed before it reaches the page, clear errors."""

import json

import pytest

from tests import simhelp
from tests.conftest import WORDS, make_texts

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A tiny BERT fine-tuned on keyword data (each label owns three words), saved as an export dir."""
    from fedtune.finetuner import FineTuner

    texts, labels = make_texts(240, 3, seed=1)
    val_t, val_l = make_texts(60, 3, seed=2)
    tuner = FineTuner(base_model=tiny_model_dir, num_classes=3)
    tuner.set_params(epochs=8, patience=8, batch_size=16, learning_rate=1e-2, max_length=24, verbose=False,
                     finetune="full")
    tuner.fit(texts, labels, val_t, val_l)
    assert tuner.evaluate(val_t, val_l)["accuracy"] > 0.8
    model = tuner.model.merge_and_unload() if hasattr(tuner.model, "merge_and_unload") else tuner.model
    model.config.id2label = dict(enumerate(tuner.label_names))
    model.config.label2id = {n: i for i, n in enumerate(tuner.label_names)}
    out = tmp_path_factory.mktemp("export")
    model.save_pretrained(out)
    tuner.tokenizer.save_pretrained(out)
    (out / "export.json").write_text(json.dumps({"labels": tuner.label_names, "max_length": 24}))
    return out


@pytest.mark.slow
def test_top_attributed_tokens_matter_more_than_random_ones(trained):
    from fedtune.explain import deletion_drops, explain_texts
    from fedtune.predict import load_predictor

    pred = load_predictor(trained, device="cpu")
    sample, _ = make_texts(30, 3, seed=3)
    explanations = explain_texts(pred, sample, steps=24)
    assert all(len(e.tokens) == len(e.scores) and abs(sum(s * s for s in e.scores) - 1) < 1e-3
               for e in explanations)
    top, rnd = deletion_drops(pred, explanations, k=2, seed=0)
    assert top > rnd + 0.05, (top, rnd)
    # and the most attributed token is mostly one of the predicted label's own keywords
    words = sorted(set(WORDS))
    own = {f"intent_{lab}": set(words[lab * 3:lab * 3 + 3]) for lab in range(3)}
    hits = [e.top(1)[0][0] in own[e.label] for e in explanations if e.top(1)]
    assert sum(hits) >= 0.6 * len(explanations), hits


@pytest.mark.slow
def test_cli_writes_only_under_out_and_scrubs_pii(trained, tmp_path):
    data = tmp_path / "texts.csv"
    data.write_text("text\ncard lost stolen 7 call +44 20 7946 0958\npin blocked atm 12\n", encoding="utf-8")
    work = tmp_path / "cwd"
    work.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "site" / "explain"
    proc = simhelp.run("explain", str(trained), "--data", str(data), "--out", str(out), "--steps", "8",
                       cwd=work, timeout=300, extra_env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "prob" in proc.stdout and "intent_" in proc.stdout
    new = {p for p in tmp_path.rglob("*")} - before
    assert new == {tmp_path / "site", out, out / "explain.html", out / "explain.json"}
    page = (out / "explain.html").read_text(encoding="utf-8")
    assert "<span" in page and "7946" not in page and "phone" in page.lower()
    assert "http" not in page.replace("http-equiv", "") and "<script" not in page
    doc = json.loads((out / "explain.json").read_text(encoding="utf-8"))
    assert len(doc["explanations"]) == 2
    assert all(0 <= e["prob"] <= 1 and e["label"].startswith("intent_") for e in doc["explanations"])


def test_cli_errors_are_clear(tmp_path, capsys):
    from fedtune.cli import main

    assert main(["explain", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--text" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["explain", str(tmp_path), "--text", "hi", "--out", str(tmp_path / "f")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["explain", str(tmp_path), "--text", "hi", "--out", str(tmp_path / "o")]) == 2
    assert "neither a `fedtune export` directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_captum_names_the_extra(monkeypatch):
    import builtins

    from common.errors import FedtuneError
    from fedtune import explain

    real = builtins.__import__

    def no_captum(name, *a, **kw):
        if name.startswith("captum"):
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_captum)
    with pytest.raises(FedtuneError, match=r"fedtune\[explain\]"):
        explain._lig_class()
