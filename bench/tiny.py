"""`--quick` stand-ins: a 2-layer BERT (hidden 32) with a WordPiece tokenizer, built from a config
and saved like a Hugging Face model, and learnable synthetic texts (each label owns keywords).
Same recipe as tests/conftest.py, so quick runs need no download and finish in seconds."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

WORDS = ("card arrived lost stolen pin blocked transfer pending refund cash atm fee exchange rate "
         "top up failed verify identity account close phone apple pay google virtual physical "
         "declined payment charged twice wrong amount balance cheque deposit").split()


def make_tiny_model(out: Path) -> Path:
    """Write the tiny model + tokenizer to `out` (once) and return it."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS))
             + list("abcdefghijklmnopqrstuvwxyz0123456789")
             + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"])
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]",
                                            special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(out)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     pad_token_id=0)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    return out


def synthetic_csv(path: Path, *, rows: int, num_labels: int, seed: int = 0) -> Path:
    """`rows` texts of 3-5 words (label `intent_k` owns three keywords) plus a unique number."""
    rng = random.Random(seed)
    words = sorted(set(WORDS))
    texts, labels = [], []
    for i in range(rows):
        lab = i % num_labels
        own = words[lab * 3 % len(words): lab * 3 % len(words) + 3]
        body = [rng.choice(own) for _ in range(3)] + [rng.choice(words) for _ in range(rng.randint(0, 2))]
        rng.shuffle(body)
        texts.append(" ".join(body) + f" {i}")
        labels.append(f"intent_{lab}")
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path
