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


LM_WORDS = ("what is the fee for a card transfer refund cash atm pin balance your my how do i "
            "check reset order new it takes days free costs euro one two three").split()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 32) causal LM with a word-level tokenizer, saved like a HF model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    vocab = ["<pad>", "<unk>", "<s>", "</s>", "###", ":", "?", ".", "instruction", "response"] + \
        sorted(set(LM_WORDS) - {"instruction", "response"}) + [str(i) for i in range(10)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    from tokenizers import normalizers

    tok.normalizer = normalizers.Lowercase()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False,
                      initializer_range=0.5)  # larger than usual so a frozen random lm_head can
    # still express confident predictions: LoRA then has something to learn
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Learnable instruction pairs: each question type has a fixed answer pattern."""
    import random

    rng = random.Random(seed)
    topics = ["card", "transfer", "refund", "cash", "atm", "pin", "balance", "order"]
    prompts, responses = [], []
    for i in range(n):
        t = topics[i % len(topics)]
        prompts.append(f"what is the fee for a {t} {rng.choice(['?', '.'])} {i}")
        responses.append(f"the {t} fee is {['one', 'two', 'three'][i % 3]} euro")
    return prompts, responses
