"""What an interrupted evaluation keeps, so that a rerun starts where it stopped (docs/evaluation.md,
"Interrupted runs").

Beside ``--output results.json`` lives ``results.json.partial/``:

- ``<dataset>/<part>/shard-<k>.safetensors``: the confusion counts (int64) of image shard k of a dataset's
  evaluated images (part ``eval``) or of its background-selection images (part ``select``), one file per
  finished shard, written atomically by the rank that ran it;
- ``<dataset>.json``: a dataset's finished result (its shard files are then removed).

Each file records the settings that produced it (the ``fingerprint``: model, checkpoint, protocol, dataset,
shard size, ...; not the number of processes). A rerun with the same settings adds the stored counts instead
of recomputing those shards (integer counts: the result is identical to an uninterrupted run, whatever the
number of processes of either run); a rerun with other settings is refused in one line naming the
difference. The final JSON is written only when every dataset is finished, then the folder is removed: a
partial result is never presented as final. Nothing here is read with pickle (safetensors and JSON).
"""
import json
import shutil
import sys
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from ..atomic import write_file, write_json

PathLike = Union[str, Path]


class StateError(ValueError):
    """Stored partial results were made with other settings; the message names the first difference."""


def state_folder(output: PathLike) -> Path:
    """The partial-state folder of an ``--output`` file."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def _difference(stored: Dict, current: Dict) -> str:
    for key in sorted(set(stored) | set(current)):
        if stored.get(key) != current.get(key):
            return f"{key}: {stored.get(key)!r} then, {current.get(key)!r} now"
    return "none"


class PartialState:
    """The partial results of one evaluation run in ``folder`` (see the module docstring).

    ``fingerprint``: the settings of one dataset, a JSON-able dict, given per call.
    """

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)

    def _check(self, path: Path, stored: Dict, fingerprint: Dict):
        if stored != fingerprint:
            raise StateError(f"the partial results in {self.folder} were made with other settings "
                             f"({_difference(stored, fingerprint)}); rerun with the same flags, or remove "
                             f"{self.folder} to start over")

    def finished_shards(self, dataset: str, part: str, fingerprint: Dict) -> Dict[int, torch.Tensor]:
        """{shard index: confusion counts} of the shards of ``part`` already finished."""
        from safetensors import safe_open

        folder = self.folder / dataset / part
        shards = {}
        for path in sorted(folder.glob("shard-*.safetensors")) if folder.is_dir() else []:
            try:
                with safe_open(str(path), framework="pt") as f:
                    stored = json.loads(f.metadata()["fingerprint"])
                    counts = f.get_tensor("counts")
            except Exception as e:  # a damaged file: recompute that shard
                print(f"warning: ignoring unreadable partial result {path} ({type(e).__name__}); its images are "
                      "evaluated again", file=sys.stderr)
                continue
            self._check(path, stored, fingerprint)
            shards[int(path.stem.split("-")[1])] = counts
        return shards

    def save_shard(self, dataset: str, part: str, fingerprint: Dict, shard: int, counts: torch.Tensor):
        from safetensors.torch import save

        folder = self.folder / dataset / part
        folder.mkdir(parents=True, exist_ok=True)
        payload = save({"counts": counts.contiguous().cpu()}, metadata={"fingerprint": json.dumps(fingerprint)})
        write_file(folder / f"shard-{shard:05d}.safetensors", lambda handle: handle.write(payload))

    def result(self, dataset: str, fingerprint: Dict) -> Optional[Dict]:
        """A finished dataset's result, or None."""
        path = self.folder / f"{dataset}.json"
        if not path.is_file():
            return None
        stored = json.loads(path.read_text(encoding="utf-8"))
        self._check(path, stored["fingerprint"], fingerprint)
        return stored["result"]

    def save_result(self, dataset: str, fingerprint: Dict, result: Dict):
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / f"{dataset}.json", {"fingerprint": fingerprint, "result": result}, indent=1)
        shutil.rmtree(self.folder / dataset, ignore_errors=True)

    def exists(self) -> bool:
        return self.folder.is_dir() and any(self.folder.iterdir())

    def remove(self):
        shutil.rmtree(self.folder, ignore_errors=True)
