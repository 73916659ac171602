"""Shared fixtures: tiny models built from a config (never downloaded), small label sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("card arrived lost stolen pin blocked transfer pending refund cash atm fee exchange rate "
         "top up failed verify identity account close phone apple pay google virtual physical "
         "declined payment charged twice wrong amount balance cheque deposit").split()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with a WordPiece tokenizer, saved like a Hugging Face model."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + \
        [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(out)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    return out


def make_texts(n: int, num_labels: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Learnable synthetic data: each label owns a few keywords."""
    import random

    rng = random.Random(seed)
    words = sorted(set(WORDS))
    texts, labels = [], []
    for i in range(n):
        lab = i % num_labels
        own = words[lab * 3 % len(words): lab * 3 % len(words) + 3]
        body = [rng.choice(own) for _ in range(3)] + [rng.choice(words) for _ in range(rng.randint(0, 2))]
        rng.shuffle(body)
        texts.append(" ".join(body) + f" {i}")
        labels.append(f"intent_{lab}")
    return texts, labels


@pytest.fixture
def tiny_csv(tmp_path) -> Path:
    import pandas as pd

    texts, labels = make_texts(240, 4)
    path = tmp_path / "pooled.csv"
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path
