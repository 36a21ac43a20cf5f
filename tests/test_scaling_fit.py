"""experiments/scaling/fit.py: the Chinchilla approach-3 fit recovers known exponents, and the iso-FLOP
minima of a known law sit where its closed form puts them."""

import numpy as np
import pytest

from experiments.scaling.fit import fit_law, iso_flop_minima, predict

TRUE = {"E": 1.2, "A": 30.0, "B": 300.0, "alpha": 0.35, "beta": 0.45}


def test_fit_recovers_the_exponents_of_a_known_law_from_a_small_noisy_grid():
    rng = np.random.default_rng(0)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(5e4, 3e6, 5), np.geomspace(4e5, 1.6e6, 3)))
    loss = predict(TRUE, n, d) * np.exp(rng.normal(0, 0.002, n.shape))  # 0.2% noise, as seeds give
    fit = fit_law(n, d, loss)
    assert fit["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)
    assert fit["beta"] == pytest.approx(TRUE["beta"], abs=0.05)
    assert fit["E"] == pytest.approx(TRUE["E"], abs=0.1)
    assert np.abs(predict(fit, n, d) / loss - 1).max() < 0.01


def test_iso_flop_minimum_of_a_known_law_matches_its_closed_form():
    # with C = 6ND, L is minimised at N_opt = G (C/6)^(β/(α+β)), G = (αA / βB)^(1/(α+β))
    family = [(int(n), 6.0 * int(n)) for n in np.geomspace(1e3, 1e9, 4000)]  # (N, FLOPs per token = 6N)
    c = 1e15
    (row,) = iso_flop_minima(TRUE, family, [c])
    a, b = TRUE["alpha"], TRUE["beta"]
    g = (a * TRUE["A"] / (b * TRUE["B"])) ** (1 / (a + b))
    assert row["N_opt"] == pytest.approx(g * (c / 6) ** (b / (a + b)), rel=0.01)
    assert row["D_opt"] == pytest.approx(c / 6 / row["N_opt"])
    assert not row["at_family_edge"]
