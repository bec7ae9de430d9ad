"""Evaluation metrics: loss, perplexity and accuracy from summed counts, classification scores
(F1, Matthews correlation) from a confusion matrix, Pearson's r from summed moments, and generation
scores (exact match, BLEU, ROUGE-L).

Counts are sums so that they add up exactly over batches, micro-batches and hosts.
"""

from __future__ import annotations

import math
import re

import numpy as np


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Loss, perplexity and accuracy from summed eval metrics (plus any other `*_sum` ratios)."""
    weight = max(float(sums["weight_sum"]), 1.0)
    loss = float(sums["loss_sum"]) / weight
    out = {"loss": loss, "tokens": int(sums["weight_sum"])}
    if "correct_sum" in sums:  # predictions of ids; a regression (squared error, no ids) has neither
        out["perplexity"] = math.exp(min(loss, 700.0))
        out["accuracy"] = float(sums["correct_sum"]) / weight
    for key, value in sums.items():  # family extras, e.g. nsp_correct_sum / nsp_count
        if key.endswith("_correct_sum") and key.replace("_correct_sum", "_count") in sums:
            out[key.replace("_correct_sum", "_accuracy")] = float(value) / max(
                float(sums[key.replace("_correct_sum", "_count")]), 1.0)
    return out


def classification_metrics(cm_CC: np.ndarray) -> dict[str, float]:
    """F1 (class 1 if binary, else macro) and Matthews correlation from a [true, pred] confusion matrix."""
    tp = np.diag(cm_CC)
    precision_denominator, recall_denominator = cm_CC.sum(0), cm_CC.sum(1)
    f1 = np.where(precision_denominator + recall_denominator > 0,
                  2 * tp / np.maximum(precision_denominator + recall_denominator, 1e-12), 0.0)
    n, correct = cm_CC.sum(), tp.sum()
    t_k, p_k = recall_denominator, precision_denominator
    cov_tp = correct * n - (t_k * p_k).sum()
    denominator = math.sqrt(max(n * n - (p_k * p_k).sum(), 0.0) * max(n * n - (t_k * t_k).sum(), 0.0))
    return {"f1": float(f1[1] if len(f1) == 2 else f1.mean()),
            "mcc": float(cov_tp / denominator) if denominator > 0 else 0.0}


def pearson_from_sums(n: float, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float:
    """Pearson's r from the count and the sums of x, y, x^2, y^2 and xy (0 when either side is constant)."""
    # The one-pass formula; the sums arrive as float64 totals of float32 per-batch sums, which is
    # plenty for scores of a few units (STS-B's 0..5), not for data far from zero relative to its spread.
    cov = n * sxy - sx * sy
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    if var_x <= 0 or var_y <= 0:
        return 0.0
    return float(max(-1.0, min(1.0, cov / math.sqrt(var_x * var_y))))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of lowercased word sequences (longest common subsequence)."""
    a, b = _words(prediction), _words(reference)
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match, corpus BLEU (sacrebleu) and mean ROUGE-L F1 of generated texts (compared stripped)."""
    try:
        import sacrebleu
    except ImportError:
        raise ValueError("BLEU needs sacrebleu: pip install 'zoo[eval]'") from None
    predictions = [p.strip() for p in predictions]
    references = [r.strip() for r in references]
    return {"exact_match": float(np.mean([p == r for p, r in zip(predictions, references)])),
            "bleu": float(sacrebleu.corpus_bleu(predictions, [references]).score),
            "rouge_l": float(np.mean([rouge_l(p, r) for p, r in zip(predictions, references)]))}
