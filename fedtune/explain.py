"""`fedtune explain`: why the global model predicts what it does, computed at the site.

    fedtune explain MODEL_DIR (--text TEXT ... | --data FILE) --out DIR [--top K] [--steps N]

MODEL_DIR is a run directory (base model + global adapter) or a `fedtune export` directory,
loaded by fedtune.predict.load_predictor. For each text: the predicted label, its probability
and per-token attributions from Captum's integrated gradients over the input embeddings
(LayerIntegratedGradients on the word-embedding layer, baseline = the same sequence with every
ordinary token replaced by [PAD], special tokens kept). Texts go through the site pipeline's
cleaning and PII scrubbing first (the run's data settings), exactly as the model saw its
training data: the explanation is of the scrubbed text, so no raw PII reaches the page.

Everything stays at the site: no network (HF_HUB_OFFLINE), and the only files written are
DIR/explain.html (self-contained: inline CSS, no scripts or remote assets) and
DIR/explain.json, each via a temp name + rename. Captum is an optional extra: `fedtune[explain]`.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError, FedtuneError

EXTRA = "pip install 'fedtune[explain]'  (or: pip install captum torch==<your torch version>)"


@dataclass
class Explanation:
    """One text's prediction and its token attributions (L2-normalised, sign = for/against)."""

    text: str
    label: str
    prob: float  # probability of `label` (the predicted value for regression)
    tokens: list[str]
    scores: list[float]
    delta: float  # integrated-gradients convergence delta (completeness error)

    def top(self, k: int) -> list[tuple[str, float]]:
        order = np.argsort(-np.asarray(self.scores))[:k]
        return [(self.tokens[i], round(self.scores[i], 3)) for i in order if self.scores[i] > 0]


def _lig_class():
    try:
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise FedtuneError(f"fedtune explain needs Captum, which is not installed here; fix: {EXTRA}") from None
    return LayerIntegratedGradients


def _encode(pred, text: str):
    import torch

    enc = pred.tokenizer(text, truncation=True, max_length=pred.max_length, return_special_tokens_mask=True)
    ids = torch.tensor([enc["input_ids"]], device=pred.device)
    special = torch.tensor([enc["special_tokens_mask"]], device=pred.device).bool()
    return ids, special


def _scores_fn(pred):
    """Probabilities of every class (or the regression value), as a function of input ids."""
    import torch

    def forward(ids, mask):
        logits = pred.model(input_ids=ids, attention_mask=mask).logits.float()
        return logits if pred.task == "regression" else torch.softmax(logits, dim=-1)
    return forward


def explain_texts(pred, texts: list[str], *, steps: int = 32) -> list[Explanation]:
    """Integrated-gradients attributions of the predicted class for each (already prepared) text."""
    import torch

    lig_cls = _lig_class()
    if any("quantized" in type(m).__module__ for m in pred.model.modules()):
        raise ConfigError("the int8 model has no gradients to integrate; fix: pass the export directory "
                          "itself (not its int8/ folder) or the run directory")
    forward = _scores_fn(pred)
    pad = int(pred.tokenizer.pad_token_id or 0)
    pred.model.eval()
    out = []
    for text in texts:
        ids, special = _encode(pred, text)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            probs = forward(ids, mask)[0]
        target = 0 if pred.task == "regression" else int(probs.argmax())
        baseline = torch.where(special, ids, torch.full_like(ids, pad))
        lig = lig_cls(lambda i, m: forward(i, m)[:, target], pred.model.get_input_embeddings())
        with torch.enable_grad():
            attr, delta = lig.attribute(ids, baselines=baseline, additional_forward_args=(mask,), n_steps=steps,
                                        internal_batch_size=steps, return_convergence_delta=True)
        per_token = attr.sum(dim=-1)[0].detach().float().cpu()
        per_token = per_token / (per_token.norm() + 1e-12)
        label = "value" if pred.task == "regression" else pred.labels[target]
        out.append(Explanation(text=text, label=label, prob=float(probs[target]),
                               tokens=pred.tokenizer.convert_ids_to_tokens(ids[0].tolist()),
                               scores=[round(float(s), 5) for s in per_token], delta=float(delta.abs().max())))
    return out


def deletion_drops(pred, explanations: list[Explanation], *, k: int, seed: int = 0) -> tuple[float, float]:
    """Faithfulness: mean drop of the predicted class's probability when the k most positively
    attributed ordinary tokens are removed, and when k random ordinary tokens are removed."""
    import torch

    forward, rng = _scores_fn(pred), np.random.default_rng(seed)
    top_drops, rnd_drops = [], []
    for ex in explanations:
        ids, special = _encode(pred, ex.text)
        target = pred.labels.index(ex.label)
        ordinary = [i for i in range(ids.shape[1]) if not special[0, i]]
        if len(ordinary) <= k:
            continue
        ranked = sorted(ordinary, key=lambda i: -ex.scores[i])[:k]
        randoms = list(rng.choice(ordinary, size=k, replace=False))
        for drop, bucket in ((ranked, top_drops), (randoms, rnd_drops)):
            keep = torch.tensor([i for i in range(ids.shape[1]) if i not in set(drop)], device=ids.device)
            cut = ids[:, keep]
            with torch.no_grad():
                bucket.append(ex.prob - float(forward(cut, torch.ones_like(cut))[0, target]))
    if not top_drops:
        raise DataError(f"no text has more than k={k} ordinary tokens; fix: use a smaller --top or longer texts")
    return float(np.mean(top_drops)), float(np.mean(rnd_drops))


# ---- rendering ------------------------------------------------------------------------------
def _span(token: str, score: float) -> str:
    word = token[2:] if token.startswith("##") else token
    lead = "" if token.startswith("##") else " "
    colour = f"rgba(220,40,40,{min(abs(score), 1):.2f})" if score > 0 else f"rgba(40,90,220,{min(abs(score), 1):.2f})"
    return f'{lead}<span style="background:{colour}" title="{score:+.3f}">{html.escape(word)}</span>'


def render_html(explanations: list[Explanation], *, model: str) -> str:
    """A self-contained page: one block per text, tokens shaded by attribution."""
    blocks = []
    for n, ex in enumerate(explanations, start=1):
        body = "".join(_span(t, s) for t, s in zip(ex.tokens, ex.scores))
        blocks.append(f"<div class='ex'><p><b>#{n}</b> predicted <b>{html.escape(ex.label)}</b> "
                      f"(p = {ex.prob:.3f}, IG delta {ex.delta:.2g})</p><p class='toks'>{body}</p></div>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fedtune explain</title><style>"
            "body{font-family:sans-serif;max-width:60em;margin:2em auto}.ex{border-bottom:1px solid #ddd;"
            "padding:.5em 0}.toks{line-height:1.9}span{padding:1px 2px;border-radius:3px}</style></head><body>"
            f"<h1>fedtune explain</h1><p>Model: {html.escape(model)}. Token attributions: integrated gradients "
            "over the input embeddings for the predicted class (red = towards it, blue = against). Texts are "
            "shown as the model saw them: cleaned and PII-scrubbed.</p>" + "".join(blocks) + "</body></html>\n")


def format_table(explanations: list[Explanation], *, top: int) -> str:
    rows = [f"{'#':>3}  {'label':<24}{'prob':>7}  top tokens"]
    for n, ex in enumerate(explanations, start=1):
        toks = ", ".join(f"{t} {s:+.2f}" for t, s in ex.top(top))
        rows.append(f"{n:>3}  {ex.label[:23]:<24}{ex.prob:>7.3f}  {toks}")
    return "\n".join(rows)


# ---- CLI --------------------------------------------------------------------------------------
def _prepared_texts(pred, *, texts: list[str], data: str | None, text_column: str | None,
                    max_rows: int) -> tuple[list[str], int]:
    import dataclasses

    from common.data import clean_text, scrub_texts
    from fedtune.predict import read_input

    if data:
        if text_column:
            pred.data = dataclasses.replace(pred.data, text_column=text_column, template="")
        frame, _ = read_input(data, pred=pred)
        texts = frame["text"].tolist()
        return texts[:max_rows], len(texts)
    texts = [clean_text(t) for t in texts]
    for n, t in enumerate(texts, start=1):
        if not t:
            raise DataError(f"--text #{n} is empty after cleaning; fix: give a non-empty text")
    if pred.data.scrub_pii:
        texts, _ = scrub_texts(texts, date_policy=pred.data.date_policy)
    return texts[:max_rows], len(texts)


def explain_to(model_dir: str, *, texts: list[str], data: str | None, text_column: str | None,
               out: Path, top: int, steps: int, max_rows: int, device: str | None) -> None:
    """`fedtune explain`: attributions for `texts` or the texts of `data`, printed as a table and
    written to OUT/explain.html and OUT/explain.json."""
    from common.atomic import atomic_write_bytes
    from fedtune.predict import load_predictor

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if bool(texts) == bool(data):
        raise ConfigError("fedtune explain needs texts: give --text TEXT (repeatable) or --data FILE, not both")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; fix: pass a directory (explain.html and explain.json go in it)")
    _lig_class()  # fail before loading a model when Captum is missing
    pred = load_predictor(model_dir, device=device)
    if pred.task not in ("classification", "regression"):
        raise ConfigError(f"fedtune explain supports classification and regression models, not {pred.task!r}")
    shown, total = _prepared_texts(pred, texts=texts, data=data, text_column=text_column, max_rows=max_rows)
    explanations = explain_texts(pred, shown, steps=steps)
    print(format_table(explanations, top=top))
    if total > len(shown):
        print(f"explained the first {len(shown)} of {total} texts (--max-rows {max_rows})")
    atomic_write_bytes(out / "explain.html", render_html(explanations, model=str(model_dir)).encode("utf-8"))
    doc = {"model": str(model_dir), "method": f"captum LayerIntegratedGradients, {steps} steps",
           "explanations": [asdict(e) for e in explanations]}
    atomic_write_bytes(out / "explain.json", (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
    print(f"explain: wrote {out / 'explain.html'} and {out / 'explain.json'}")
