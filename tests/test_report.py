"""`pacsctl report storage`: the plan's arithmetic, the numbers from Prometheus, the page.

The answers here are built in Prometheus' own JSON shapes; molecule/monitoring runs the
command on a real Prometheus (and keeps its answers with --record).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from pacs_libre import report
from pacs_libre.cli import app
from pacs_libre.errors import UserError

YEAR = report.YEAR_SECONDS


def _matrix(values: list[tuple[float, float]]) -> dict[str, Any]:
    return {
        "resultType": "matrix",
        "result": [{"metric": {}, "values": [[t, str(v)] for t, v in values]}],
    }


def _vector(value: float | None, metric: dict[str, str] | None = None) -> dict[str, Any]:
    result = [] if value is None else [{"metric": metric or {}, "value": [0, str(value)]}]
    return {"resultType": "vector", "result": result}


def answers(**override: Any) -> dict[str, Any]:
    start, end = 1_767_225_600.0, 1_767_225_600.0 + 90 * 86400  # 2026-01-01, 90 days
    data: dict[str, Any] = {
        "start": start,
        "end": end,
        "step": 86400,
        "used": _matrix([(start + d * 86400, 1e12 + d * 10e9) for d in range(91)]),
        "capacity": _matrix([(end, 4e12)]),
        "days_left": _vector(200.0),
        "plan_per_year": _vector(2.5e12),
        "plan_growth": _vector(0.05),
        "plan_start": _vector(start),
        "plan_years": _vector(5),
        "plan_storage": _vector(17.25e12),
        "studies": {
            "resultType": "vector",
            "result": [
                {"metric": {"month": "2026-02", "modality": "CT"}, "value": [0, "500"]},
                {"metric": {"month": "2026-02", "modality": "MR"}, "value": [0, "130"]},
                {"metric": {"month": "2026-01", "modality": "CT"}, "value": [0, "480"]},
            ],
        },
    }
    data.update(override)
    return data


def test_the_plan_adds_its_yearly_volume_grown_each_year():
    # Year 0 adds 100, year 1 adds 110: from the start to 1.5 years, 100 + 55.
    assert report.planned_between(100, 0.10, 0, 0, 1.5 * YEAR) == pytest.approx(155)
    assert report.planned_between(100, 0.10, 0, YEAR, YEAR) == 0


@given(
    per_year=st.floats(1, 1e13),
    growth=st.floats(0, 0.5),
    split=st.floats(0, 1),
    years=st.floats(0.01, 8),
)
def test_the_plan_over_two_spans_is_the_plan_over_both(per_year, growth, split, years):
    until = years * YEAR
    middle = split * until
    whole = report.planned_between(per_year, growth, 0, 0, until)
    parts = report.planned_between(per_year, growth, 0, 0, middle) + report.planned_between(
        per_year, growth, 0, middle, until
    )
    assert whole == pytest.approx(parts, rel=1e-9)
    assert whole >= per_year * years * (1 - 1e-9)


def test_build_reads_the_answers():
    built = report.build(answers())
    assert built.used[0][1] == 1e12
    assert built.capacity == 4e12
    assert built.full_on is not None
    assert built.full_on.isoformat() == "2026-10-18"  # 90 + 200 days after 2026-01-01
    assert list(built.studies) == ["2026-01", "2026-02"]
    assert built.studies["2026-02"] == {"CT": 500, "MR": 130}
    # 90 days of a 2.5 TB/year plan from the first sample.
    assert built.plan_at(built.end) == pytest.approx(1e12 + 2.5e12 * 90 * 86400 / YEAR)


def test_no_forecast_and_no_plan_are_said_plainly():
    built = report.build(answers(days_left=_vector(None), plan_per_year=_vector(None)))
    page = report.render_html(built, "CH Test")
    assert "not filling at the current pace" in page
    assert "no plan" in page
    assert built.plan_at(built.end) is None


def test_the_page_has_the_figures_and_two_charts():
    page = report.render_html(report.build(answers()), "CH d'Exemple <test>")
    assert page.count("<svg") == 2
    assert "CH d&#x27;Exemple &lt;test&gt;" in page
    assert "2026-10-18 (in 200 days)" in page
    # 1.9 TB stored against 1.62 TB planned by then: 18 % above.
    assert "1.9 TB" in page and "+18 %" in page
    assert "1110 in the period" in page


def test_replay_draws_the_page_from_kept_answers(tmp_path):
    kept = tmp_path / "answers.json"
    report.save_answers(answers(), kept)
    result = CliRunner().invoke(
        app, ["report", "storage", "--replay", str(kept), "--out", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    assert page.count("<svg") == 2
    assert "2026-10-18 (in 200 days)" in page


def test_replay_refuses_a_file_that_is_not_a_recording(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"start": 0}')
    with pytest.raises(UserError, match="not a recording"):
        report.load_answers(bad)


def test_an_unreachable_prometheus_names_the_fix():
    with pytest.raises(UserError, match="SSH tunnel"):
        report.fetch("http://127.0.0.1:9", 0, 60, 15)
