"""Reading and writing the JSON files nnU-Net keeps (plans, dataset.json, summaries)."""
import contextlib
import json
import os
import tempfile
from typing import Optional

__all__ = ["load_json", "write_json_atomic", "FileBusyError", "exclusive"]


class FileBusyError(RuntimeError):
    """Another process is writing the same file."""


def load_json(path: str) -> Optional[dict]:
    """The file's JSON, or None where the file does not exist. Raises ValueError naming the file where
    it is not valid JSON."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def write_json_atomic(obj, path: str, mode: int = 0o644) -> None:
    """Write JSON to a temporary file in the same folder, then rename: readers never see half a file.

    ``mode``: the file's permissions (default 0644, readable by all, as nnU-Net's own files on shared
    storage); a temporary file would otherwise keep its private 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=folder)
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(obj, f, indent=4, sort_keys=False)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def exclusive(path: str):
    """Hold an exclusive lock on ``path`` (a file about to be written) for the ``with`` block: the lock is
    ``.NAME.lock`` beside it, taken with ``flock`` (released by the kernel when the holder dies, so a killed
    run leaves no stale lock); a second holder gets FileBusyError at once instead of waiting. Where
    ``fcntl`` does not exist (Windows) there is no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder, name = os.path.split(os.path.abspath(path))
    lock_path = os.path.join(folder, f".{name}.lock")
    handle = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileBusyError(f"another process is writing {path} right now; wait for it to finish, "
                                f"then run again") from None
        try:
            yield
        finally:
            os.remove(lock_path)  # before the release: a later writer locks a new file, after this one's write
    finally:
        os.close(handle)
