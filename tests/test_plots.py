"""The learning curve: unbroken training lines, a labelled band within the returns' range."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from fw_agents.runs.plots import plot_learning_curve


def test_learning_curve_lines_band_and_legend(tmp_path, monkeypatch):
    # training rows interleaved with evaluation rows (which leave ep_rew_mean empty)
    (tmp_path / "progress.csv").write_text(
        "time/total_timesteps,rollout/ep_rew_mean,rollout/catch_rate,eval/mean_reward\n"
        "100,-0.5,0.25,\n100,,,0.0\n200,0.0,0.5,\n200,,,1.0\n300,0.5,0.75,\n"
    )
    results = np.array([[1.0, 1.0, -1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])  # mean 0.5 +- 0.87, 1 +- 0
    np.savez(tmp_path / "evaluations.npz", timesteps=np.array([100, 200]), results=results, ep_lengths=results * 0)
    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *args, **kwargs: drawn.append(self))
    plot_learning_curve(tmp_path, title="t", catch=True)
    ax_return, ax_catch = drawn[0].axes
    training = ax_return.lines[0]
    assert list(training.get_xdata()) == [100, 200, 300] and not np.isnan(training.get_ydata()).any()
    assert list(ax_catch.lines[0].get_ydata()) == [0.25, 0.5, 0.75]
    band = ax_return.collections[0]
    vertices = np.concatenate([path.vertices for path in band.get_paths()])
    assert vertices[:, 1].max() <= 1.0 and vertices[:, 1].min() >= -1.0, "the band stays within ±1"
    labels = [text.get_text() for text in ax_return.get_legend().get_texts()]
    assert any("± 1 std" in label for label in labels)
