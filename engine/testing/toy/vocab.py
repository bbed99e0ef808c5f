"""The toy world's vocabulary and caption grammar: the words the toy models know.

Plain Python (no torch, no bpy): the dataset generator (toyworld/, in Blender), the trainer
and the toy-world benchmark all read the same lists, so a caption the generator writes is
one the tokenizer knows and a colour the benchmark checks is one the renders show.

Grammar::

    caption  := things " on " ground " under " sky
    things   := thing (", " thing)* " and " thing | thing
    thing    := "a " colour [" " pattern] " " shape        (pattern "plain" is not written)
    ground   := "grass" | "sand" | "tiles"
    sky      := "a blue sky" | "a sunset sky" | "a night sky"

Example: "a red checkered cube and a blue person on grass under a sunset sky".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Linear-light base colours for Blender materials (what the renders are made from).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.75, 0.04, 0.03),
    "green": (0.04, 0.45, 0.05),
    "blue": (0.03, 0.08, 0.75),
    "yellow": (0.85, 0.7, 0.03),
    "white": (0.85, 0.85, 0.85),
    "black": (0.015, 0.015, 0.015),
    "orange": (0.9, 0.22, 0.01),
    "purple": (0.3, 0.03, 0.5),
}
PATTERNS = ("plain", "striped", "checkered")
SHAPES = ("cube", "sphere", "cylinder", "cone", "torus", "person")
# Ground: two linear colours (a texture alternates or speckles them) and its texture kind.
GROUNDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], str]] = {
    "grass": ((0.05, 0.22, 0.03), (0.08, 0.3, 0.04), "speckle"),
    "sand": ((0.55, 0.42, 0.22), (0.5, 0.38, 0.2), "speckle"),
    "tiles": ((0.45, 0.45, 0.45), (0.2, 0.2, 0.22), "tiles"),
}
# Sky: the world colour (linear) behind everything.
SKIES: dict[str, tuple[float, float, float]] = {
    "blue": (0.25, 0.5, 0.95),
    "sunset": (0.95, 0.35, 0.2),
    "night": (0.01, 0.012, 0.05),
}
SKY_PHRASE = {"blue": "a blue sky", "sunset": "a sunset sky", "night": "a night sky"}

# Pairs the benchmark keeps apart on held-out scenes: an object the colour of what is behind it
# cannot be segmented against its background by colour, whatever the model draws.
CONFUSABLE_WITH_GROUND = {"grass": {"green"}, "sand": {"yellow", "orange"}, "tiles": {"white", "black"}}
CONFUSABLE_WITH_SKY = {"blue": {"blue", "white"}, "sunset": {"orange", "red"}, "night": {"black", "blue", "purple"}}


@dataclass(frozen=True)
class Thing:
    """One object of a scene and its own phrase, kept beside its exact mask."""

    colour: str
    pattern: str
    shape: str

    @property
    def phrase(self) -> str:
        middle = "" if self.pattern == "plain" else f" {self.pattern}"
        return f"a {self.colour}{middle} {self.shape}"


def caption(things: Sequence[Thing], ground: str, sky: str) -> str:
    """The caption of a frame from the things it shows (in the given order)."""
    phrases = [t.phrase for t in things]
    if not phrases:
        head = "nothing"
    elif len(phrases) == 1:
        head = phrases[0]
    else:
        head = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{head} on {ground} under {SKY_PHRASE[sky]}"


def words() -> list[str]:
    """Every word the grammar can write, in a fixed order (the tokenizer's whole words)."""
    fixed = ["a", "and", "on", "under", "sky", "nothing"]
    out: list[str] = []
    for word in [*fixed, *COLOURS, *PATTERNS, *SHAPES, *GROUNDS, "sunset", "night"]:
        if word not in out:
            out.append(word)
    return out


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: merge the lowest-ranked adjacent pair until none is left."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _merges(order: Sequence[str]) -> list[tuple[str, str]]:
    """Merges that build each word of `order` left to right, earlier words ranked first."""
    merges: list[tuple[str, str]] = []
    for word in order:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
    return merges


def write_tokenizer_files(folder: Path) -> None:
    """A CLIP BPE vocabulary (``vocab.json``, ``merges.txt``) where every grammar word is one token.

    Printable ASCII stands for itself in CLIP's byte-to-unicode table; other characters are
    unknown. A word whose merge chain another word's merge cuts (``o+r`` of "orange" inside
    "torus") moves to the front of the order until every word comes out whole.
    """
    order = sorted(words(), key=len, reverse=True)
    for _ in range(len(order)):
        merges = _merges(order)
        ranks = {pair: i for i, pair in enumerate(merges)}
        split = [w for w in order if len(_bpe(w, ranks)) != 1]
        if not split:
            break
        order = split + [w for w in order if w not in split]
    else:
        raise RuntimeError(f"no merge order keeps these words whole: {split}")
    symbols = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += [a + b for a, b in merges if a + b not in vocab]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
