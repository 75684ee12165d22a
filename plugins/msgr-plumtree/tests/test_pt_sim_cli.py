"""``msgr sim plumtree``: the table, CSV and JSON, at small N."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from msgr_core.cli import main


def test_pt_sim_command_table_csv_and_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_csv = tmp_path / "pt.csv"
    assert main(["sim", "plumtree", "--nodes", "20", "--fail", "0.5", "--broadcasts", "3",
                 "--csv", str(out_csv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["N", "seed", "scenario", "step"]
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["scenario"] for r in rows[:3]] == ["single-first", "single", "random"]
    assert len(rows) == 3 + 10 and len(lines) == 1 + len(rows)
    by = {(r["scenario"], int(r["step"])): r for r in rows}
    assert float(by[("single", 0)]["rmr"]) == 0.0
    assert float(by[("single-first", 0)]["rmr"]) > 0
    for r in rows:
        assert float(r["reliability"]) == 1.0, r
    # after half the nodes crash, n0's tree is repaired: RMR back to 0 within the 10 broadcasts
    assert float(by[("fail-50%", 10)]["rmr"]) == 0.0

    assert main(["sim", "plumtree", "--nodes", "12", "--fail", "--tree", "shared", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [r["scenario"] for r in got] == ["single-first", "single", "random"]
    assert got[2]["rmr"] == 0.0 and got[2]["reliability"] == 1.0  # a shared tree: new senders cost nothing
