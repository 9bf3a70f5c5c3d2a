"""The ranking application for ``serve run`` / ``serve deploy``.

    serve run serve_apps.ranking:build_app registry=/abs/path/to/registry

or with the YAML next to this file (``serve deploy serve_apps/ranking.yaml``).
"""

from __future__ import annotations

from typing import Any


def build_app(args: dict[str, Any]) -> Any:
    """Serve's application builder: validates ``args`` (see ``RankingAppConfig``)."""
    from freshrank.serving.app import RankingAppConfig, build_ranking_app

    return build_ranking_app(RankingAppConfig(**args))
