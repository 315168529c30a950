"""The storage report for the hospital's management, from Prometheus' HTTP API.

One HTML page with its charts inline (SVG, drawn by matplotlib): the storage used over
time against the sizing plan's line, the forecast date when the archive's filesystem is
full, and the studies per month by modality. The data comes from the metrics that
roles/monitoring puts in Prometheus:

- ``orthanc_disk_size_mb`` (the archive's own metrics): what the images take;
- ``pacs:archive_filesystem_size_bytes`` and ``pacs:archive_storage_days_left``
  (recording rules): the filesystem and its forecast;
- ``pacs_plan_*`` (the sizing plan, from ``pacsctl size --write-group-vars``);
- ``pacs_archive_studies{month, modality}``: the studies by study month.

:func:`fetch` asks Prometheus and returns the raw answers, which can be saved as JSON
(``--record``) and read back (``--replay``); :func:`build` turns them into a
:class:`StorageReport`; :func:`render_html` writes the page. matplotlib is imported
lazily, so that importing this module stays cheap.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacs_libre.errors import UserError

YEAR_SECONDS = 31_557_600.0

#: Range queries (over the report's period) and instant queries (at its end).
RANGE_QUERIES: dict[str, str] = {
    "used": "sum(orthanc_disk_size_mb) * 1e6",
    "capacity": "sum(pacs:archive_filesystem_size_bytes)",
}
INSTANT_QUERIES: dict[str, str] = {
    "days_left": "min(pacs:archive_storage_days_left)",
    "plan_per_year": "max(pacs_plan_archive_bytes_per_year)",
    "plan_growth": "max(pacs_plan_archive_growth_ratio)",
    "plan_start": "max(pacs_plan_start_timestamp_seconds)",
    "plan_years": "max(pacs_plan_years)",
    "plan_storage": "max(pacs_plan_archive_storage_bytes)",
    "studies": "max by (month, modality) (max_over_time(pacs_archive_studies[{period}s]))",
}


@dataclass
class StorageReport:
    """What the page shows, in plain numbers (bytes, seconds since the epoch)."""

    start: float
    end: float
    used: list[tuple[float, float]]
    capacity: float | None
    days_left: float | None
    plan_per_year: float | None
    plan_growth: float
    plan_start: float | None
    plan_years: float | None
    studies: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def full_on(self) -> dt.date | None:
        """The forecast day when the archive's filesystem is full, if it fills."""
        if self.days_left is None:
            return None
        return dt.datetime.fromtimestamp(self.end + self.days_left * 86400, dt.UTC).date()

    def plan_at(self, when: float) -> float | None:
        """Bytes the plan expects stored at ``when``, counted from the first sample.

        The plan adds ``plan_per_year`` the first year, grown by ``plan_growth`` each
        year after ``plan_start`` (the first sample when the inventory gives no start).
        """
        if self.plan_per_year is None or not self.used:
            return None
        origin_time, origin_bytes = self.used[0]
        start = self.plan_start if self.plan_start is not None else origin_time
        return origin_bytes + planned_between(
            self.plan_per_year, self.plan_growth, start, origin_time, when
        )


def planned_between(
    per_year: float, growth: float, plan_start: float, since: float, until: float
) -> float:
    """Bytes the plan adds between two times: year n of the plan adds per_year*(1+growth)^n."""
    if until <= since:
        return 0.0
    total, t = 0.0, since
    while t < until:
        year = max(0, int((t - plan_start) // YEAR_SECONDS))
        year_end = plan_start + (year + 1) * YEAR_SECONDS
        step_end = min(until, year_end if year_end > t else t + YEAR_SECONDS)
        total += per_year * (1 + growth) ** year * (step_end - t) / YEAR_SECONDS
        t = step_end
    return total


def _get(url: str, path: str, params: Mapping[str, str]) -> Any:
    address = f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    if not address.startswith(("http://", "https://")):
        raise UserError(f"--prometheus '{url}': expected an http:// or https:// URL")
    try:
        with urllib.request.urlopen(address, timeout=60) as answer:  # noqa: S310 (checked above)
            data = json.load(answer)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UserError(
            f"--prometheus {url}: no answer from Prometheus ({exc}); on the monitoring host it "
            "listens on 127.0.0.1:9090: open an SSH tunnel (docs/monitoring.md)"
        ) from None
    if data.get("status") != "success":
        raise UserError(f"--prometheus {url}: Prometheus refused a query: {data.get('error')}")
    return data["data"]


def fetch(url: str, start: float, end: float, step: float) -> dict[str, Any]:
    """Ask Prometheus every query of the report; return its answers as they came."""
    answers: dict[str, Any] = {"start": start, "end": end, "step": step}
    for name, promql in RANGE_QUERIES.items():
        answers[name] = _get(
            url,
            "/api/v1/query_range",
            {"query": promql, "start": str(start), "end": str(end), "step": str(step)},
        )
    period = int(end - start)
    for name, promql in INSTANT_QUERIES.items():
        answers[name] = _get(
            url, "/api/v1/query", {"query": promql.format(period=period), "time": str(end)}
        )
    return answers


def _scalar(answer: Mapping[str, Any]) -> float | None:
    result = answer.get("result", [])
    return float(result[0]["value"][1]) if result else None


def build(answers: Mapping[str, Any]) -> StorageReport:
    """The report's numbers from Prometheus' answers (as :func:`fetch` returns them)."""
    used_series = answers["used"].get("result", [])
    used = [(float(t), float(v)) for t, v in used_series[0]["values"]] if used_series else []
    capacity_series = answers["capacity"].get("result", [])
    capacity = float(capacity_series[0]["values"][-1][1]) if capacity_series else None
    studies: dict[str, dict[str, int]] = {}
    for sample in answers["studies"].get("result", []):
        month = str(sample["metric"].get("month", "?"))
        modality = str(sample["metric"].get("modality", "all"))
        studies.setdefault(month, {})[modality] = int(float(sample["value"][1]))
    return StorageReport(
        start=float(answers["start"]),
        end=float(answers["end"]),
        used=used,
        capacity=capacity,
        days_left=_scalar(answers["days_left"]),
        plan_per_year=_scalar(answers["plan_per_year"]),
        plan_growth=_scalar(answers["plan_growth"]) or 0.0,
        plan_start=_scalar(answers["plan_start"]),
        plan_years=_scalar(answers["plan_years"]),
        studies=dict(sorted(studies.items())),
    )


def _human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(size) < 1000 or unit == "PB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size:.0f} B"
        size /= 1000
    return f"{size:.1f} PB"


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def storage_chart(report: StorageReport) -> str:
    """Storage used over time against the plan's line (and the filesystem's size), as SVG."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(9, 3.6))
    axes = figure.subplots()
    # matplotlib's dates are days since its epoch, 1970-01-01.
    times = [t / 86400 for t, _ in report.used]
    axes.xaxis_date()
    axes.plot(times, [v / 1e9 for _, v in report.used], label="images stored", color="#1f5fa8")
    planned = [report.plan_at(t) for t, _ in report.used]
    if report.used and all(p is not None for p in planned):
        axes.plot(
            times,
            [float(p or 0) / 1e9 for p in planned],
            label="sizing plan",
            color="#c0392b",
            linestyle="--",
        )
    if report.capacity:
        axes.axhline(report.capacity / 1e9, label="filesystem size", color="#555", linewidth=0.8)
    axes.set_ylabel("GB")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    return _svg(figure)


def studies_chart(report: StorageReport) -> str:
    """Studies per month, stacked by modality, as SVG."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(9, 3.2))
    axes = figure.subplots()
    months = list(report.studies)
    modalities = sorted({m for counts in report.studies.values() for m in counts})
    bottom = [0] * len(months)
    for modality in modalities:
        values = [report.studies[month].get(modality, 0) for month in months]
        axes.bar(months, values, bottom=bottom, label=modality)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    axes.set_ylabel("studies")
    axes.grid(True, axis="y", alpha=0.3)
    if modalities:
        axes.legend(loc="upper left", ncols=min(len(modalities), 6))
    figure.tight_layout()
    return _svg(figure)


def render_html(report: StorageReport, hospital: str) -> str:
    """The one-page report: the figures in a table, then the two charts."""
    last = report.used[-1][1] if report.used else None
    planned = report.plan_at(report.end)
    when = dt.datetime.fromtimestamp(report.end, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    since = dt.datetime.fromtimestamp(report.start, dt.UTC).strftime("%Y-%m-%d")
    full_on = report.full_on
    rows = [
        ("Images stored now", _human(last) if last is not None else "no data"),
        ("The sizing plan expects by now", _human(planned) if planned is not None else "no plan"),
        ("Against the plan", f"{(last / planned - 1) * 100:+.0f} %" if last and planned else "-"),
        ("Archive filesystem", _human(report.capacity) if report.capacity else "no data"),
        (
            "Forecast: filesystem full on",
            f"{full_on.isoformat()} (in {report.days_left:.0f} days)"
            if full_on and report.days_left is not None
            else "not filling at the current pace",
        ),
        (
            "Planned first-year volume",
            f"{_human(report.plan_per_year)} / year, +{report.plan_growth * 100:.0f} %/year"
            if report.plan_per_year
            else "no plan",
        ),
    ]
    table = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    studies_total = sum(sum(c.values()) for c in report.studies.values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Archive storage — {html.escape(hospital)}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 1.5em auto; color: #222; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }} h2 {{ font-size: 1.1em; margin: 1em 0 0.2em; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 0.2em 1em 0.2em 0; }}
th {{ font-weight: normal; color: #555; }} svg {{ width: 100%; height: auto; }}
.note {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>Archive storage — {html.escape(hospital)}</h1>
<p class="note">From {since} to {when}, read from Prometheus (pacs-libre).</p>
<table>
{table}
</table>
<h2>Storage used over time, against the sizing plan</h2>
{storage_chart(report)}
<h2>Studies per month, by modality ({studies_total} in the period)</h2>
{studies_chart(report)}
<p class="note">A study with several modalities counts once for each. The plan's line starts
from the first sample of the period and adds what <code>pacsctl size</code> planned per year.</p>
</body></html>
"""


def save_answers(answers: Mapping[str, Any], path: Path) -> None:
    """Keep Prometheus' answers as JSON, to draw the report again or test it."""
    path.write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")


def load_answers(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--replay {path}: cannot read recorded answers ({exc})") from None
    missing = {"start", "end", *RANGE_QUERIES, *INSTANT_QUERIES} - set(data)
    if missing:
        raise UserError(f"--replay {path}: not a recording of pacsctl report: {sorted(missing)}")
    return dict(data)
