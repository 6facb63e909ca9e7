"""Read one model of a Triton-layout repository: its spec and the versions it should serve.

Layout: ``<root>/<model>/config.pbtxt`` and ``<root>/<model>/<version>/`` where the version is a
directory named by a non-negative integer. The config's ``version_policy`` picks which of the
present versions to serve.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from worker.classification import LabelFileError, read_labels
from worker.model_config import (
    CONFIG_FILENAME,
    ModelConfigError,
    ModelSpec,
    load_model_config,
    parse_model_config,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """One model on disk: its validated spec, the versions present and those to serve."""

    name: str
    path: Path
    spec: ModelSpec
    available_versions: tuple[int, ...]
    versions: tuple[int, ...]

    def version_path(self, version: int | str) -> Path:
        """The directory holding one version's model file."""
        return self.path / str(int(version))


def scan_model(model_dir: str | Path, config_text: str | None = None) -> ModelSource:
    """Read one model directory; raises ``ModelConfigError`` when its config is unusable.
    ``config_text`` (a load's config override) replaces the directory's ``config.pbtxt``."""
    model_dir = Path(model_dir)
    if config_text is None:
        spec = load_model_config(model_dir)
    else:
        spec = parse_model_config(config_text, model_dir.name, "config override")
    try:
        labels = read_labels(model_dir, [(t.name, t.label_filename) for t in spec.config.output])
    except LabelFileError as exc:
        raise ModelConfigError(model_dir / CONFIG_FILENAME, str(exc)) from exc
    if labels:
        spec = dataclasses.replace(spec, labels=labels)
    available = sorted(int(p.name) for p in model_dir.iterdir() if _is_version_dir(p))
    selected = spec.version_policy.select(available)
    if spec.version_policy.kind == "specific":
        missing = sorted(set(spec.version_policy.versions) - set(available))
        if missing:
            logger.warning(
                "model %s: versions %s named by version_policy are absent", spec.name, missing
            )
    if not selected:
        logger.warning("model %s: no version directory to serve", spec.name)
    return ModelSource(
        name=spec.name,
        path=model_dir,
        spec=spec,
        available_versions=tuple(available),
        versions=tuple(selected),
    )


def _is_version_dir(path: Path) -> bool:
    # Canonical names only ("1", not "01" or non-ASCII digits): one version, one directory.
    name = path.name
    return path.is_dir() and name.isascii() and name.isdigit() and str(int(name)) == name
