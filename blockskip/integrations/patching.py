"""Reversible attribute patches: set anything on a class or module, undo it all in reverse order.

The adapters patch upstream code only for the duration of one run. Every patch records whether
the owner held the attribute itself or inherited it, so undoing restores the exact previous
state (an inherited method is deleted again rather than copied down).

Example:
    >>> import types
    >>> module = types.SimpleNamespace(answer=41)
    >>> with Patches() as patches:
    ...     patches.set(module, "answer", 42)
    ...     module.answer
    42
    >>> module.answer
    41
"""

from __future__ import annotations

from typing import Any

_MISSING = object()


class Patches:
    """A stack of attribute patches; `undo()` (or leaving the `with` block) reverts them all."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        """Set `owner.name = value`, remembering what was there."""
        previous = vars(owner).get(name, _MISSING) if hasattr(owner, "__dict__") else getattr(owner, name, _MISSING)
        self._undo.append((owner, name, previous))
        setattr(owner, name, value)

    def undo(self) -> None:
        while self._undo:
            owner, name, previous = self._undo.pop()
            if previous is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)

    def __enter__(self) -> Patches:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.undo()
