"""Running the installed console programs (nnU-Net's and ours) as separate processes, as a user does."""
import os
import subprocess
import sys
import time
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)  # the environment's console scripts, whether or not it is activated
TRAINERS_FOLDER = os.path.join(REPO, "trainers")


def nnunet_environment(root, **extra) -> dict:
    """The process environment with nnU-Net's three folders under ``root`` and our trainers findable."""
    return dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
                nnUNet_results=str(root / "results"), nnUNet_def_n_proc="1", nnUNet_extTrainer=TRAINERS_FOLDER,
                OMP_NUM_THREADS="2", **extra)


def run(args: Sequence, env: dict, timeout: float = 900) -> str:
    """Run a console program of the environment (``args[0]`` by name); fail the test with its output if it fails."""
    start = time.time()
    command = [os.path.join(BIN, str(args[0]))] + [str(a) for a in args[1:]]
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    print(f"{' '.join(map(str, args))}: {time.time() - start:.1f} s")
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc.stdout
