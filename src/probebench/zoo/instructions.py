"""Chat-formatted instructions for a light instruction fine-tune of a real base model (the LoRA
partner of Gemma-3-270M, `probebench.zoo.lora`): six template families with one correct
answer each, generated from a seed, and the chat turns they are written in.

The families are everyday instruction following (arithmetic, opposites, capitals, counting,
reversing a list, spelling). None of them is a task probebench measures: no sentiment, no
honesty verdict, no animal question and no " yes" / " no" answer, so the fine-tune changes how
the model answers requests, not what it was trained to answer on the probed tasks.

    >>> ex = instruction_examples(3, seed=0)
    >>> [e.family for e in ex]
    ['spell', 'count', 'plus']
    >>> ex[2].instruction, ex[2].response
    ('What is 4 plus 1?', '4 plus 1 is 5.')
    >>> print(chat_prompt("What is 2 plus 3?"))
    <start_of_turn>user
    What is 2 plus 3?<end_of_turn>
    <start_of_turn>model
    <BLANKLINE>
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Gemma's chat turns (Gemma 2 and 3 IT). The imported GGUF tokenizer carries the turn tokens but no
# chat template, so the format is written here; `chat_turn_tokens` checks a tokenizer has them.
TURN_USER = "<start_of_turn>user\n"
TURN_MODEL = "<start_of_turn>model\n"
END_TURN = "<end_of_turn>\n"
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")

OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "light": "dark", "open": "closed",
             "early": "late", "full": "empty", "old": "new", "high": "low", "wet": "dry", "hard": "soft",
             "near": "far", "thick": "thin", "loud": "quiet", "rich": "poor"}
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
            "Egypt": "Cairo", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
            "Greece": "Athens", "Poland": "Warsaw"}
WORDS = ["river", "garden", "window", "pencil", "music", "winter", "bridge", "candle", "forest", "letter",
         "planet", "silver", "market", "ladder", "summer", "island"]
FAMILIES = ("plus", "opposite", "capital", "count", "reverse", "spell")


@dataclass(frozen=True)
class Instruction:
    family: str
    instruction: str
    response: str


def _one(rng: np.random.Generator) -> Instruction:
    family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    if family == "plus":
        a, b = (int(x) for x in rng.integers(1, 50, size=2))
        return Instruction(family, f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
    if family == "opposite":
        w = list(OPPOSITES)[int(rng.integers(len(OPPOSITES)))]
        return Instruction(family, f"What is the opposite of {w}?", f"The opposite of {w} is {OPPOSITES[w]}.")
    if family == "capital":
        c = list(CAPITALS)[int(rng.integers(len(CAPITALS)))]
        return Instruction(family, f"What is the capital of {c}?", f"The capital of {c} is {CAPITALS[c]}.")
    if family == "count":
        a = int(rng.integers(1, 20))
        b = a + int(rng.integers(2, 6))
        return Instruction(family, f"Count from {a} to {b}.", ", ".join(map(str, range(a, b + 1))) + ".")
    if family == "reverse":
        xs = [WORDS[i] for i in rng.choice(len(WORDS), size=3, replace=False)]
        return Instruction(family, "Reverse this list: " + ", ".join(xs), ", ".join(xs[::-1]))
    w = WORDS[int(rng.integers(len(WORDS)))]
    return Instruction(family, f"Spell the word {w}.", "-".join(w))


def instruction_examples(n: int, *, seed: int) -> list[Instruction]:
    """`n` instructions drawn from the template families with `seed` (same seed, same list)."""
    rng = np.random.default_rng(seed)
    return [_one(rng) for _ in range(n)]


def heldout_instructions(n: int, *, seed: int, exclude: set[str]) -> list[Instruction]:
    """`n` distinct instructions whose text is not in `exclude` (the training draws), from a
    stream of their own: the fine-tune's held-out accuracy is measured on these."""
    rng = np.random.default_rng([seed, 1])
    out: dict[str, Instruction] = {}
    for _ in range(200 * n):
        ex = _one(rng)
        if ex.instruction not in exclude and ex.instruction not in out:
            out[ex.instruction] = ex
            if len(out) == n:
                break
    return list(out.values())


def chat_prompt(instruction: str) -> str:
    """The user turn and the opening of the model's turn (what the model continues)."""
    return f"{TURN_USER}{instruction}{END_TURN}{TURN_MODEL}"


def chat_turn_tokens(tokenizer, where: str) -> None:
    """Refuse a tokenizer without Gemma's turn tokens (they would be split into pieces of text)."""
    from probebench.errors import InputFileError

    vocab = tokenizer.get_vocab()
    missing = [t for t in TURN_TOKENS if t not in vocab]
    if missing:
        raise InputFileError(f"{where}: the tokenizer has no {missing} tokens; the instruction fine-tune writes "
                             "Gemma's chat turns, so its base must be a Gemma model (adapters.<key>.base)")
