"""`python -m data fineweb` without its extra: a one-line error naming what to install (no network used)."""

import sys

from data.__main__ import main


def test_without_huggingface_hub_it_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail as if not installed
    assert main(["fineweb", "--out", str(tmp_path / "fw"), "--train-shards", "1"]) == 1
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("error: ")
        and "make fineweb" in err
        and "'fineweb' extra" in err
    )
    assert not (tmp_path / "fw").exists()  # nothing was started
