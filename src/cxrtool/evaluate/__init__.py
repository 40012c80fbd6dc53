"""Evaluation on the model core: retrieval metrics for label queries."""

from cxrtool.evaluate.retrieval import auroc, label_query_report, precision_at_k

__all__ = ["auroc", "label_query_report", "precision_at_k"]
