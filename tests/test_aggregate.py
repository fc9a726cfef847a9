"""fw_agents.aggregate: rliable's IQM and stratified-bootstrap intervals, checked against an
independent computation of the IQM (scipy's 25% trimmed mean of all scores)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from fw_agents import aggregate

REPS = 300  # enough for an interval; the report's default is 2000


@pytest.mark.parametrize("shape", [(4, 1), (5, 4), (10, 2)])
def test_iqm_is_the_trimmed_mean_of_all_scores_and_inside_its_interval(shape):
    scores = np.random.default_rng(sum(shape)).normal(size=shape) ** 3  # skewed: IQM != mean
    ((iqm, low, high),) = aggregate.iqm_intervals({"m": scores}, reps=REPS, seed=1).values()
    assert iqm == pytest.approx(scipy.stats.trim_mean(scores.ravel(), 0.25))
    assert iqm != pytest.approx(scores.mean())
    assert low <= iqm <= high and low < high


def test_intervals_are_seeded_per_key_and_leave_numpys_generator_alone():
    scores = np.random.default_rng(0).random((6, 3))
    np.random.seed(123)
    expected_draw = np.random.random()
    np.random.seed(123)
    first = aggregate.iqm_intervals({"a": scores, "b": scores * 0.5}, reps=REPS, seed=7)
    assert np.random.random() == expected_draw  # the global generator is restored
    assert aggregate.iqm_intervals({"a": scores}, reps=REPS, seed=7)["a"] == first["a"]  # same with other keys
    assert aggregate.iqm_intervals({"a": scores}, reps=REPS, seed=8)["a"][1:] != first["a"][1:]
    assert aggregate.iqm_cells([scores], reps=REPS, seed=7) == [aggregate.interval_text(first["a"])]


def test_constant_scores_give_a_zero_width_interval():
    assert aggregate.iqm_intervals({"c": np.full((4, 2), 0.25)}, reps=50)["c"] == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((0, 2)), np.array([[0.1, np.nan]])])
def test_bad_matrices_and_reps_are_one_line_errors(bad):
    with pytest.raises(ValueError, match=r"scores of 'x' must be a non-empty finite \[runs x tasks\] matrix"):
        aggregate.iqm_intervals({"x": bad}, reps=10)
    with pytest.raises(ValueError, match="bootstrap reps must be an integer >= 1, got 0"):
        aggregate.iqm_intervals({"x": np.zeros((2, 2))}, reps=0)


def test_performance_profile_is_written(tmp_path):
    scores = np.random.default_rng(2).random((4, 3))
    path = tmp_path / "profile.png"
    aggregate.save_performance_profile({"a": scores, "b": scores**2}, path, reps=50)
    assert path.read_bytes().startswith(b"\x89PNG") and [p.name for p in tmp_path.iterdir()] == ["profile.png"]
