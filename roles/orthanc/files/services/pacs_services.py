"""pacs-libre's Python services inside Orthanc: the loader.

Orthanc's Python plugin runs a single script (``PythonScript`` in orthanc.json):
this one. It imports each service that orthanc.json lists under
``PacsLibre.Services`` from this folder and hands it the ``orthanc`` module and
its settings. A service is a module with ``setup(orthanc, settings)``.
Installed by the orthanc role; each service is tested in tests/test_orthanc_*.py.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import orthanc  # provided by Orthanc's Python plugin

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def load() -> None:
    settings = json.loads(orthanc.GetConfiguration()).get("PacsLibre", {})
    for name in settings.get("Services", []):
        try:
            module = importlib.import_module(name)
            module.setup(orthanc, settings)
        except Exception as exc:  # one broken service must not stop the archive
            orthanc.LogError(f"pacs-libre: service {name} did not start: {exc!r}")
        else:
            orthanc.LogWarning(f"pacs-libre: service {name} started")


load()
