"""The shared plot helpers: figures are written whole (temp file + rename), in the format of the suffix, and
closed afterwards."""

from __future__ import annotations

from clipadapt.report.plots import pyplot, save_figure


def test_save_figure_writes_by_suffix_atomically_and_closes(tmp_path):
    plt = pyplot()
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"
    for name, magic in (("a.png", b"\x89PNG"), ("b.pdf", b"%PDF"), ("c.svg", b"<?xml"), ("d", b"\x89PNG")):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        path = save_figure(fig, tmp_path / "out" / name)
        assert path == tmp_path / "out" / name and path.read_bytes().startswith(magic)
        assert not plt.fignum_exists(fig.number)  # closed
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp file left
