"""The one crash-safe writer of files and folders: stage, fsync, then rename under a commit marker.

A target `x` (file or folder) is written to `x.tmp`, whose contents and folders are fsync'ed. Then a
marker `<name>.commit` lists every staged target of the transaction (a checkpoint and its `.hf`
folder are one transaction), is fsync'ed, and each target is swapped in (`x` -> `x.old`, `x.tmp` ->
`x`); the `.old` copies and the marker go last. After a crash at any point `recover` leaves every
target either all old (no marker: the staged `.tmp` files are dropped) or all new (marker: the swap
is finished), so a checkpoint and its HF folder always hold the same step.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

TMP, OLD, COMMIT = ".tmp", ".old", ".commit"
_staged: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("staged", default=None)


def staging(target: str | Path) -> Path:
    """Where `target` is written before it is committed."""
    target = Path(target)
    return target.with_name(target.name + TMP)


def _old(target: Path) -> Path:
    return target.with_name(target.name + OLD)


def remove(path: str | Path) -> None:
    """Delete a file, link or folder; nothing if absent."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Flush a file, or every file and folder under a folder (the folders after their contents)."""
    path = Path(path)
    if not path.is_dir():
        with path.open("rb+") as f:
            os.fsync(f.fileno())
        return
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                with open(os.path.join(folder, name), "rb+") as f:
                    os.fsync(f.fileno())
        fsync_dir(folder)


def recover(target: str | Path) -> None:
    """Finish or undo an interrupted write of `target` (a marker named after it commits every target it lists)."""
    target = Path(target)
    marker = target.with_name(target.name + COMMIT)
    if marker.exists():
        _apply(marker)
    remove(staging(target))
    old = _old(target)
    if os.path.lexists(old):
        if os.path.lexists(target):
            remove(old)
        else:
            old.rename(target)


def recover_folder(folder: str | Path) -> None:
    """`recover` every interrupted write in `folder` (its markers first, then stray `.tmp`/`.old`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for marker in sorted(folder.glob(f"*{COMMIT}")):
        recover(marker.with_name(marker.name[: -len(COMMIT)]))
    for stray in sorted(folder.glob(f"*{TMP}")) + sorted(folder.glob(f"*{OLD}")):
        recover(stray.with_name(stray.name[: -len(stray.suffix)]))


def commit(targets: list[Path], marker: Path) -> None:
    """Swap every staged `targets` in as one transaction recorded in `marker` (see the module doc)."""
    for target in targets:
        fsync_tree(staging(target))
    marker.write_text(json.dumps([t.name for t in targets]))
    fsync_tree(marker)
    fsync_dir(marker.parent)
    _apply(marker)


def _apply(marker: Path) -> None:
    """Roll the transaction of `marker` forward; idempotent, so a crash inside it is finished by the next call."""
    folder = marker.parent
    targets = [folder / name for name in json.loads(marker.read_text() or "[]")]
    for target in targets:
        tmp, old = staging(target), _old(target)
        if not os.path.lexists(tmp):
            continue  # already swapped in
        if os.path.lexists(target):
            remove(old)
            target.rename(old)
        tmp.rename(target)
    fsync_dir(folder)
    for target in targets:
        remove(_old(target))
    marker.unlink()
    fsync_dir(folder)


@contextlib.contextmanager
def transaction(marker_of: str | Path) -> Iterator[list[Path]]:
    """Commit every `write_folder` of the block, and the targets appended to the yielded list, together.

    The marker is `<marker_of>.commit`; targets must be staged (`staging(target)`) when the block ends.
    Nothing is committed when the block raises.
    """
    marker_of = Path(marker_of)
    staged: list[Path] = []
    token = _staged.set(staged)
    try:
        yield staged
    finally:
        _staged.reset(token)
    commit(staged, marker_of.with_name(marker_of.name + COMMIT))


def write_folder(
    folder: str | Path, write: Callable[[Path], None], config_file: str | Path | None = None
) -> Path:
    """Write `folder` crash-safely: `write(tmp)` fills a staging folder, which then replaces `folder`.

    A stale staging folder or `.old` copy from a crashed run is recovered first. Inside a `transaction`
    the folder is committed with the transaction's other targets.

    Args:
        folder: the folder to write.
        write: fills the folder it is given (which may not exist yet).
        config_file: the run's resolved config, copied in as `lit_swift_config.yaml` when it exists.
    """
    folder = Path(folder)
    recover(folder)
    tmp = staging(folder)
    write(tmp)
    if config_file is not None and Path(config_file).exists():
        shutil.copy(config_file, tmp / "lit_swift_config.yaml")
    staged = _staged.get()
    if staged is not None:
        staged.append(folder)
    else:
        commit([folder], folder.with_name(folder.name + COMMIT))
    return folder
