"""Evaluation: zero-shot classification, bootstrap CIs, retrieval, linear probe, subgroups, outputs.

Entry points: ``run_classification`` (cxrtool classify) and ``run_evaluation`` (cxrtool evaluate and
the experiment scripts: input -> vectors -> ``evaluate_model`` -> ``write_outputs``); the metric
modules underneath are usable on their own.
"""

from cxrtool.evaluate.classification import auroc
from cxrtool.evaluate.classify import Classification, classify_images, run_classification
from cxrtool.evaluate.eval_set import EvalSet, embed_eval_set, eval_set_from_manifest, eval_set_from_shards
from cxrtool.evaluate.outputs import to_markdown, write_outputs
from cxrtool.evaluate.pipeline import Evaluation, load_eval_set, run_evaluation
from cxrtool.evaluate.retrieval import label_query_report, precision_at_k
from cxrtool.evaluate.run import EvalOptions, EvalResult, evaluate_model
from cxrtool.evaluate.zero_shot import LabelPromptSet, ZeroShotClassifier, label_prompt_sets

__all__ = ["Classification", "EvalOptions", "EvalResult", "EvalSet", "Evaluation", "LabelPromptSet",
           "ZeroShotClassifier", "auroc", "classify_images", "embed_eval_set", "eval_set_from_manifest",
           "eval_set_from_shards", "evaluate_model", "label_prompt_sets", "label_query_report", "load_eval_set",
           "precision_at_k", "run_classification", "run_evaluation", "to_markdown", "write_outputs"]
