"""Putting a finished report folder in place as a whole.

The report is written into a staging folder beside ``-o`` (``.NAME.staging-PID-XXXX``), then put in place in
one step: renamed to ``-o`` where there is no report yet, else exchanged with the old report folder
(``renameat2(RENAME_EXCHANGE)``, Linux) and the old one, now in the staging folder's place, removed. A reader
or a kill therefore finds the old report or the new one, never a mix. Where the exchange is not available
(another OS or a file system without it) the old folder is renamed aside first: a kill between the two
renames then leaves no ``-o`` folder (the old report is in ``.NAME.old-PID-XXXX``), still never a mix.
Staging and old folders a killed run left behind (their process is gone) are removed by the next run.
"""
import ctypes
import errno
import os
import re
import shutil
import tempfile
from typing import Iterable

__all__ = ["staging_folder", "publish", "remove_leftovers", "foreign_entries"]

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:staging|old)-(?P<pid>\d+)-[^.]+$")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def staging_folder(output: str) -> str:
    """A new, empty staging folder beside ``output`` (same file system, so the final rename is atomic)."""
    parent, name = os.path.split(os.path.abspath(output))
    folder = tempfile.mkdtemp(prefix=f".{name}.staging-{os.getpid()}-", dir=parent)
    # the report folder gets the old one's permissions, or a new folder's (mkdtemp's are private, 0700)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, os.stat(output).st_mode & 0o7777 if os.path.isdir(output) else 0o777 & ~umask)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # another user's process, or no way to tell: keep its folder
    return True


def remove_leftovers(output: str) -> None:
    """Remove the staging and old folders of ``output`` whose process is gone (a killed run's)."""
    parent, name = os.path.split(os.path.abspath(output))
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        match = _LEFTOVER.match(entry)
        if match and match["name"] == name and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def foreign_entries(output: str, report_names: Iterable[str]) -> list:
    """Entries of the existing folder ``output`` that are not a report's files (sorted)."""
    if not os.path.isdir(output):
        return []
    return sorted(set(os.listdir(output)) - set(report_names))


def _exchange(a: str, b: str) -> bool:
    """Swap the paths ``a`` and ``b`` atomically; False where the system cannot (nothing moved then)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not Linux (glibc 2.28+)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # not on this file system or kernel
    raise OSError(code, os.strerror(code), b)


def publish(staging: str, output: str) -> None:
    """Put the finished report folder ``staging`` at ``output`` as a whole (see the module's docstring)."""
    output = os.path.abspath(output)
    if not os.path.exists(output):
        try:
            os.rename(staging, output)
            return
        except OSError:
            if not os.path.isdir(output):  # not a race with another run creating it: a real error
                raise
    if _exchange(staging, output):
        shutil.rmtree(staging, ignore_errors=True)  # it holds the old report now
        return
    parent, name = os.path.split(output)
    old = tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=parent)
    os.rmdir(old)
    os.rename(output, old)
    os.rename(staging, output)
    shutil.rmtree(old, ignore_errors=True)
