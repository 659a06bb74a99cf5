"""Files that are results are written atomically: a temporary file in the same folder, fsync, rename.

A reader (``--resume latest``, a rerun of ``simzss-preprocess``, a user) then sees the previous file or the
complete new one, never a partial one, whatever interrupts the write (a kill, a full disk). Temporary names
carry the process id, so two runs, or a run and the leftovers of a killed one, never write the same file.
A failed write says why in one line (``WriteError``): no space left, permission denied, ...
``check_output`` finds an unusable output location (unwritable, a file where a folder is wanted, ...) before
long work starts, so that a run does not fail only when its results are ready.
"""
import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

PathLike = Union[str, Path]

_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
            errno.EROFS: "read-only file system", errno.ENOENT: "its folder does not exist",
            errno.ENOTDIR: "a part of its path is a file, not a folder"}


class WriteError(OSError):
    """A result that could not be written; ``str`` is one line naming the file and the reason."""

    def __str__(self):
        return self.args[0] if len(self.args) == 1 else super().__str__()


def write_error(path: PathLike, error: OSError) -> WriteError:
    reason = _REASONS.get(error.errno) or error.strerror or str(error)
    return WriteError(f"cannot write {path}: {reason}")


def temporary_name(path: PathLike) -> Path:
    """``.<name>.<pid>.tmp`` next to ``path``: hidden, unique per process, never matched by ``*.pt``/``*.tar``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms and file systems cannot open a folder: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path to write ``path``'s content to (a file, or a folder that the body creates);
    renames it to ``path`` when the body returns, removes it when the body raises. A folder replaces an
    existing ``path`` folder (the old one is removed after the rename)."""
    path = Path(path)
    temporary = temporary_name(path)
    try:
        yield temporary
        if temporary.is_dir():
            for child in temporary.iterdir():
                if child.is_file():
                    with open(child, "rb+") as handle:
                        os.fsync(handle.fileno())
            old = None
            if path.is_dir():
                old = path.with_name(f".{path.name}.{os.getpid()}.old")
                os.replace(path, old)
            os.replace(temporary, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException as error:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        elif temporary.exists():
            temporary.unlink()
        if isinstance(error, OSError) and not isinstance(error, WriteError):
            raise write_error(path, error) from None
        if isinstance(error, WriteError) and str(temporary) in str(error):  # a file of the temporary folder:
            raise WriteError(str(error).replace(str(temporary), str(path))) from None  # name the user's path
        raise


def write_file(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``write(handle)`` fills a temporary file, which is fsynced and renamed."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def write_json(path: PathLike, payload, **dump_options) -> Path:
    """``json.dump`` of ``payload`` to ``path``, atomically; NaN and infinities are refused (strict JSON)."""
    text = json.dumps(payload, allow_nan=False, **dump_options)
    return write_file(path, lambda handle: handle.write(text.encode("utf-8")))


def save_image(image, path: PathLike, **options) -> Path:
    """``image.save`` of a PIL image, atomically; the format comes from the file name's extension."""
    from PIL import Image
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"cannot write {path}: unknown picture format {path.suffix!r}")
    return write_file(path, lambda handle: image.save(handle, format=image_format, **options))


def save_figure(figure, path: PathLike, **options) -> Path:
    """``figure.savefig`` of a matplotlib figure, atomically; the format comes from the file name's extension."""
    path = Path(path)
    return write_file(path, lambda handle: figure.savefig(handle, format=path.suffix[1:].lower() or None, **options))


def check_output(path: PathLike, folder: bool = False) -> Path:
    """Refuse an output location before any work (``WriteError``, one line): a folder where a file is wanted
    or the reverse, a file on the way to it, or a place where this process cannot create files (a temporary
    file is created and removed in the nearest existing folder). Creates nothing."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise WriteError(f"cannot write {path}: it is a folder, not a file")
    if path.exists() and not path.is_dir() and folder:
        raise WriteError(f"cannot write {path}: it is a file, not a folder")
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"cannot write {path}: {existing} is a file, not a folder")
    probe = temporary_name(existing / ".write-probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as error:
        raise write_error(path, error) from None
    return path


def _process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> int:
    """Remove the temporary files of ``path`` left by processes that died (a kill, a crash); those of live
    processes are left alone. Returns how many were removed."""
    path = Path(path)
    removed = 0
    for candidate in path.parent.glob(f".{path.name}.*.tmp"):
        pid = candidate.name[len(path.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_is_alive(int(pid)):
            if candidate.is_dir():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed += 1
    return removed
