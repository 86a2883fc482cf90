"""A training job: everything that decides the adapter, independent of where it runs.

The local launcher and the SageMaker entry point render the same job to an Axolotl config, each with
its own paths. ``fingerprint()`` names the job by what it trains (preset, effective settings, base
model, data content), so an interrupted run and its rerun share checkpoints and a changed recipe never
resumes from another recipe's checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraops.data.records import Format, vote_format
from loraops.files import file_md5
from loraops.train.params import TrainParams
from loraops.train.render import load_preset, render_axolotl_config
from loraops.train.settings import Settings, resolve_settings

# TrainParams fields that say where or how fast a job runs, not what it trains.
_PLACEMENT_FIELDS = {"launcher", "sagemaker", "local_usd_per_hour", "cpu_threads", "axolotl_launcher"}
SPEC_VERSION = 1


def replay_format(path: Path) -> Format:
    """chat when the replay file holds conversations (a real model's own answers), else alpaca."""
    with path.open(encoding="utf-8") as fh:
        first = fh.readline()
    return (vote_format(json.loads(first)) if first.strip() else None) or "alpaca"


@dataclass(frozen=True)
class TrainJob:
    """One adapter to train: the preset, params.yaml's `train:`, the base model and the data files."""

    preset: dict[str, Any]
    preset_name: str
    params: TrainParams
    base_model: str  # local directory or Hugging Face id
    data_format: Format
    train_file: Path
    val_file: Path | None = None
    replay_file: Path | None = None

    @classmethod
    def build(
        cls,
        workspace_root: Path,
        params: TrainParams,
        *,
        base_model: str,
        data_format: Format,
        train_file: Path,
        val_file: Path | None = None,
        replay_file: Path | None = None,
    ) -> TrainJob:
        """The job of params.yaml's preset (read from the workspace) on these files."""
        preset = load_preset(workspace_root / params.axolotl_config)
        return cls(
            preset, params.axolotl_config, params, base_model, data_format, train_file, val_file, replay_file
        )

    @property
    def settings(self) -> Settings:
        return resolve_settings(self.preset, self.params, self.preset_name)

    def data_files(self) -> dict[str, Path]:
        files = {"train": self.train_file}
        if self.val_file is not None:
            files["val"] = self.val_file
        if self.replay_file is not None:
            files["replay"] = self.replay_file
        return files

    def fingerprint(self) -> str:
        """Content hash of what decides the adapter (not where it runs or with how many threads)."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> str:  # the data files are hashed once per job
        payload = {
            "preset": self.preset,
            "params": self.params.model_dump(mode="json", exclude=_PLACEMENT_FIELDS),
            "settings": self.settings.values,
            "base_model": self.base_model,
            "format": self.data_format,
            "data": {name: file_md5(path) for name, path in self.data_files().items()},
        }
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def render(
        self,
        *,
        output_dir: Path,
        prepared_path: Path,
        base_model: str | None = None,
        files: dict[str, Path] | None = None,
    ) -> dict[str, Any]:
        """The Axolotl config with this machine's paths (``files`` replaces the data paths by name)."""
        paths = {**self.data_files(), **(files or {})}
        return render_axolotl_config(
            self.preset,
            self.params,
            base_model=base_model or self.base_model,
            train_file=paths["train"],
            val_file=paths.get("val"),
            replay_file=paths.get("replay"),
            replay_format=replay_format(paths["replay"]) if "replay" in paths else "alpaca",
            output_dir=output_dir,
            prepared_path=prepared_path,
            data_format=self.data_format,
            settings=resolve_settings(self.preset, self.params, self.preset_name),
        )

    def to_spec(self) -> dict[str, Any]:
        """JSON for a job that runs elsewhere: file names only, params as params.yaml set them."""
        return {
            "version": SPEC_VERSION,
            "preset": self.preset,
            "preset_name": self.preset_name,
            "params": self.params.model_dump(mode="json", exclude_unset=True, exclude={"sagemaker"}),
            "base_model": self.base_model,
            "data_format": self.data_format,
            "files": {name: path.name for name, path in self.data_files().items()},
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_spec(
        cls, spec: dict[str, Any], files: dict[str, Path], base_model: str | None = None
    ) -> TrainJob:
        """The job a spec describes, with the data at ``files`` (by name: train, val, replay)."""
        params_json = dict(spec["params"])
        params_json.pop("launcher", None)  # inside the job, training is local
        params = TrainParams.model_validate(params_json)
        return cls(
            preset=spec["preset"],
            preset_name=spec.get("preset_name", "preset"),
            params=params,
            base_model=base_model or spec["base_model"],
            data_format=spec["data_format"],
            train_file=files["train"],
            val_file=files.get("val"),
            replay_file=files.get("replay"),
        )
