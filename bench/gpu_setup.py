"""What bench/gpu_check.py runs on, made offline: a BERT-base-sized model from BertConfig's
default sizes (dropout 0, random weights) with the small WordPiece vocab of bench/tiny.py,
synthetic labelled texts of varied length, and a description of the machine."""

from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import pandas as pd
import torch

from bench.tiny import WORDS, make_tiny_model

LABELS = [f"intent_{k}" for k in range(8)]


def make_model(out: Path, *, quick: bool) -> Path:
    """A BERT-base-sized encoder (or the tiny one with --quick), dropout 0, saved like a HF model."""
    from transformers import BertConfig, BertModel

    make_tiny_model(out)  # tokenizer (small WordPiece vocab) + a tiny model, replaced below
    cfg = BertConfig(pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if quick:
        cfg = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    return out


def make_csv(path: Path, *, rows: int, words: tuple[int, int], seed: int = 0) -> Path:
    """Texts of `words` words; each label owns three keywords (learnable, varied lengths)."""
    rng = random.Random(seed)
    vocab = sorted(set(WORDS))
    texts, labels = [], []
    for i in range(rows):
        lab = i % len(LABELS)
        own = vocab[lab * 3: lab * 3 + 3]
        n = rng.randint(*words)
        texts.append(" ".join(rng.choice(own) if rng.random() < 0.3 else rng.choice(vocab)
                              for _ in range(n)) + f" {i}")
        labels.append(LABELS[lab])
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported(),
                    gpu_mem_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info
