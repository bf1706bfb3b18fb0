"""Confine file datasources to the data root, whatever the path says (``..``, absolute, symlinks)."""

from __future__ import annotations

from pathlib import Path

from shared.errors import Unprocessable


class PathOutsideDataRoot(Unprocessable):
    code = "path_outside_data_root"


class PathNotFound(Unprocessable):
    code = "path_not_found"


def resolve_in_data_root(
    data_root: Path, value: str, *, want_dir: bool, pointer: str | None = None
) -> Path:
    """Resolve ``value`` (relative to the root, or absolute inside it) with symlinks followed.

    Re-run this whenever the path is used: a symlink can be changed after it was checked.
    """
    if not value or "\x00" in value:
        raise PathNotFound("The path is empty or contains a NUL byte.", pointer=pointer)
    root = data_root.resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = root / candidate
    kind = "directory" if want_dir else "file"
    try:
        resolved = candidate.resolve(strict=False)
        if not resolved.is_relative_to(root):
            raise PathOutsideDataRoot(
                "The path must lie inside the server's data root (DATAFERRY_DATA_ROOT).",
                pointer=pointer,
            )
        exists = resolved.is_dir() if want_dir else resolved.is_file()
    except OSError as exc:  # a name too long, a loop of links, no permission: nothing usable
        raise PathNotFound(
            f"No usable {kind} at this path ({exc.strerror or 'unreadable'}).", pointer=pointer
        ) from exc
    if not exists:
        raise PathNotFound(f"No such {kind} in the data root: {value!r}.", pointer=pointer)
    return resolved


def relative_to_root(data_root: Path, resolved: Path) -> str:
    return resolved.relative_to(data_root.resolve()).as_posix()
