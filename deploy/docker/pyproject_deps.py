"""Print the project's requirements from pyproject.toml, one per line, so an image can install
its dependencies in a layer of their own, before the source (a source edit then rebuilds only
the small last layer). ``python pyproject_deps.py pyproject.toml [EXTRA...]``"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs: list[str] = list(project.get("dependencies", []))
    for extra in extras:
        reqs.extend(project.get("optional-dependencies", {})[extra])
    return reqs


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2:])))
