"""Evaluation: zero-shot classification, bootstrap CIs, retrieval, linear probe, subgroups, outputs.

Entry points: ``classify_images`` (cxrtool classify) and ``evaluate_model`` + ``write_outputs``
(cxrtool evaluate); the metric modules underneath are usable on their own.
"""

from cxrtool.evaluate.classification import auroc
from cxrtool.evaluate.classify import Classification, classify_images
from cxrtool.evaluate.eval_set import EvalSet, embed_eval_set, eval_set_from_manifest, eval_set_from_shards
from cxrtool.evaluate.outputs import to_markdown, write_outputs
from cxrtool.evaluate.retrieval import label_query_report, precision_at_k
from cxrtool.evaluate.run import EvalOptions, EvalResult, evaluate_model
from cxrtool.evaluate.zero_shot import LabelPromptSet, ZeroShotClassifier, label_prompt_sets

__all__ = ["Classification", "EvalOptions", "EvalResult", "EvalSet", "LabelPromptSet", "ZeroShotClassifier",
           "auroc", "classify_images", "embed_eval_set", "eval_set_from_manifest", "eval_set_from_shards",
           "evaluate_model", "label_prompt_sets", "label_query_report", "precision_at_k", "to_markdown",
           "write_outputs"]
