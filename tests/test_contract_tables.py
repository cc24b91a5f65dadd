"""Every kind of run writes the same tables as before the experiment contract (tests/golden/).

The goldens were written by the code before the lifecycle moved into experiments/base.py; a change
that alters a number in any table of any kind fails here. Regenerate them only for a change that is
meant to alter results: ``python tests/contract_runs.py --write tests/golden``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from contract_runs import KINDS, run_every_kind, tables

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    return run_every_kind(tiny_model_dir, tmp_path_factory.mktemp("contract"))


@pytest.mark.parametrize("kind", KINDS)
def test_tables_equal_the_goldens(every_kind, kind):
    found = tables(every_kind[kind])
    expected = {path.stem.replace("__", "/"): pd.read_parquet(path) for path in (GOLDEN / kind).glob("*")}
    assert sorted(found) == sorted(expected)
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(found[name], frame, check_exact=False, rtol=1e-5, obj=f"{kind}/{name}")
