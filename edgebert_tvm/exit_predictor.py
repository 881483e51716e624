"""The MICRO'21 entropy predictor: from the entropy after layer 1, predict the exit layer.

EdgeBERT's accelerator sets voltage and frequency per sentence before running it, so it needs
the exit layer early: a lookup table indexed by layer 1's exit entropy (0.00 to 0.99 in 0.01
steps) gives the predicted exit layer. The paper learns the table with a small MLP; here each
bin holds the median exit layer of the training sentences that fell in it, empty bins copy their
nearest filled neighbour, and the table is made non-decreasing (a less confident first layer never
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


def build_predictor(all_logits: np.ndarray, threshold: float) -> ExitPredictor:
    """Fit the table on every-exit logits (rows, layers, labels) of training sentences."""
    first = entropy(all_logits[:, 0])
    actual = exit_layers(all_logits, threshold)
    index = np.clip((first / BIN_WIDTH).astype(int), 0, BINS - 1)
    filled = {b: int(np.median(actual[index == b])) for b in np.unique(index)}
    keys = np.array(sorted(filled))
    table = [filled[int(keys[np.abs(keys - b).argmin()])] for b in range(BINS)]
    return ExitPredictor(threshold, np.maximum.accumulate(table).tolist())


def score_predictor(predictor: ExitPredictor, all_logits: np.ndarray) -> dict[str, float]:
    """Predicted against actual exit layer: exact, within one layer, mean absolute error."""
    predicted = predictor.predict(entropy(all_logits[:, 0]))
    actual = exit_layers(all_logits, predictor.threshold)
    error = np.abs(predicted - actual)
    return {"exact": float((error == 0).mean()), "within_one": float((error <= 1).mean()),
            "mean_abs_error": float(error.mean())}
