"""Paths built from ids: a file or folder named after a job stays inside the folder it belongs in."""

from __future__ import annotations

from pathlib import Path

from shared.errors import PermanentError


class PathEscapeError(PermanentError):
    """A name would put a file outside its folder (an id such as ``../x`` or ``/etc/cron.d/x``)."""


def within(root: Path, *parts: str) -> Path:
    """``root / parts``, resolved, refused unless it lies strictly inside ``root``.

    The contracts already refuse such ids (``SafeId``); this is the defence in depth where paths are
    built, so an id that reached a job another way (an old ledger row, a hand-made call) still cannot
    name a file elsewhere. Symlinks are resolved first, so a link cannot lead out either.
    """
    base = root.resolve()
    path = base.joinpath(*parts).resolve()
    if path == base or not path.is_relative_to(base):
        raise PathEscapeError(f"{'/'.join(parts)!r} escapes {base}: refused as a file name under it")
    return path
