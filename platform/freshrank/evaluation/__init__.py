"""Model quality: click metrics (AUC, log loss) and ranking metrics (Recall@k, MRR@k, NDCG@k,
GAUC) over scored rows, pure numpy."""

from freshrank.evaluation.classification import log_loss, roc_auc
from freshrank.evaluation.ranking import (
    gauc,
    hits_at_k,
    mrr_at_k,
    ndcg_at_k,
    ranking_report,
    recall_at_k,
)

__all__ = [
    "gauc",
    "hits_at_k",
    "log_loss",
    "mrr_at_k",
    "ndcg_at_k",
    "ranking_report",
    "recall_at_k",
    "roc_auc",
]
