"""benchmarks/bench_int8.py's figures: the positive-label probability and the fidelity it reports
(the quantizing libraries themselves are not installed with the project)."""
import numpy as np
import torch

from benchmarks.bench_int8 import fidelity, positive


def test_positive_is_softmax_of_label_1():
    logits = np.array([[0.0, 0.0], [1.0, 3.0], [500.0, -500.0]])
    expected = torch.softmax(torch.tensor(logits), dim=-1)[:, 1].numpy()
    assert np.allclose(positive(logits), expected)


def test_fidelity_counts_flipped_decisions_and_differences():
    reference = np.array([0.2, 0.6, 0.49, 0.9])
    scores = np.array([0.2, 0.4, 0.51, 0.85])
    assert fidelity(reference, scores) == {"mean_abs_diff": round((0 + 0.2 + 0.02 + 0.05) / 4, 4),
                                           "max_abs_diff": 0.2, "decisions_flipped": 0.5}
