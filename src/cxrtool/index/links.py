"""Links from a hit back to its source: where to retrieve it, and (optionally) a viewer page.

``retrieve_url``: for a DICOMweb workspace the instance's WADO-RS URL (the source's base URL plus
the hit's path, ``studies/<study>/series/<series>/instances/<sop>``); for a folder, the file's
absolute path. ``viewer_url``: built from a template the user sets (``--viewer-url`` or
``$CXRTOOL_VIEWER_URL``), e.g. an OHIF viewer's
``http://pacs/viewer?StudyInstanceUIDs={study_uid}``, with ``{base}`` (the DICOMweb base URL, or
the folder), ``{study_uid}``, ``{series_uid}``, ``{sop_uid}`` and ``{path}``, each URL-quoted.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cxrtool.errors import CxrError
from cxrtool.io.dicomweb import is_dicomweb, parse_source
from cxrtool.io.discover import archive_path

VIEWER_ENV = "CXRTOOL_VIEWER_URL"
FIELDS = ("base", "study_uid", "series_uid", "sop_uid", "path")


def viewer_template(given: str | None) -> str | None:
    """The template from the option, else the environment; unknown placeholders are refused."""
    template = given or os.environ.get(VIEWER_ENV) or None
    if template:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = names - set(FIELDS)
        if unknown:
            raise CxrError(f"the viewer URL template names {', '.join(sorted(unknown))}",
                           f"use only {', '.join('{' + f + '}' for f in FIELDS)}")
    return template


class Links:
    """Fills ``retrieve_url`` and ``viewer_url`` of image hits from the workspace's recorded source."""

    def __init__(self, archive: str | None, template: str | None = None) -> None:
        self.archive = archive or ""
        self.remote = is_dicomweb(self.archive)
        self.base = parse_source(self.archive) if self.remote else self.archive
        self.template = template

    def retrieve_url(self, path: str) -> str:
        if not path:
            return ""
        if self.remote:
            return f"{self.base}/{path}"
        return str(archive_path(Path(self.base), path)) if self.base else path

    def viewer_url(self, hit: Any) -> str:
        if not self.template:
            return ""
        values = {"base": self.base, "study_uid": hit.study_key, "series_uid": hit.series_uid,
                  "sop_uid": hit.sop_uid, "path": hit.path}
        return self.template.format(**{k: quote(str(v or ""), safe="/:") for k, v in values.items()})

    def fill(self, hits: list[Any]) -> list[Any]:
        for hit in hits:
            hit.retrieve_url = self.retrieve_url(hit.path)
            hit.viewer_url = self.viewer_url(hit)
        return hits
