"""Instructions: the templates of each task, their unseen paraphrases, and the tokenizer.

The tokenizer ships with the project (no download): a fixed word-level vocabulary built from
the task templates, the paraphrase templates of the out-of-distribution suite, and every
category name, plus ``<pad>`` (0) and ``<unk>`` (1). Unknown words become ``<unk>``, so a
paraphrase with new words still tokenizes, and the policy meets it as the shift it is.
An instruction is encoded as ``MAX_TOKENS`` int64 ids, padded with 0.
"""

from __future__ import annotations

import re

import numpy as np

from cmdp.envs.chores import catalog as cat

TASKS = ("ObjectNav", "PickUp", "Fetch")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "ObjectNav": ("find a {obj}", "navigate to a {obj}", "search for a {obj}", "go find the {obj}"),
    "PickUp": ("pick up the {obj}", "grasp the {obj}", "pick up a {obj}"),
    "Fetch": ("go to a {obj} and grasp that {obj}", "fetch a {obj}", "find a {obj} and pick it up"),
}
"""Templates seen in training and in the standard evaluation sets."""

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "ObjectNav": ("locate the nearest {obj}", "could you look for my {obj}", "where is a {obj} , go there"),
    "PickUp": ("lift that {obj} please", "take hold of the {obj}", "grab the {obj} in front of you"),
    "Fetch": ("bring me a {obj}", "retrieve the {obj} for me", "get hold of any {obj} in the house"),
}
"""Templates never used in training: the instruction-paraphrase OOD suite."""

MAX_TOKENS = 16
PAD, UNK = 0, 1


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z_]+|[,.?!]", text.lower())


def _build_vocab() -> dict[str, int]:
    words: list[str] = []
    for table in (TEMPLATES, PARAPHRASES):
        for templates in table.values():
            for t in templates:
                words += _words(t.replace("{obj}", ""))
    words += [c.name for c in cat.CATEGORIES]
    vocab = {"<pad>": PAD, "<unk>": UNK}
    for w in sorted(set(words)):
        vocab.setdefault(w, len(vocab))
    return vocab


VOCAB: dict[str, int] = _build_vocab()
VOCAB_SIZE = len(VOCAB)


def object_words(category: str) -> str:
    """How an instruction names a category ("teddy_bear" is one token, read "teddy_bear")."""
    return category


def instruction(task: str, category: str, template: int = 0, paraphrase: bool = False) -> str:
    table = PARAPHRASES if paraphrase else TEMPLATES
    options = table[task]
    return options[template % len(options)].format(obj=object_words(category))


def encode(text: str) -> np.ndarray:
    """``MAX_TOKENS`` int64 token ids of ``text`` (truncated, padded with 0)."""
    ids = [VOCAB.get(w, UNK) for w in _words(text)][:MAX_TOKENS]
    out = np.zeros(MAX_TOKENS, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def decode(ids: np.ndarray) -> str:
    inverse = {i: w for w, i in VOCAB.items()}
    return " ".join(inverse.get(int(i), "<unk>") for i in ids if int(i) != PAD)
