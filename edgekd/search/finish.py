"""The chosen candidate becomes the artifact: copied into the atomic writer's folder, its manifest given the
user's config and the search's record, its report rendered again. Nothing is written to the output
before the search is over; a failed search leaves the output as it was."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgekd.artifact import RESULTS_DIR, read_manifest, write_json
from edgekd.atomic import ArtifactWriter
from edgekd.config import CompileConfig
from edgekd.outputs import MANIFEST
from edgekd.report import write_report


def ship(candidate: Path, config: CompileConfig, section: str, record: dict[str, Any]) -> dict[str, Any]:
    """Writes ``candidate`` as ``config.output`` with ``record`` under ``section`` of its manifest; returns
    the manifest."""
    writer = ArtifactWriter(config.output, config.force, config.input_paths())
    with writer as work:
        shutil.copytree(
            candidate, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns(RESULTS_DIR)
        )  # the candidates' timing runs stay behind
        manifest = read_manifest(work)
        manifest[section] = record
        manifest["config"] = config.to_dict()
        write_json(work / MANIFEST, manifest)
        write_report(work)
    return manifest
