"""A deterministic offline text generator that stands in for a model provider.

The same prompt always gives the same text, so examples and tests run with no
API key and no network. It writes plausible filler, not facts.
"""

from __future__ import annotations

import hashlib
import random

_NOUNS = (
    "current",
    "shoreline",
    "moon",
    "basin",
    "harbour",
    "estuary",
    "surge",
    "cycle",
    "gradient",
    "reef",
    "channel",
    "forecast",
    "range",
    "pull",
    "coast",
    "swell",
)
_VERBS = (
    "shapes",
    "follows",
    "amplifies",
    "drains",
    "reveals",
    "delays",
    "steers",
    "balances",
    "feeds",
    "explains",
    "reshapes",
    "tracks",
)
_ADJECTIVES = (
    "semidiurnal",
    "shallow",
    "coastal",
    "seasonal",
    "narrow",
    "resonant",
    "gentle",
    "predictable",
    "hidden",
    "local",
    "vast",
    "steady",
)

NOTICE = "offline text generator (no model provider configured): the text is filler"


def seeded(*parts: str) -> random.Random:
    """A random generator seeded by the parts: the same parts, the same sequence."""
    seed = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


def sentence(rng: random.Random, topic: str) -> str:
    """One sentence about topic."""
    words = [
        rng.choice(("The", "Every", "A", "Each")),
        rng.choice(_ADJECTIVES),
        rng.choice(_NOUNS),
        rng.choice(_VERBS),
        "the",
        rng.choice(_ADJECTIVES),
        rng.choice(_NOUNS),
        rng.choice(("of", "near", "behind", "within")),
        topic,
    ]
    return " ".join(words) + "."


def facts(topic: str, n: int = 5) -> list[str]:
    """n short research notes about topic."""
    rng = seeded("facts", topic)
    return [sentence(rng, topic) for _ in range(n)]


def titles(topic: str, n: int) -> list[str]:
    """n section titles for an article about topic."""
    rng = seeded("titles", topic)
    out: list[str] = []
    while len(out) < n:
        title = f"{rng.choice(_ADJECTIVES).title()} {rng.choice(_NOUNS)}s and {topic}"
        if title not in out:
            out.append(title)
    return out


def paragraph_words(topic: str, title: str, sentences: int = 4) -> list[str]:
    """The words of one section, to stream one by one."""
    rng = seeded("section", topic, title)
    text = " ".join(sentence(rng, topic) for _ in range(sentences))
    return text.split(" ")
