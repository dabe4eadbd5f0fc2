"""Report plots: every attack keeps its own colour, and the legend outside the panels is not cut off."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from transferlab.eval.report import attack_colours, passes_plot


def test_every_attack_gets_its_own_colour_beyond_the_ten_of_tab10():
    for count in (3, 13, 31):
        names = [f"a{k}" for k in range(count)]
        colours = attack_colours(names)
        assert list(colours) == names
        assert len(set(colours.values())) == count


def _results(attacks: int) -> pd.DataFrame:
    rows = [{"attack": f"attack_{k}", "source": "s", "target": "t", "white_box": False,
             "metric": "transfer_success", "passes": 10 * (k + 1), "success_rate": 0.5, "ci_low": 0.4,
             "ci_high": 0.6} for k in range(attacks)]
    return pd.DataFrame(rows)


def test_passes_plot_keeps_the_legend_inside_the_image(tmp_path):
    path = tmp_path / "passes.png"
    assert passes_plot(_results(12), path, "title")
    image = np.asarray(Image.open(path).convert("L"))
    # the legend is placed right of the figure's nominal width (one panel: 3.6 + 2 inches at 110 dpi);
    # the saved image must reach past that width and carry the legend's text there
    nominal = int((3.6 + 2) * 110)
    assert image.shape[1] > nominal
    assert (image[:, nominal:] < 128).any()


def test_passes_plot_draws_the_reference_entries_as_one_line_not_as_points(tmp_path, monkeypatch):
    """The MI entries at more steps form the compute-matched reference line: left out of the legend's
    points and of the colour table, so the other attacks keep their own colours and shapes."""
    import matplotlib.pyplot as plt

    drawn = {}
    original = plt.Figure.legend

    def spy(self, *args, handles=(), **kwargs):
        drawn["labels"] = [h.get_label() for h in handles]
        return original(self, *args, handles=handles, **kwargs)

    monkeypatch.setattr(plt.Figure, "legend", spy)
    real_suptitle = plt.Figure.suptitle
    monkeypatch.setattr(plt.Figure, "suptitle", lambda self, text, **kw: drawn.update(title=text)
                        or real_suptitle(self, text, **kw))
    assert passes_plot(_results(6), tmp_path / "p.png", "the run", reference=["attack_0", "attack_3"])
    assert drawn["title"] == "the run"  # not a panel's heading
    assert drawn["labels"][:-1] == ["attack_1", "attack_2", "attack_4", "attack_5"]
    assert drawn["labels"][-1] == "attack_0 / attack_3 (reference line)"
