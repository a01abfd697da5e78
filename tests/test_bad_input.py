"""Bad input and interrupted runs (issue 14 part 2): one-line errors, exit 2, nothing written."""

from dataclasses import fields

import pytest

from wse_sim.arch import load_wafer
from wse_sim.arch.wafer import WaferSpec
from wse_sim.errors import UserError

NUMERIC_FIELDS = [f.name for f in fields(WaferSpec) if f.name not in ("name", "description")]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("field", [*NUMERIC_FIELDS, "link_bytes_per_cycle"])
def test_wafer_toml_rejects_non_finite(tmp_path, field, value):
    f = tmp_path / "w.toml"
    f.write_text(f"{field} = {value}")
    with pytest.raises(UserError, match=f"{field} must be a .*finite number, got"):
        load_wafer(str(f))
