"""The one place the package starts other programs: the trainer (``python -m training.main``) and the package's
own commands (``python -m open_clip_simzss <command>``), each in a subprocess, exactly as a user types them, with
its output in a log file. The demo, the studies and the app's default model go through here; no library module
starts a process.
"""
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

LOG_TAIL_LINES = 5  # lines of a failed run's log quoted in the error


class LaunchError(RuntimeError):
    """A launched program failed; the message names the command and its log, and quotes the log's end."""


def run_logged(args: Sequence[str], log_path: Path):
    """``python <args>`` with the offline environment tests and the demo use, its output to ``log_path``;
    LaunchError when it fails."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log_path = Path(log_path)
    with open(log_path, "w") as log:
        result = subprocess.run([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-LOG_TAIL_LINES:]
        raise LaunchError(f"{' '.join(args[:3])} failed (see {log_path}):\n" + "\n".join(tail))


def train(flags: List[str], log_path: Path):
    """``python -m training.main FLAGS``: one training run."""
    run_logged(["-m", "training.main", *flags], log_path)


def command(name: str, flags: List[str], log_path: Path):
    """``python -m open_clip_simzss NAME FLAGS``: one of the package's commands (``preprocess``, ...)."""
    run_logged(["-m", "open_clip_simzss", name, *flags], log_path)
