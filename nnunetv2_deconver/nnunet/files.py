"""Reading and writing the JSON files nnU-Net keeps (plans, dataset.json, summaries)."""
import json
import os
import tempfile
from typing import Optional

__all__ = ["load_json", "write_json_atomic"]


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
