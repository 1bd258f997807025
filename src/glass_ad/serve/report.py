"""`glass report DB --out report.html`: flag, false-alarm and defect rates over time from the inspection log.

Definitions per period (and per model):

* **flag rate** — anomalous decisions / inspections (needs no review).
* **false-alarm rate** — among inspections an operator reviewed as *good*, the share the model flagged.
* **defect rate** — among reviewed inspections, the share confirmed as *defect*.
* **missed** — inspections passed as normal that an operator reviewed as *defect*.

The page is one self-contained HTML file (the chart is an embedded PNG; no scripts, no external assets).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from glass_ad.serve.store import InspectionLog

__all__ = ["Counts", "aggregate", "chart_figure", "render_report", "write_report"]

BUCKETS = ("hour", "day", "week")


@dataclass
class Counts:
    inspected: int = 0
    anomalous: int = 0
    reviewed: int = 0
    reviewed_good: int = 0
    reviewed_defect: int = 0
    false_alarms: int = 0  # anomalous, reviewed good
    missed: int = 0  # normal, reviewed defect

    def add(self, decision: str, review: str | None) -> None:
        self.inspected += 1
        flagged = decision == "anomalous"
        self.anomalous += flagged
        if review is not None:
            self.reviewed += 1
            if review == "good":
                self.reviewed_good += 1
                self.false_alarms += flagged
            elif review == "defect":
                self.reviewed_defect += 1
                self.missed += not flagged

    @property
    def flag_rate(self) -> float | None:
        return self.anomalous / self.inspected if self.inspected else None

    @property
    def false_alarm_rate(self) -> float | None:
        return self.false_alarms / self.reviewed_good if self.reviewed_good else None

    @property
    def defect_rate(self) -> float | None:
        return self.reviewed_defect / self.reviewed if self.reviewed else None


def bucket_start(when: dt.datetime, bucket: str) -> dt.datetime:
    when = when.astimezone(dt.timezone.utc)
    if bucket == "hour":
        return when.replace(minute=0, second=0, microsecond=0)
    day = when.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket == "day":
        return day
    if bucket == "week":
        return day - dt.timedelta(days=day.weekday())
    raise ValueError(f"bucket must be one of {', '.join(BUCKETS)} or auto, got {bucket!r}")


def choose_bucket(first: dt.datetime, last: dt.datetime) -> str:
    span = last - first
    return "hour" if span <= dt.timedelta(days=2) else ("day" if span <= dt.timedelta(days=120) else "week")


def aggregate(
    outcomes: Iterable[tuple[dt.datetime, str, str, str | None]], bucket: str = "auto"
) -> tuple[str, dict[dt.datetime, Counts], dict[str, dict[dt.datetime, Counts]], Counts]:
    """(bucket used, counts per period, counts per model and period, totals) from (time, model, decision,
    review) tuples in time order."""
    if bucket != "auto" and bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)} or auto, got {bucket!r}")
    rows = list(outcomes) if bucket == "auto" else outcomes
    if bucket == "auto":
        bucket = choose_bucket(rows[0][0], rows[-1][0]) if rows else "day"
    overall: dict[dt.datetime, Counts] = defaultdict(Counts)
    per_model: dict[str, dict[dt.datetime, Counts]] = defaultdict(lambda: defaultdict(Counts))
    total = Counts()
    for when, model, decision, review in rows:
        start = bucket_start(when, bucket)
        overall[start].add(decision, review)
        per_model[model][start].add(decision, review)
        total.add(decision, review)
    return bucket, dict(overall), {m: dict(c) for m, c in per_model.items()}, total


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _label(start: dt.datetime, bucket: str) -> str:
    return start.strftime("%Y-%m-%d %H:00") if bucket == "hour" else start.strftime("%Y-%m-%d")


BUCKET_WIDTH = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1), "week": dt.timedelta(weeks=1)}


def chart_figure(periods: dict[dt.datetime, Counts], bucket: str):
    """The rates-over-time matplotlib figure (None when there is nothing to draw).

    The time axis spans the periods drawn, half a bucket either side: matplotlib's own limits for a single
    date widen it by years."""
    if not periods:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    times = sorted(periods)
    # Naive UTC times: the axis and its labels stay in UTC whatever the local zone or rcParams say.
    naive = [t.astimezone(dt.timezone.utc).replace(tzinfo=None) for t in times]
    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
    for name, attribute, style in (
        ("flag rate", "flag_rate", "-o"),
        ("false-alarm rate (reviewed good)", "false_alarm_rate", "-s"),
        ("defect rate (reviewed)", "defect_rate", "-^"),
    ):
        values = [getattr(periods[t], attribute) for t in times]
        if any(v is not None for v in values):
            ax.plot(naive, [float("nan") if v is None else 100 * v for v in values], style, label=name, markersize=4)
    half = BUCKET_WIDTH[bucket] / 2
    ax.set_xlim(naive[0] - half, naive[-1] + half)
    locator = mdates.AutoDateLocator(minticks=1, maxticks=10)
    if bucket == "hour":
        formatter = mdates.DateFormatter("%Y-%m-%d %H:%M")
        if len(times) < 3:  # AutoDateLocator would tick in minutes inside one or two hours
            locator = mdates.HourLocator()
    else:
        formatter = mdates.DateFormatter("%Y-%m-%d")
        if len(times) < 3:
            locator = mdates.DayLocator() if bucket == "day" else mdates.WeekdayLocator(byweekday=mdates.MO)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)
    ax.set_ylabel("%")
    ax.set_ylim(bottom=0, top=max(5.0, ax.get_ylim()[1]))
    ax.set_title(f"rates per {bucket} (UTC)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def _chart(periods: dict[dt.datetime, Counts], bucket: str) -> str:
    """Rates over time as a base64 PNG (empty string when there is nothing to draw)."""
    fig = chart_figure(periods, bucket)
    if fig is None:
        return ""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(periods: dict[dt.datetime, Counts], bucket: str, caption: str) -> str:
    head = (
        "<tr><th>period (UTC)</th><th>inspected</th><th>anomalous</th><th>flag rate</th><th>reviewed</th>"
        "<th>false alarms</th><th>false-alarm rate</th><th>defects</th><th>defect rate</th><th>missed</th></tr>"
    )
    body = []
    for start in sorted(periods, reverse=True):
        c = periods[start]
        body.append(
            f"<tr><td>{_label(start, bucket)}</td><td>{c.inspected}</td><td>{c.anomalous}</td><td>{_pct(c.flag_rate)}</td>"
            f"<td>{c.reviewed}</td><td>{c.false_alarms}</td><td>{_pct(c.false_alarm_rate)}</td>"
            f"<td>{c.reviewed_defect}</td><td>{_pct(c.defect_rate)}</td><td>{c.missed}</td></tr>"
        )
    return f"<table><caption>{html.escape(caption)}</caption>{head}{''.join(body)}</table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
caption{text-align:left;font-weight:bold;padding:4px 0}
.totals{font-size:1.1em}
"""


def render_report(log: InspectionLog, *, bucket: str = "auto", title: str = "Inspection report") -> str:
    """The whole report as one HTML document."""
    used, overall, per_model, total = aggregate(log.iter_outcomes(), bucket)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>Generated {generated} from {html.escape(log.backend)} inspection log. ",
        "False-alarm and defect rates need operator reviews (the web page's review buttons or "
        "<code>POST /v1/inspections/{id}/review</code>).</p>",
        f"<p class='totals'>{total.inspected} inspections, {total.anomalous} anomalous (flag rate "
        f"{_pct(total.flag_rate)}); {total.reviewed} reviewed: false-alarm rate {_pct(total.false_alarm_rate)}, "
        f"defect rate {_pct(total.defect_rate)}, {total.missed} missed.</p>",
    ]
    if not total.inspected:
        parts.append("<p>The log is empty.</p>")
    else:
        chart = _chart(overall, used)
        if chart:
            parts.append(f"<img alt='rates over time' src='data:image/png;base64,{chart}'>")
        parts.append(_table(overall, used, f"all models, per {used}"))
        for model in sorted(per_model):
            parts.append(_table(per_model[model], used, f"model {model}, per {used}"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(db: str, out: str | Path, *, bucket: str = "auto") -> Path:
    """Open the log at `db` (URL or SQLite file) read-only in spirit (no migration) and write the report."""
    from glass_ad.serve.store import DatabaseError, database_url

    url = database_url(db, ".")
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(f"no inspection log at {db}")
    log = InspectionLog.open(url, migrate=False)
    try:
        if log.schema_version() is None:
            raise DatabaseError(f"{db} holds no inspection log (no glass_schema table)")
        document = render_report(log, bucket=bucket)
    finally:
        log.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(document, encoding="utf-8")
    return out
