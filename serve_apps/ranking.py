"""The ranking application for ``serve run`` / ``serve deploy``.

    serve run serve_apps.ranking:build_app registry=/abs/path/to/registry
    serve deploy serve_apps/ranking.yaml        # the declarative config next to this file

``args`` are ``RankingAppConfig``'s fields (unknown keys are refused). The YAML's ``user_config``
(``pinned_version``) reaches the running replicas' ``reconfigure()`` on every ``serve deploy``
that changes it, without a restart: that is how promotion is undone (pin an older version) and
redone (``pinned_version: null`` follows the registry's champion again).
"""

from __future__ import annotations

from typing import Any


def build_app(args: dict[str, Any]) -> Any:
    """Serve's application builder: validates ``args`` (see ``RankingAppConfig``)."""
    from freshrank.serving.app import RankingAppConfig, build_ranking_app

    return build_ranking_app(RankingAppConfig(**args))
