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


def test_write_table_unknown_suffix_is_a_config_error_naming_the_file(tmp_path):
    """`--table out.txt` is a ClipadaptError the CLI reports (not a bare ValueError traceback), and writes nothing."""
    import pytest

    from clipadapt.errors import ConfigError
    from clipadapt.report.tables import write_table

    with pytest.raises(ConfigError, match=r"t\.txt: unknown table format '\.txt'"):
        write_table(tmp_path / "t.txt", [{"a": 1}])
    assert not (tmp_path / "t.txt").exists()
