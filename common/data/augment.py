"""Text augmentation for the TRAIN split only: synonym replacement, random swap, random deletion.

Seeded and offline (synonyms come from the hand-written ``synonyms.json`` next to this file).
Placeholders such as ``[EMAIL]`` are never replaced or deleted.

Back-translation hook: pass ``augmenters={"backtranslate": fn}`` to ``augment_frame`` (or
``prepare_site``) and put ``backtranslate:P`` in ``data.augment``. ``fn(text, *, p, rng) -> str``
receives the text, the probability P and a seeded ``random.Random``; it should translate to a
pivot language and back with a LOCAL model (nothing may leave the site) and return the new text.
The same mapping may also replace a built-in op (e.g. a model-based "synonym").
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from common.data.config import augment_ops
from common.errors import ConfigError

Augmenter = Callable[..., str]  # fn(text: str, *, p: float, rng: random.Random) -> str
SYNONYMS_PATH = Path(__file__).with_name("synonyms.json")
_PUNCT = ".,!?;:\"'()"


def load_synonyms(path: str | Path = SYNONYMS_PATH) -> dict[str, list[str]]:
    """The offline synonym table: lower-case word -> list of replacements."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _protected(word: str) -> bool:
    return word.startswith("[") and word.rstrip(_PUNCT).endswith("]")


def synonym_replace(words: list[str], *, p: float, rng: random.Random,
                    table: Mapping[str, list[str]]) -> list[str]:
    """Replace about p*len(words) words (at least one) that have synonyms, keeping case/punctuation."""
    out = list(words)
    spots = [i for i, w in enumerate(words) if not _protected(w) and w.strip(_PUNCT).lower() in table]
    rng.shuffle(spots)
    for i in spots[: max(1, round(p * len(words)))]:
        word = words[i]
        core = word.strip(_PUNCT)
        lead, tail = word[: word.index(core)], word[word.index(core) + len(core):]
        new = rng.choice(table[core.lower()])
        new = new[:1].upper() + new[1:] if core[:1].isupper() else new
        out[i] = f"{lead}{new}{tail}"
    return out


def random_swap(words: list[str], *, p: float, rng: random.Random) -> list[str]:
    """Swap two random positions about p*len(words) times (at least once)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(max(1, round(p * len(out)))):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_delete(words: list[str], *, p: float, rng: random.Random) -> list[str]:
    """Drop each word with probability p (placeholders are kept; at least one word survives)."""
    kept = [w for w in words if _protected(w) or rng.random() >= p]
    return kept or [rng.choice(words)] if words else []


def augment_text(text: str, *, ops: Sequence[tuple[str, float]], rng: random.Random,
                 table: Mapping[str, list[str]], augmenters: Mapping[str, Augmenter] | None = None) -> str:
    """Apply the ops in order to one text."""
    for name, p in ops:
        if augmenters and name in augmenters:
            text = augmenters[name](text, p=p, rng=rng)
            continue
        words = text.split()
        if name == "synonym":
            words = synonym_replace(words, p=p, rng=rng, table=table)
        elif name == "swap":
            words = random_swap(words, p=p, rng=rng)
        elif name == "delete":
            words = random_delete(words, p=p, rng=rng)
        else:
            raise ConfigError(f"data.augment uses {name!r} but no augmenter function was given for it; "
                              f"fix: pass augmenters={{{name!r}: fn}} to prepare_site or remove it")
        text = " ".join(words)
    return text


def augment_frame(frame: pd.DataFrame, *, spec: str, copies: int, seed: int,
                  augmenters: Mapping[str, Augmenter] | None = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Append ``copies`` augmented copies of each row of a TRAIN frame (columns text, label).

    Copies identical to their source are skipped. Returns (frame, counts); with spec "" the frame
    comes back unchanged.
    """
    ops = augment_ops(spec)
    counts = {"rows_in": len(frame), "rows_added": 0, "unchanged_skipped": 0}
    if not ops or frame.empty:
        counts["rows_out"] = len(frame)
        return frame, counts
    rng = random.Random(f"fedtune-augment:{seed}")
    table = load_synonyms()
    new_texts, new_labels, sources = [], [], []
    for i, (text, label) in enumerate(zip(frame["text"].tolist(), frame["label"].tolist())):
        for _ in range(copies):
            new = augment_text(text, ops=ops, rng=rng, table=table, augmenters=augmenters)
            if new == text or not new:
                counts["unchanged_skipped"] += 1
                continue
            new_texts.append(new)
            new_labels.append(label)
            sources.append(i)
    added = pd.DataFrame({"text": new_texts, "label": pd.Series(new_labels, dtype=frame["label"].dtype)})
    if "group" in frame:  # a copy belongs to its source's person (person-level DP counts them together)
        added["group"] = frame["group"].iloc[sources].tolist()
    counts["rows_added"] = len(added)
    out = pd.concat([frame, added], ignore_index=True)
    counts["rows_out"] = len(out)
    return out, counts
