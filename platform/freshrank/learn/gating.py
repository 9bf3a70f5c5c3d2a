"""The trainer's side of the promotion gate: the champion each rank scores fresh rows with, and
rank 0's judge that hands those scores to the promotion policy
(:class:`freshrank.registry.promotion.PromotionPolicy`, which decides what is promoted).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from freshrank.learn.step import score_rows
from freshrank.model.ranker import Ranker
from freshrank.registry.checkpoint import load_serving_model
from freshrank.registry.control import FencedOut, TrainerControl
from freshrank.registry.promotion import PromotionPolicy
from freshrank.registry.records import count_unreadable
from freshrank.registry.store import Registry

__all__ = ["ChampionScorer", "GateJudge", "say"]


class ChampionScorer:
    """Each rank's copy of the champion, for the gate: reloaded when the champion changes.

    A champion that cannot be loaded (``CHAMPION`` dangling, the version corrupt or unreadable)
    is never an exception out of the worker loop: :meth:`logits` returns why, with a warning in
    the trainer's log and ``freshrank_registry_unreadable_total{record="champion"}``, and the
    gate judges the challenger as if there were no champion. (A garbled ``CHAMPION`` file reads
    as no champion already: ``Registry.champion_version``.)
    """

    def __init__(self, registry: Registry, device: torch.device) -> None:
        self.registry = registry
        self.device = device
        self.version: int | None = None
        self.model: Ranker | None = None
        self._offered: tuple[int, Ranker] | None = None
        self._warned: str | None = None

    def offer(self, version: int, model: Ranker) -> None:
        """Keep a copy of ``model``, whose weights are ``version``'s: if the gate promotes it,
        the next window scores the champion with it instead of loading it from the registry."""
        copy_ = copy.deepcopy(model)
        copy_.eval()
        self._offered = (version, copy_)

    def logits(self, version: int, rows: Mapping[str, np.ndarray]) -> np.ndarray | str:
        """Click logits of the champion on ``rows``, or why it could not be scored."""
        if self.version != version and self._offered and self._offered[0] == version:
            self.version, self.model = self._offered
            self._offered = None
        if self.version != version:
            try:
                served = load_serving_model(self.registry, version)
            except Exception as exc:  # dangling, corrupt, unreadable: judged as no champion
                return self._unloadable(version, exc)
            self.model, self.version = served.model.to(self.device), version
        assert self.model is not None
        return score_rows(self.model, rows, self.device, use_position=True)

    def _unloadable(self, version: int, exc: Exception) -> str:
        """Why the champion cannot be scored; warned (once per version and error) and counted
        as an unreadable champion, the way the replicas report it. Never raises: the window
        goes on, judged as if there were no champion (the next promotion replaces it)."""
        if isinstance(exc, KeyError):
            why = f"CHAMPION names v{version}, which does not exist (dangling pointer)"
        else:
            why = f"champion v{version} cannot be loaded ({type(exc).__name__}: {exc})"
        if self._warned != why:
            self._warned = why
            say(f"warning: {why}; judged as no champion readable")
        count_unreadable("champion")
        return why


class GateJudge:
    """Rank 0's gate: after a window is scored and before anyone trains on it, the pending
    version (``challenger``) is judged against ``champion`` on those rows (fresh for both).

    Before deciding it checks that this trainer still owns the registry (``control``,
    ``epoch``); once fenced out, :attr:`fenced` is True and nothing more is decided.
    """

    def __init__(self, policy: PromotionPolicy, control: TrainerControl, epoch: str) -> None:
        self.policy, self.control, self.epoch = policy, control, epoch
        self.fenced = False

    def judge(
        self,
        challenger: int,
        champion: int | None,
        new: dict[str, Any],
        old: dict[str, Any] | None,
        notes: list[str],
    ) -> None:
        """Judge ``challenger`` on the gate's metrics of both models (``old`` None: the
        champion could not be scored, ``notes`` says why); log what happened."""
        if not self.policy.judgeable(new, champion):
            say(
                f"v{challenger} not judged: only "
                f"{int(new.get('rows', 0))} fresh rows (gate_min_rows {self.policy.min_rows}); "
                "the next version supersedes it",
            )
            return
        try:
            self.control.check(self.epoch)
        except FencedOut as exc:
            say(str(exc))
            self.fenced = True
            return
        result = self.policy.judge(challenger, champion, new, old, notes)
        say(
            f"gate: v{challenger} {result.outcome.value} "
            f"(champion v{champion}): {'; '.join(result.reasons)}",
        )


def say(message: str) -> None:
    """One line of the trainer's log. Written to stdout directly: Ray Train patches ``print``
    in its workers to also log through the root logger, which shows every line twice."""
    sys.stdout.write(f"[freshrank trainer] {message}\n")
    sys.stdout.flush()
