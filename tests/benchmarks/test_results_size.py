"""The committed results stay light: results/ at most 10 MB, each figure at most ~200 KB, and a
figure is rewritten only when the numbers it shows change."""

import json

from benchmarks.common import (
    FIGURE_MAX_BYTES,
    FIGURE_WIDTH,
    figure_fingerprint,
    save_figure,
    to_json,
)
from tests.helpers import ROOT

RESULTS = ROOT / "results"


def test_results_stay_under_ten_megabytes():
    total = sum(path.stat().st_size for path in RESULTS.rglob("*") if path.is_file())
    assert total <= 10 * 2**20, f"results/ holds {total / 2**20:.1f} MiB"


def test_every_figure_is_compressed():
    from PIL import Image

    figures = sorted(RESULTS.glob("*.png"))
    assert figures
    for figure in figures:
        assert figure.stat().st_size <= FIGURE_MAX_BYTES, figure.name
        with Image.open(figure) as image:
            assert image.width <= FIGURE_WIDTH, figure.name


def test_run_records_are_compact():
    for path in RESULTS.rglob("*.json"):
        text = path.read_text()
        assert "\n " not in text, f"{path.name}: indented"
        assert text == to_json(json.loads(text)), f"{path.name}: floats not rounded"


def test_a_figure_is_written_only_when_its_numbers_change(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def draw(values):
        fig, ax = plt.subplots(figsize=(20, 8))
        ax.plot(values)
        return fig

    path = tmp_path / "figure.png"
    assert save_figure(draw([1.0, 2.0, 3.0]), path, {"values": [1.0, 2.0, 3.0]}, dpi=100)
    stamp, stored = path.stat().st_mtime_ns, figure_fingerprint(path)
    assert stored is not None and path.stat().st_size <= FIGURE_MAX_BYTES
    from PIL import Image

    with Image.open(path) as image:
        assert image.width <= FIGURE_WIDTH  # 2000 px rendered, 1000 px kept
    assert not save_figure(draw([1.0, 2.0, 3.0]), path, {"values": [1.0, 2.0, 3.0]}, dpi=100)
    assert path.stat().st_mtime_ns == stamp  # same numbers: not rewritten
    assert save_figure(draw([1.0, 2.0, 4.0]), path, {"values": [1.0, 2.0, 4.0]}, dpi=100)
    assert figure_fingerprint(path) != stored
