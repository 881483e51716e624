"""The MICRO'21 entropy predictor: from the entropy after layer 1, predict the exit layer.

EdgeBERT's accelerator sets voltage and frequency per sentence before running it, so it needs
the exit layer early: a lookup table indexed by layer 1's exit entropy (0.00 to 0.99 in 0.01
steps) gives the predicted exit layer. The paper learns the table with a small MLP; here each
bin holds the most frequent exit layer of the training sentences that fell in it (the choice that
is most often exactly right; the median, which the default checkpoint keeps, was closer on average
but exact less often than always predicting the most common layer), empty bins copy their nearest
filled neighbour, and the table is made non-decreasing (a less confident first layer never
predicts an earlier exit).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .evaluate import entropy, exit_layers

BINS = 100
BIN_WIDTH = 0.01


@dataclasses.dataclass
class ExitPredictor:
    threshold: float
    table: list[int]

    def predict(self, first_entropy: np.ndarray) -> np.ndarray:
        index = np.clip((first_entropy / BIN_WIDTH).astype(int), 0, BINS - 1)
        return np.asarray(self.table)[index]


def build_predictor(all_logits: np.ndarray, threshold: float, statistic: str = "mode") -> ExitPredictor:
    """Fit the table on every-exit logits (rows, layers, labels) of training sentences; each bin holds
    its sentences' most frequent exit layer ("mode") or their median."""
    first = entropy(all_logits[:, 0])
    actual = exit_layers(all_logits, threshold)
    index = np.clip((first / BIN_WIDTH).astype(int), 0, BINS - 1)
    pick = (lambda layers: np.bincount(layers).argmax()) if statistic == "mode" else np.median
    filled = {b: int(pick(actual[index == b])) for b in np.unique(index)}
    keys = np.array(sorted(filled))
    table = [filled[int(keys[np.abs(keys - b).argmin()])] for b in range(BINS)]
    return ExitPredictor(threshold, np.maximum.accumulate(table).tolist())


def score_predictor(predictor: ExitPredictor, all_logits: np.ndarray,
                    most_common: int | None = None) -> dict[str, float]:
    """Predicted against actual exit layer: exact, within one layer, mean absolute error; and the
    same for always predicting `most_common` (default: these sentences' own most common layer), the
    baseline an informative predictor must beat."""
    actual = exit_layers(all_logits, predictor.threshold)
    most_common = int(np.bincount(actual).argmax()) if most_common is None else most_common
    scores = {}
    for name, predicted in (("", predictor.predict(entropy(all_logits[:, 0]))), ("most_common_", most_common)):
        error = np.abs(predicted - actual)
        scores.update({f"{name}exact": float((error == 0).mean()), f"{name}within_one": float((error <= 1).mean()),
                       f"{name}mean_abs_error": float(error.mean())})
    return {**scores, "most_common_layer": most_common}


def held_out_score(all_logits: np.ndarray, threshold: float, statistic: str = "mode") -> dict[str, float]:
    """The predictor fitted on the first half of these sentences, scored on the second half against
    the first half's most common exit layer: how informative layer 1's entropy is."""
    half = len(all_logits) // 2
    fit = all_logits[:half]
    return score_predictor(build_predictor(fit, threshold, statistic), all_logits[half:],
                           int(np.bincount(exit_layers(fit, threshold)).argmax()))
