"""Causal-LM instruction tuning: a site's (prompt, response) pairs, their encoding with loss on
response tokens only, and evaluation by perplexity and ROUGE-L of greedy generations.

Config: `data.text-column` names the prompt column (or several / a `data.template`), and
`data.label-column` the response column, so a site's file needs no new keys. The pipeline's own
steps run on both columns — validate, clean, deduplicate, scrub PII/PHI — but the split is not
stratified (every response is unique, so stratifying would put every row in train).
"""

from __future__ import annotations

import numpy as np
import torch

from client.trainer import Encoded, batches
from common.config import RunConfig
from common.data import (
    PreparedSite,
    assign_splits,
    clean_frame,
    clean_text,
    fingerprint_frame,
    load_table,
    scrub_frame,
    validate_frame,
)
from common.data.config import split_fractions
from common.device import Accel, model_device
from common.errors import DataError
from common.metrics import lm_metrics, lm_tokens, rouge_l_f1


def prepare_lm_site(path: str, *, cfg: RunConfig, site_dir: str | None = None) -> PreparedSite:
    """load -> validate -> clean -> scrub prompts AND responses -> split (seeded, by group if
    data.group-column). Returns frames with `text` = prompt and `label` = response."""
    data, seed = cfg.data, cfg.train.seed
    raw = load_table(path)
    frame, v_counts = validate_frame(raw.frame, cfg=data, source=str(raw.path), task="classification",
                                     fmt=raw.fmt)
    frame = frame.assign(label=[clean_text(str(r)) for r in frame["label"].tolist()])
    frame = frame[frame["label"].str.len() > 0]
    frame, c_counts = clean_frame(frame, cfg=data)  # same prompt, other response: conflict policy
    if frame.empty:
        raise DataError(f"{raw.path}: no (prompt, response) rows left after validation and cleaning "
                        f"({v_counts}, {c_counts}); fix: check data.text-column (prompt) and "
                        "data.label-column (response)")
    pii = 0
    if data.scrub_pii:
        frame, p_counts = scrub_frame(frame, date_policy=data.date_policy, seed=seed)
        scrubbed, r_counts = scrub_frame(frame.assign(text=frame["label"]),
                                         date_policy=data.date_policy, seed=seed)
        frame = frame.assign(label=scrubbed["text"].tolist())
        pii = p_counts.get("rows_with_pii", 0) + r_counts.get("rows_with_pii", 0)
    where = np.asarray(assign_splits(frame["label"].tolist(), fractions=split_fractions(data.split),
                                     seed=seed, stratify=False,
                                     groups=frame["group"].tolist() if data.group_column else None))
    parts = {s: frame.loc[where == s, ["text", "label"]].reset_index(drop=True)
             for s in ("train", "val", "test")}
    report = {"task": "causal-lm", "rows": {s: len(p) for s, p in parts.items()},
              "validate": v_counts, "clean": c_counts, "rows_with_pii": pii}
    return PreparedSite(train=parts["train"], val=parts["val"], test=parts["test"], report=report,
                        fingerprint=fingerprint_frame(parts["train"]))


def encode_lm(tokenizer, prompts: list[str], responses: list[str], *, template: str,
              max_length: int) -> Encoded:
    """prompt (rendered by `template`) + response + EOS as one sequence; `prompt_lens` marks
    where the response starts. Long rows keep the END of the prompt (where the template puts the
    cue) and at most half of max_length of response."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids, starts = [], []
    for prompt, response in zip(prompts, responses):
        p = tokenizer(template.replace("{prompt}", prompt))["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + eos
        if len(p) + len(r) > max_length:
            r = r[:max(1, max_length // 2, max_length - len(p))]
            p = p[-(max_length - len(r)):] if max_length > len(r) else p[:0]
        ids.append(p + r)
        starts.append(len(p))
    return Encoded(ids=ids, labels=np.zeros(len(ids)), prompt_lens=np.asarray(starts, dtype=np.int64))


@torch.inference_mode()
def token_nll(model: torch.nn.Module, data: Encoded, *, pad_id: int = 0,
              batch_size: int = 32) -> tuple[float, int]:
    """Summed next-token NLL over response tokens, and their count."""
    model.eval()
    move = Accel(device=model_device(model)).move  # runs where the model is (train.device)
    total, count = 0.0, 0
    for ids, mask, labels, _ in batches(data, batch_size=batch_size, shuffle=False, rng=None,
                                        pad_id=pad_id):
        ids, mask, labels = move(ids, mask, labels)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        total += float(torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), target.flatten(), ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    return total, count


@torch.inference_mode()
def generate(model: torch.nn.Module, tokenizer, prompts: list[list[int]], *, max_new_tokens: int,
             pad_id: int = 0, batch_size: int = 16) -> list[str]:
    """Greedy continuations of tokenised prompts (left-padded batches), decoded."""
    model.eval()
    move = Accel(device=model_device(model)).move
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, p in enumerate(chunk):
            ids[row, width - len(p):] = torch.as_tensor(p)
            mask[row, width - len(p):] = 1
        ids, mask = move(ids, mask)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad_id,
                             eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, width:].cpu(), skip_special_tokens=True)
    return out


def evaluate_lm(model: torch.nn.Module, data: Encoded, *, tokenizer, pad_id: int = 0,
                generate_tokens: int = 16) -> dict[str, float]:
    """loss and perplexity over response tokens; ROUGE-L F1 of greedy generations of at most
    `generate_tokens` tokens against the reference responses (lower-cased word tokens)."""
    nll, count = token_nll(model, data, pad_id=pad_id)
    rouge: list[float] = []
    if generate_tokens and len(data):
        prompts = [seq[:int(n)] for seq, n in zip(data.ids, data.prompt_lens)]
        refs = tokenizer.batch_decode([seq[int(n):] for seq, n in zip(data.ids, data.prompt_lens)],
                                      skip_special_tokens=True)
        preds = generate(model, tokenizer, prompts, max_new_tokens=generate_tokens, pad_id=pad_id)
        rouge = [rouge_l_f1(lm_tokens(p), lm_tokens(r)) for p, r in zip(preds, refs)]
    return lm_metrics(nll_sum=nll, tokens=count, rouge=rouge)

