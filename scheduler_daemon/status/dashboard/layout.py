"""The dashboard's page shell and small HTML pieces: escaping, times, ages, state badges and
resource bars. Pure: strings in, strings out."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode

GIB = 1024 ** 3
NAV = (("overview", "/", "Overview"), ("jobs", "/jobs", "Jobs"), ("clusters", "/clusters", "Clusters"))
FINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED", "LOST", "REJECTED", "CANCELLED", "EXPIRED"})


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def url(path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return esc(path + ("?" + query if query else ""))


def when(ts: str | None) -> str:
    """An RFC 3339 time as a <time> element showing the UTC time of day (the date when not today)."""
    if not ts:
        return "<span class=muted>never</span>"
    try:
        dt = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return esc(ts)
    today = datetime.now(timezone.utc).date() == dt.date()
    shown = dt.strftime("%H:%M:%S.") + f"{dt.microsecond // 1000:03d}" if today else dt.strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{esc(ts)}" title="{esc(ts)}">{shown}</time>'


def age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 1:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def badge(state: str | None) -> str:
    state = state or "UNKNOWN"
    return f'<span class="badge s-{esc(state.lower())}">{esc(state)}</span>'


def health(value: str | None) -> str:
    value = value or "unknown"
    mark = {"up": "●", "degraded": "◐", "down": "○"}.get(value, "?")
    return f'<span class="health h-{esc(value)}"><span aria-hidden="true">{mark}</span> {esc(value)}</span>'


def amount(resource: str, value: float) -> str:
    if resource == "memory":
        return f"{value / GIB:.1f} GiB"
    return f"{value:g}"


def bar(resource: str, free: float, total: float) -> str:
    """Free of total as text, with a bar of the used share (the text carries it for screen readers)."""
    used = 0.0 if total <= 0 else min(1.0, max(0.0, (total - free) / total))
    label = "Memory" if resource == "memory" else resource
    return (f'<div class="bar"><span class="bar-label">{esc(label)}</span>'
            f'<span class="bar-text">{esc(amount(resource, free))} free of {esc(amount(resource, total))}</span>'
            f'<span class="bar-track" aria-hidden="true"><span class="bar-used" style="width:{used * 100:.1f}%">'
            '</span></span></div>')


def bars(free: Mapping[str, float], total: Mapping[str, float]) -> str:
    shown = [r for r in ("CPU", "GPU", "memory") if total.get(r)]
    if not shown:
        return '<p class="muted">no resources reported yet</p>'
    return "".join(bar(r, float(free.get(r, 0.0)), float(total[r])) for r in shown)


def table(caption: str, headers: Iterable[str], rows: Iterable[Iterable[str]], *, empty: str,
          cls: str = "") -> str:
    """A table with a caption and column headers; cells are HTML already escaped."""
    rows = list(rows)
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in headers)
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table class="{cls}"><caption>{esc(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def shell(title: str, active: str, before: str, live: str, after: str = "", *,
          data: Mapping[str, str] | None = None) -> str:
    """A whole page: `before`, the live region (the part the page's script fetches again when
    something changes), then `after`."""
    nav = "".join(f'<li><a href="{href}"{" aria-current=page" if key == active else ""}>{name}</a></li>'
                  for key, href, name in NAV)
    attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in (data or {}).items())
    region = f'<div id="live" data-live-page="{esc(active)}">{live}</div>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{esc(title)} · rmcs</title>
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head>
<body data-page="{esc(active)}"{attrs}>
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<p class="brand"><a href="/">rmcs</a></p>
<nav aria-label="Main"><ul>{nav}</ul></nav>
<p class="livestate" id="livestate" role="status" aria-live="polite">
<noscript>Not live: JavaScript is off. Reload to see changes.</noscript></p>
</header>
<main id="main" tabindex="-1">
{before}{region}{after}
</main>
</body>
</html>
"""
