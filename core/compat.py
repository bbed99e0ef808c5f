"""Differences between the Blender versions Viewfinder supports (4.2 LTS to 5.x), in one place."""

from __future__ import annotations

from typing import Any


def strips_of(sequence_editor: Any) -> Any:
    """The top-level strip collection: `strips` from 4.4, `sequences` before.

    Tested with hasattr, not `or`: an empty collection is falsy.
    """
    if hasattr(sequence_editor, "strips"):
        return sequence_editor.strips
    return sequence_editor.sequences


def all_strips_of(sequence_editor: Any) -> Any:
    """Every strip, inside meta strips too: `strips_all` from 4.4, `sequences_all` before."""
    if hasattr(sequence_editor, "strips_all"):
        return sequence_editor.strips_all
    return sequence_editor.sequences_all


def active_strip(sequence_editor: Any) -> Any:
    """The active strip (`active_strip` in every supported version)."""
    return getattr(sequence_editor, "active_strip", None)
