"""The promotion gate: a challenger replaces the champion only if it is not worse on fresh rows.

Both models are scored on the same fresh rows, rows neither has trained on (AUC and log loss
through ``freshrank.evaluation``). :func:`evaluate_gate` is the pure rule, in the manner of
TFX's change thresholds: per metric a direction and an absolute and/or relative tolerance on
how much worse the challenger may be; where both are set, both must hold. A challenger whose
metrics are not finite is never promoted; nor is one judged on fewer than ``min_rows`` rows.

:class:`Promoter` does the work around the rule: loads both versions (a corrupt challenger is
rejected, never loaded), scores them, decides, then writes the champion pointer (compare and
set: if someone else moved the champion meanwhile, nothing is overwritten) or logs the
rejection with its reasons; every decision counts in ``freshrank_promotions_total{outcome}``.

:class:`PromotionPolicy` is what the trainer promotes and when (:class:`PromotionMode`): the
trainer checkpoints a version, asks the policy, and, under the gate, hands it the metrics of
the next window's rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from freshrank.model.scoring import DEFAULT_CHUNK_ROWS, score_logits
from freshrank.registry.checkpoint import ServingModel, load_serving_model
from freshrank.registry.store import ChampionChanged, CorruptVersion, Registry, VersionInfo

if TYPE_CHECKING:
    from freshrank.core.telemetry import Telemetry

ROWS = "rows"
"""Key of the row count in a metrics mapping given to :func:`evaluate_gate`."""


class Direction(Enum):
    """Which way a metric improves."""

    HIGHER_IS_BETTER = "higher_is_better"
    LOWER_IS_BETTER = "lower_is_better"


@dataclass(frozen=True)
class MetricTolerance:
    """How much worse than the champion the challenger may be on one metric.

    ``absolute`` is in the metric's units, ``relative`` a fraction of the champion's value
    (0.01 = 1 %). ``None`` switches that check off; at least one must be set.

    >>> MetricTolerance("auc", Direction.HIGHER_IS_BETTER, absolute=-0.1)
    Traceback (most recent call last):
    ...
    ValueError: auc: absolute tolerance must be a finite number >= 0, got -0.1
    """

    metric: str
    direction: Direction
    absolute: float | None = None
    relative: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.direction, Direction):
            raise ValueError(
                f"{self.metric}: direction must be a Direction (e.g. Direction.HIGHER_IS_BETTER), "
                f"got {self.direction!r}"
            )
        for name in ("absolute", "relative"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(float(value)) or value < 0):
                raise ValueError(
                    f"{self.metric}: {name} tolerance must be a finite number >= 0, got {value}"
                )
        if self.absolute is None and self.relative is None:
            raise ValueError(f"{self.metric}: set an absolute or a relative tolerance (or both)")

    def worsening(self, challenger: float, champion: float) -> float:
        """How much worse the challenger is (negative when it is better).

        >>> MetricTolerance("auc", Direction.HIGHER_IS_BETTER, 0.01).worsening(0.70, 0.72)
        0.02
        """
        delta = champion - challenger
        if self.direction is Direction.LOWER_IS_BETTER:
            delta = -delta
        return round(delta, 12)


DEFAULT_TOLERANCES: tuple[MetricTolerance, ...] = (
    MetricTolerance("auc", Direction.HIGHER_IS_BETTER, absolute=0.005, relative=0.01),
    MetricTolerance("logloss", Direction.LOWER_IS_BETTER, absolute=0.01, relative=0.02),
)
"""AUC may drop at most 0.005 and 1 %; log loss may rise at most 0.01 and 2 %."""


@dataclass(frozen=True)
class GateConfig:
    """The promotion rule's settings.

    >>> GateConfig(min_rows=0)
    Traceback (most recent call last):
    ...
    ValueError: min_rows must be an int >= 1, got 0
    >>> GateConfig(tolerances=(DEFAULT_TOLERANCES[0], DEFAULT_TOLERANCES[0]))
    Traceback (most recent call last):
    ...
    ValueError: tolerances name metric 'auc' twice
    """

    tolerances: tuple[MetricTolerance, ...] = DEFAULT_TOLERANCES
    min_rows: int = 200
    """Fewest fresh rows a comparison with the champion may rest on."""

    def __post_init__(self) -> None:
        if not isinstance(self.min_rows, int) or isinstance(self.min_rows, bool):
            raise ValueError(f"min_rows must be an int >= 1, got {self.min_rows!r}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be an int >= 1, got {self.min_rows}")
        object.__setattr__(self, "tolerances", tuple(self.tolerances))
        if not self.tolerances:
            raise ValueError("tolerances is empty: give at least one MetricTolerance")
        names = [t.metric for t in self.tolerances]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"tolerances name metric {name!r} twice")


@dataclass(frozen=True)
class GateDecision:
    """Whether to promote, and why (one line per check, failures first)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)


def evaluate_gate(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    config: GateConfig,
) -> GateDecision:
    """Decide whether ``challenger`` may replace ``champion`` (metrics on the same fresh rows).

    Each mapping holds metric values by name and ``rows``, the number of rows scored. A metric
    missing (or None) on either side is not compared; a challenger metric that is NaN or
    infinite rejects it. With no champion, a challenger with finite metrics is promoted.

    >>> cfg = GateConfig(min_rows=100)
    >>> champ = {"auc": 0.700, "logloss": 0.400, "rows": 500}
    >>> evaluate_gate({"auc": 0.698, "logloss": 0.401, "rows": 500}, champ, cfg).promote
    True
    >>> d = evaluate_gate({"auc": 0.690, "logloss": 0.401, "rows": 500}, champ, cfg)
    >>> d.promote, d.reasons[0]
    (False, 'auc 0.7000 -> 0.6900: worse by 0.0100, more than the absolute tolerance 0.005')
    >>> evaluate_gate({"auc": float("nan"), "rows": 500}, champ, cfg).reasons
    ['challenger auc is nan (not finite)']
    >>> evaluate_gate({"auc": 0.71, "logloss": 0.3, "rows": 50}, champ, cfg).reasons
    ['only 50 fresh rows; the gate needs at least 100 to compare with the champion']
    >>> evaluate_gate({"auc": 0.6, "logloss": 0.5, "rows": 50}, None, cfg)
    GateDecision(promote=True, reasons=['no champion yet: promoted on finite metrics'])
    """
    failures: list[str] = []
    notes: list[str] = []
    for name, value in challenger.items():
        if value is not None and isinstance(value, int | float) and not math.isfinite(value):
            failures.append(f"challenger {name} is {value} (not finite)")
    if failures:
        return GateDecision(False, failures)
    if champion is None:
        return GateDecision(True, ["no champion yet: promoted on finite metrics"])
    rows = challenger.get(ROWS)
    if rows is None or rows < config.min_rows:
        return GateDecision(
            False,
            [
                f"only {0 if rows is None else int(rows)} fresh rows; the gate needs at least "
                f"{config.min_rows} to compare with the champion"
            ],
        )
    compared = 0
    for tol in config.tolerances:
        new, old = challenger.get(tol.metric), champion.get(tol.metric)
        if new is None or old is None:
            side = "challenger" if new is None else "champion"
            notes.append(f"{tol.metric} not compared: not measured for the {side}")
            continue
        if not math.isfinite(old):
            notes.append(f"{tol.metric} not compared: champion's value is {old}")
            continue
        compared += 1
        worse = tol.worsening(new, old)
        head = f"{tol.metric} {old:.4f} -> {new:.4f}"
        bad = False
        if tol.absolute is not None and worse > tol.absolute:
            failures.append(
                f"{head}: worse by {worse:.4f}, more than the absolute tolerance {tol.absolute:g}"
            )
            bad = True
        if tol.relative is not None and worse > tol.relative * abs(old):
            failures.append(
                f"{head}: worse by {worse / abs(old) if old else math.inf:.2%}, more than the "
                f"relative tolerance {tol.relative:.2%}"
            )
            bad = True
        if not bad:
            verdict = "better" if worse < 0 else "within tolerance"
            notes.append(f"{head}: {verdict}")
    if compared == 0:
        failures.append("no metric could be compared with the champion")
    return GateDecision(not failures, failures + notes)


# ---------------------------------------------------------------------------------------------
# Scoring a model on fresh rows


def score_rows(
    served: ServingModel, rows: Mapping[str, np.ndarray], chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> dict[str, float | None]:
    """AUC, log loss and CTR of ``served`` on encoded ``rows`` (click logits, with position).

    AUC is None when the rows hold only one class (it is undefined there).
    """
    labels = np.asarray(rows["label"], dtype=np.float64)
    logits = score_logits(served.model, rows, chunk_rows=chunk_rows)
    return metrics_from_logits(labels, logits)


def metrics_from_logits(labels: np.ndarray, logits: np.ndarray) -> dict[str, float | None]:
    """The gate's metrics (rows, AUC, log loss, CTR) of click ``logits`` against ``labels``.

    AUC is None when the rows hold only one class (it is undefined there).

    >>> m = metrics_from_logits(np.array([1.0, 0.0]), np.array([2.0, -2.0]))
    >>> m["rows"], m["auc"], round(m["logloss"], 4), m["ctr"]
    (2.0, 1.0, 0.1269, 0.5)
    """
    from freshrank.evaluation.classification import log_loss, roc_auc

    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    n = len(labels)
    auc = roc_auc(labels, logits) if n else float("nan")
    return {
        ROWS: float(n),
        "auc": None if math.isnan(auc) else auc,
        "logloss": log_loss(labels, logits) if n else None,
        "ctr": float(labels.mean()) if n else None,
    }


# ---------------------------------------------------------------------------------------------
# The promoter


class PromotionOutcome(Enum):
    """What the gate did with a challenger (the ``outcome`` tag of the promotions metric)."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"
    ERROR = "error"


@dataclass(frozen=True)
class PromotionResult:
    """One gate decision, as logged."""

    version: int
    outcome: PromotionOutcome
    previous_champion: int | None
    reasons: tuple[str, ...]
    challenger_metrics: dict[str, Any] | None = None
    champion_metrics: dict[str, Any] | None = None


class Promoter:
    """Promote or reject challenger versions of ``registry`` on fresh rows.

    ``loader(version) -> ServingModel`` is injected (default: verify and load from the
    registry; tests give a fake). ``metrics`` defaults to ``default_telemetry()``.
    """

    def __init__(
        self,
        registry: Registry,
        config: GateConfig | None = None,
        loader: Callable[[int], ServingModel] | None = None,
        metrics: Telemetry | None = None,
    ) -> None:
        self.registry = registry
        self.config = config if config is not None else GateConfig()
        self._loader = loader or (lambda v: load_serving_model(registry, v))
        self._metrics = metrics
        self._champion_cache: tuple[int, ServingModel] | None = None

    @property
    def metrics(self) -> Telemetry:
        """Where decisions are counted."""
        if self._metrics is None:
            from freshrank.core.telemetry import default_telemetry

            self._metrics = default_telemetry()
        return self._metrics

    def consider(self, version: int, fresh_rows: Mapping[str, np.ndarray]) -> PromotionResult:
        """Score ``version`` and the champion on ``fresh_rows`` (``encode()`` output that
        neither trained on); promote ``version`` or log why not. Never raises for a bad
        challenger or a failed evaluation: the result says what happened."""
        champion = self.registry.champion_version()
        if version == champion:
            raise ValueError(f"v{version} is already the champion")
        try:
            challenger_model = self._loader(version)
        except (CorruptVersion, KeyError) as exc:
            reason = f"v{version} cannot be loaded: {type(exc).__name__}: {exc}"
            return self._finish(version, PromotionOutcome.REJECTED, champion, [reason])
        try:
            new = score_rows(challenger_model, fresh_rows)
            old, notes = self._champion_metrics(champion, fresh_rows)
        except Exception as exc:  # the evaluation itself failed: the champion stays
            reason = f"evaluation failed: {type(exc).__name__}: {exc}"
            return self._finish(version, PromotionOutcome.ERROR, champion, [reason])
        return self.decide(version, new, old, champion, notes)

    def decide(
        self,
        version: int,
        new: Mapping[str, Any],
        old: Mapping[str, Any] | None,
        champion: int | None,
        notes: Sequence[str] = (),
    ) -> PromotionResult:
        """Apply the gate to metrics already measured on the same fresh rows (``new`` for
        ``version``, ``old`` for ``champion``, the champion they were measured against) and
        promote or log the rejection. The trainer calls this with the logits it computed
        while evaluating a window; :meth:`consider` scores the rows itself first."""
        new, old = dict(new), (dict(old) if old is not None else None)
        try:
            decision = evaluate_gate(new, old, self.config)
        except Exception as exc:
            reason = f"evaluation failed: {type(exc).__name__}: {exc}"
            return self._finish(version, PromotionOutcome.ERROR, champion, [reason])
        reasons = decision.reasons + list(notes)
        if not decision.promote:
            return self._finish(version, PromotionOutcome.REJECTED, champion, reasons, new, old)
        pinned = self.registry.pinned_version()
        if pinned is not None:
            reasons.append(f"serving is pinned to v{pinned}; this champion serves after unpin")
        try:
            self.registry.set_champion(
                version,
                reason="; ".join(reasons),
                expected=champion,
                details=_details(new, old),
            )
        except (ChampionChanged, CorruptVersion, KeyError) as exc:
            reason = f"pointer not written: {type(exc).__name__}: {exc}"
            return self._finish(version, PromotionOutcome.ERROR, champion, [*reasons, reason])
        self._count(PromotionOutcome.PROMOTED)
        return PromotionResult(
            version, PromotionOutcome.PROMOTED, champion, tuple(reasons), new, old
        )

    def rollback(self, to_version: int | None = None, reason: str = "") -> int:
        """Roll the champion back (see ``Registry.rollback``) and count it."""
        target = self.registry.rollback(to_version, reason=reason)
        self._count(PromotionOutcome.ROLLED_BACK)
        return target

    # ----- helpers ----------------------------------------------------------------------------
    def _champion_metrics(
        self, champion: int | None, rows: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, float | None] | None, list[str]]:
        if champion is None:
            return None, []
        cached = self._champion_cache
        if cached is not None and cached[0] == champion:
            model = cached[1]
        else:
            try:
                model = self._loader(champion)
            except (CorruptVersion, KeyError) as exc:
                note = f"champion v{champion} cannot be loaded ({exc}): judged without it"
                return None, [note]
            self._champion_cache = (champion, model)
        return score_rows(model, rows), []

    def _finish(
        self,
        version: int,
        outcome: PromotionOutcome,
        champion: int | None,
        reasons: list[str],
        new: dict[str, Any] | None = None,
        old: dict[str, Any] | None = None,
    ) -> PromotionResult:
        self.registry.log_event(
            outcome.value,
            to_version=version,
            from_version=champion,
            reason="; ".join(reasons),
            **_details(new, old),
        )
        self._count(outcome)
        return PromotionResult(version, outcome, champion, tuple(reasons), new, old)

    def _count(self, outcome: PromotionOutcome) -> None:
        try:
            self.metrics.inc("freshrank_promotions_total", tags={"outcome": outcome.value})
        except Exception:  # metrics must never change a promotion decision
            pass


def _details(new: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if new is not None:
        out["challenger_metrics"] = dict(new)
    if old is not None:
        out["champion_metrics"] = dict(old)
    return out


# ---------------------------------------------------------------------------------------------
# What the trainer promotes, and when


def metrics_are_finite(metrics: Mapping[str, Any]) -> bool:
    """True when every numeric metric is finite (NaN or inf means the window went wrong).

    >>> metrics_are_finite({"auc": 0.7, "logloss": 0.4})
    True
    >>> metrics_are_finite({"auc": float("nan")})
    False
    """
    for value in metrics.values():
        if isinstance(value, int | float) and not math.isfinite(float(value)):
            return False
    return True


def promote_if_finite(registry: Registry, info: VersionInfo) -> bool:
    """Make ``info`` champion when its window metrics are finite; log a rejection otherwise."""
    metrics = info.manifest.get("metrics", {})
    if metrics_are_finite(metrics) and "loss" in metrics:
        registry.set_champion(info.version, reason="window metrics finite")
        return True
    registry.log_event(
        "rejected",
        to_version=info.version,
        from_version=registry.champion_version(),
        reason=f"non-finite or missing window metrics: {metrics}",
    )
    return False


class PromotionMode(Enum):
    """How the trainer promotes the versions it writes (``TrainConfig.promotion``)."""

    GATE = "gate"
    """Judge each version against the champion on the next window's rows (fresh for both)."""
    FINITE = "finite"
    """Promote every version whose window metrics are finite, at once."""
    MANUAL = "manual"
    """Never promote (``freshrank registry promote`` does it)."""


class PromotionPolicy:
    """What the trainer promotes, and when.

    * ``MANUAL``: nothing. ``FINITE``: every version with finite window metrics, right after
      its checkpoint (:func:`promote_if_finite`; a non-finite one is logged as rejected).
    * ``GATE``: the first version (no champion yet) and a version with non-finite metrics are
      settled at once as under ``FINITE``. Any other version is *pending*: the trainer scores it
      and the champion on the next window's rows before training on them and calls
      :meth:`judge`. Judged on fewer than ``GateConfig.min_rows`` rows while a champion exists,
      it stays unjudged and the next version supersedes it.
    * After a restart the latest version is still pending if it is not the champion and no
      promotion-log entry names it (a version rolled back from is never judged again).
    """

    def __init__(self, mode: PromotionMode, promoter: Promoter) -> None:
        if not isinstance(mode, PromotionMode):
            raise ValueError(f"mode must be a PromotionMode, got {mode!r}")
        self.mode, self.promoter, self.registry = mode, promoter, promoter.registry

    @property
    def min_rows(self) -> int:
        """Fewest fresh rows a judgement against a champion rests on."""
        return self.promoter.config.min_rows

    def pending_after_restart(self, latest: int | None) -> int | None:
        """The version the gate still owes a judgement, when the trainer resumes at ``latest``."""
        if self.mode is not PromotionMode.GATE:
            return None
        if latest is None or latest == self.registry.champion_version():
            return None
        for event in self.registry.promotions():
            if latest in (event.get("to_version"), event.get("from_version")):
                return None
        return latest

    def after_checkpoint(self, info: VersionInfo) -> int | None:
        """Right after ``info`` is published: promote it now, or return its version when it
        waits for the gate (then pass it to :meth:`judge` with the next window's metrics)."""
        if self.mode is PromotionMode.MANUAL:
            return None
        first = self.registry.champion_version() is None
        finite = metrics_are_finite(info.manifest["metrics"])
        if self.mode is PromotionMode.GATE and not first and finite:
            return info.version
        promoted = promote_if_finite(self.registry, info)
        if promoted:
            self._observe_promotion(info.manifest.get("created_at"))
        outcome = PromotionOutcome.PROMOTED if promoted else PromotionOutcome.REJECTED
        self.promoter.metrics.inc("freshrank_promotions_total", tags={"outcome": outcome.value})
        return None

    def judgeable(self, new: Mapping[str, Any], champion: int | None) -> bool:
        """Whether metrics on these rows (``new``, the challenger's) are enough to judge on."""
        return champion is None or new.get(ROWS, 0) >= self.min_rows

    def judge(
        self,
        challenger: int,
        champion: int | None,
        new: Mapping[str, Any],
        old: Mapping[str, Any] | None,
        notes: Sequence[str] = (),
    ) -> PromotionResult:
        """Decide on pending ``challenger`` with metrics on the same fresh rows (``old``: the
        champion's, None when it could not be scored); check :meth:`judgeable` first."""
        result = self.promoter.decide(challenger, new, old, champion, notes)
        if result.outcome is PromotionOutcome.PROMOTED:
            self._observe_promotion(self.registry.get(challenger).manifest.get("created_at"))
        return result

    def _observe_promotion(self, created_at: float | None) -> None:
        if created_at is not None:
            self.promoter.metrics.observe(
                "freshrank_stage_latency_seconds",
                time.time() - float(created_at),
                tags={"stage": "checkpointed_to_promoted"},
            )
