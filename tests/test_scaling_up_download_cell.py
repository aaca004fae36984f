"""Notebook 12's guarded download cell touches the network only when DOWNLOAD is True."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "12_scaling_up.ipynb"


def download_cell() -> str:
    cells = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    [src] = ["".join(c["source"]) for c in cells
             if c["cell_type"] == "code" and "DOWNLOAD = False" in "".join(c["source"])]
    return src


def test_no_connection_unless_download(monkeypatch, capsys):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network refused in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    exec(download_cell(), {"os": os, "socket": socket})
    assert calls == []
    assert "DOWNLOAD is False" in capsys.readouterr().out
    # with DOWNLOAD = True it does try (and says the hub cannot be reached here)
    exec(download_cell().replace("DOWNLOAD = False", "DOWNLOAD = True"),
         {"os": os, "socket": socket})
    assert len(calls) == 1
    assert "cannot be reached" in capsys.readouterr().out
