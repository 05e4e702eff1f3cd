"""The dashboard's four views as HTML: overview, jobs, a job, clusters. Pure: each takes what
`routes` gathered and returns the page's parts (what comes before its live region, the live
region, what comes after), so a live refresh renders exactly what a reload would."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..records import STATES, JobStatus
from .layout import FINAL, age, amount, badge, bars, esc, health, table, url, when


@dataclass(frozen=True)
class Parts:
    title: str
    before: str
    live: str
    after: str = ""
    data: Mapping[str, str] = field(default_factory=dict)
    status: int = 200


# ---- overview -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    counts: Mapping[str, int]
    scheduler: Mapping[str, Any]           # the scheduler's report: waiting jobs, queues
    finished_last_hour: int
    dispatched_last_5_min: int
    clusters: Sequence[Mapping[str, Any]]
    report_age_s: float | None
    queues: Sequence[Mapping[str, Any]] = ()  # GET /api/v1/queues: each queue's use and share


def overview(o: Overview) -> Parts:
    waiting = len(o.scheduler.get("waiting") or [])
    queues = {q.get("name"): q for q in o.scheduler.get("queues") or []}
    in_broker = queues.get("default", {}).get("waiting_in_broker")
    running = o.counts.get("RUNNING", 0)
    dispatched = o.counts.get("DISPATCHED", 0)
    stats = [
        ("n-waiting", "Waiting in the daemon", f"{waiting}", url("/jobs", state="ACCEPTED")),
        ("n-broker", "Waiting in RabbitMQ", "—" if in_broker is None else f"{in_broker}", None),
        ("n-running", "Running", f"{running}", url("/jobs", state="RUNNING")),
        ("n-dispatched", "Dispatched, not running yet", f"{dispatched}", url("/jobs", state="DISPATCHED")),
        ("n-finished", "Finished in the last hour", f"{o.finished_last_hour}", None),
        ("n-rate", "Dispatch rate (last 5 min)", f"{o.dispatched_last_5_min / 5:.1f} / min", None),
    ]
    cells = "".join(
        f'<div class="stat"><dt>{esc(label)}</dt><dd id="{key}">'
        + (f'<a href="{link}">{value}</a>' if link else value) + "</dd></div>"
        for key, label, value, link in stats)
    live = (f'<section aria-labelledby="h-jobs"><h2 id="h-jobs">Jobs</h2><dl class="stats">{cells}</dl></section>'
            '<section aria-labelledby="h-queues"><h2 id="h-queues">Queues</h2>'
            + table("Jobs per queue", ("Queue", "Weight", "Waiting in the daemon", "Waiting in RabbitMQ",
                                       "Dispatched or running", "Resources held", "Dominant share"),
                    _queue_rows(o.queues, waiting, in_broker, running + dispatched), empty="no queues") + "</section>"
            + '<section aria-labelledby="h-clusters"><h2 id="h-clusters">Clusters</h2>'
            + _report_note(o.report_age_s)
            + ('<div class="cards">' + "".join(_cluster_card(c) for c in o.clusters) + "</div>"
               if o.clusters else '<p class="empty">No cluster reported yet.</p>') + "</section>")
    return Parts("Overview", "<h1>Fleet overview</h1>", live)


def _queue_rows(queues: Sequence[Mapping[str, Any]], waiting: int, in_broker: Any, in_flight: int) -> list[list[str]]:
    """A row per queue as the scheduler reported them; before its first report, `default` alone
    with the job counts."""
    def num(value: Any) -> str:
        return "—" if value is None else esc(value)

    if not queues:
        return [[f'<a href="{url("/jobs", queue="default")}">default</a>', "—", f"{waiting}", num(in_broker),
                 f"{in_flight}", "—", "—"]]
    return [[f'<a href="{url("/jobs", queue=str(q.get("name")))}">{esc(q.get("name"))}</a>', num(q.get("weight")),
             num(q.get("waiting_in_daemon")), num(q.get("waiting_in_broker")), num(q.get("running")),
             esc(", ".join(f"{k} {amount(k, float(v))}" for k, v in sorted((q.get("held") or {}).items())) or "—"),
             "—" if q.get("dominant_share") is None else f"{float(q['dominant_share']):.1%}"]
            for q in queues]


def _report_note(report_age: float | None) -> str:
    if report_age is None:
        return '<p class="warn">The scheduler has not reported yet.</p>'
    if report_age > 10:
        return f'<p class="warn">The scheduler last reported {esc(age(report_age))}: what follows may be stale.</p>'
    return ""


def _cluster_card(c: Mapping[str, Any]) -> str:
    name = str(c.get("name"))
    probe = c.get("last_probe")
    latency = c.get("latency_s")
    return (f'<article class="card" aria-labelledby="c-{esc(name)}">'
            f'<h3 id="c-{esc(name)}"><a href="/clusters#cluster-{esc(name)}">{esc(name)}</a></h3>'
            f'<p>{health(c.get("health"))} · {len(c.get("nodes") or [])} nodes · probe '
            f'{esc(age(None if probe is None else time.time() - float(probe)))}'
            + ("" if latency is None else f", {float(latency) * 1000:.0f} ms") + "</p>"
            + bars(c.get("available") or {}, c.get("total") or {}) + "</article>")


# ---- jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobsView:
    filters: Mapping[str, str]         # state, queue, owner, cluster, tag (as given in the URL)
    jobs: Sequence[JobStatus]
    next_cursor: str | None
    paged: bool                        # this is not the first page
    clusters: Sequence[str]
    error: str | None = None
    queues: Sequence[str] = ("default",)


def jobs(v: JobsView) -> Parts:
    f = v.filters
    states = "".join(f'<option{" selected" if f.get("state") == s else ""}>{s}</option>' for s in sorted(STATES))
    queues = "".join(f'<option{" selected" if f.get("queue") == q else ""}>{esc(q)}</option>' for q in v.queues)
    clusters = "".join(f'<option{" selected" if f.get("cluster") == c else ""}>{esc(c)}</option>'
                       for c in v.clusters)
    form = f"""<h1>Jobs</h1>
<form class="filters" method="get" action="/jobs" role="search" aria-label="Filter jobs">
<label>State <select name="state"><option value="">any</option>{states}</select></label>
<label>Queue <select name="queue"><option value="">any</option>{queues}</select></label>
<label>Owner <input name="owner" value="{esc(f.get("owner"))}" autocomplete="off"></label>
<label>Cluster <select name="cluster"><option value="">any</option>{clusters}</select></label>
<label>Tag <input name="tag" value="{esc(f.get("tag"))}" autocomplete="off"></label>
<button type="submit">Apply</button> <a href="/jobs">Clear</a>
</form>"""
    shown = ", ".join(f"{k} {val}" for k, val in f.items() if val) or "all jobs"
    rows = [[f'<a href="{url("/jobs/" + j.submission_id)}">{esc(j.submission_id)}</a>', badge(j.state),
             esc(j.queue), esc(j.owner or "—"), esc(j.cluster or "—"), f"{j.attempt}",
             esc("—" if j.priority is None else j.priority), esc(", ".join(j.tags) or "—"), when(j.updated)]
            for j in v.jobs]
    pager = []
    if v.paged:
        pager.append(f'<a href="{url("/jobs", **f)}">First page</a>')
    if v.next_cursor:
        pager.append(f'<a rel="next" href="{url("/jobs", **f, cursor=v.next_cursor)}">Next page</a>')
    live = (f'<p class="error" role="alert">{esc(v.error)}</p>' if v.error else "") + table(
        f"Jobs, newest first: {shown}",
        ("Submission", "State", "Queue", "Owner", "Cluster", "Attempt", "Priority", "Tags", "Updated (UTC)"),
        rows, empty=f"No jobs match ({shown}).", cls="jobs") + (
        f'<nav class="pager" aria-label="Pages">{" ".join(pager)}</nav>' if pager else "")
    return Parts("Jobs", form, live, status=400 if v.error else 200)


# ---- one job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    job: JobStatus
    waiting: Mapping[str, Any] | None      # its entry in the scheduler's window, if held there
    waiting_count: int
    dashboard_url: str | None              # its cluster's Ray dashboard
    logs: str | None
    logs_note: str | None                  # why there are no logs, when there are none
    tokens: bool                           # the API wants a token for a stop
    notice: str | None = None
    notice_ok: bool = True
    status: int = 200


def job(v: JobView) -> Parts:
    j = v.job
    sid = j.submission_id
    before = f'<h1>Job <span class="mono">{esc(sid)}</span></h1>'
    token = ('<label>Your API token <input type="password" name="token" id="stop-token" '
             'autocomplete="current-password" required></label>' if v.tokens else "")
    notice = "" if v.notice is None else esc(v.notice)
    after = f"""<section aria-labelledby="h-stop" id="stop"{" hidden" if j.final else ""}>
<h2 id="h-stop">Stop this job</h2>
<form method="post" action="{url(f"/jobs/{sid}/stop")}" id="stop-form" data-sid="{esc(sid)}">
{token}<label>Reason <input name="reason" id="stop-reason" maxlength="1024" autocomplete="off"></label>
<button type="submit" id="stop-button">Stop job</button>
</form>
<p id="stop-result" role="status" class="{"ok" if v.notice_ok else "error"}">{notice}</p>
</section>
<section aria-labelledby="h-logs">
<h2 id="h-logs">Log tail</h2>
<p class="muted" id="log-note">{esc(v.logs_note or "The last lines of the job's output on its cluster.")}</p>
<pre id="log" tabindex="0" aria-label="Log tail">{esc(v.logs or "")}</pre>
</section>"""
    data = {"job": sid, "final": "true" if j.final else "false"}
    return Parts(f"Job {sid}", before, _job_live(v), after, data, v.status)


def _job_live(v: JobView) -> str:
    j = v.job
    ray = "" if not (v.dashboard_url and j.cluster) else (
        f' · <a href="{esc(v.dashboard_url.rstrip("/"))}/#/jobs/{esc(_ray_id(j))}">'
        f"open in {esc(j.cluster)}'s Ray dashboard</a>")
    facts = [("State", badge(j.state) + (f' <span class="muted">{esc(j.message)}</span>' if j.message else "")),
             ("Queue", "default"), ("Owner", esc(j.owner or "—")), ("Cluster", esc(j.cluster or "not placed") + ray),
             ("Attempt", f"{j.attempt}"), ("Priority", esc("—" if j.priority is None else j.priority)),
             ("Tags", esc(", ".join(j.tags) or "—")),
             ("Resources", esc(", ".join(f"{k} {amount(k, float(n) * (1024 ** 3 if k == 'memory' else 1))}"
                                         for k, n in j.resource_requirements.items()) or "none asked")),
             ("Accepted", when(j.created)), ("Last change", when(j.updated))]
    dl = "".join(f"<div><dt>{esc(k)}</dt><dd>{val}</dd></div>" for k, val in facts)
    steps = [[when(t.ts), badge(t.state), f"{t.attempt}", esc(t.cluster or "—"), esc(t.message or "")]
             for t in j.transitions]
    attempts: dict[int, list[str]] = {}
    for t in j.transitions:
        attempts.setdefault(t.attempt, []).append(t.state)
    attempt_rows = [[f"{n}", esc(next((t.cluster for t in j.transitions if t.attempt == n and t.cluster), "—")),
                     esc(" → ".join(states))] for n, states in sorted(attempts.items())]
    return (f'<span hidden data-final="{"true" if j.final else "false"}" id="job-state">{esc(j.state)}</span>'
            f'<dl class="facts">{dl}</dl>'
            f'<section aria-labelledby="h-why"><h2 id="h-why">Placement</h2>{_why(v)}</section>'
            '<section aria-labelledby="h-timeline"><h2 id="h-timeline">Timeline</h2>'
            + table("Every change of state, oldest first (UTC)", ("Time", "State", "Attempt", "Cluster", "Detail"),
                    steps, empty="No events recorded yet.", cls="timeline")
            + "</section>"
            '<section aria-labelledby="h-attempts"><h2 id="h-attempts">Attempts</h2>'
            + table("Attempts", ("Attempt", "Cluster", "States"), attempt_rows, empty="No attempts yet.")
            + "</section>")


def _ray_id(j: JobStatus) -> str:
    return j.submission_id if j.attempt == 1 else f"{j.submission_id}~{j.attempt}"


def _why(v: JobView) -> str:
    j = v.job
    if v.waiting is not None:
        reason = v.waiting.get("reason") or "not looked at by a scheduling pass yet"
        return (f'<p id="position">Waiting in the daemon: position {esc(v.waiting.get("position"))} '
                f"of {v.waiting_count} (priority first, then age).</p>"
                f'<p class="why">Why it waits: {esc(reason)}</p>')
    placed = next((t for t in reversed(j.transitions) if t.state == "DISPATCHED" and t.attempt == j.attempt), None)
    if placed is not None:
        return f'<p class="why">Why it runs on {esc(placed.cluster)}: {esc(placed.message or "placed (no explanation recorded)")}</p>'
    if j.state in FINAL:
        return f'<p class="why">It never reached a cluster: {esc(j.message or j.state.lower())}</p>'
    return '<p class="why">Not in the daemon\'s window: it waits in RabbitMQ until the window has room.</p>'


# ---- clusters -----------------------------------------------------------------------------


def clusters(views: Sequence[Mapping[str, Any]], history: Mapping[str, Sequence[Mapping[str, Any]]],
             report_age: float | None) -> Parts:
    live = _report_note(report_age) + ("".join(_cluster_section(c, history.get(str(c.get("name")), ()))
                                               for c in views) or '<p class="empty">No cluster reported yet.</p>')
    return Parts("Clusters", "<h1>Clusters</h1>", live)


def _cluster_section(c: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    name = str(c.get("name"))
    probe = c.get("last_probe")
    latency = c.get("latency_s")
    resources = sorted({r for n in c.get("nodes") or [] for r in n.get("total", {})},
                       key=lambda r: ({"CPU": 0, "GPU": 1, "memory": 2}.get(r, 3), r))
    nodes = [[f'<span class="mono" title="{esc(n.get("node_id"))}">{esc(str(n.get("node_id"))[:12])}</span>']
             + [esc(f'{amount(r, float(n.get("available", {}).get(r, 0)))} / {amount(r, float(n["total"][r]))}')
                if r in n.get("total", {}) else "—" for r in resources] for n in c.get("nodes") or []]
    changes = [[when(h.get("ts")), health(h.get("health")), esc(h.get("message") or "")] for h in history]
    link = c.get("dashboard_url")
    return (f'<section class="cluster" id="cluster-{esc(name)}" aria-labelledby="h-c-{esc(name)}">'
            f'<h2 id="h-c-{esc(name)}">{esc(name)}</h2>'
            f'<p>{health(c.get("health"))} · probe latency '
            f'{"—" if latency is None else f"{float(latency) * 1000:.1f} ms"} · last probe '
            f'{esc(age(None if probe is None else time.time() - float(probe)))}'
            + (f' · tags {esc(", ".join(c.get("tags") or []))}' if c.get("tags") else "")
            + (f' · <a href="{esc(link)}">Ray dashboard</a>' if link else "") + "</p>"
            + (f'<p class="error">{esc(c.get("error"))}</p>' if c.get("error") else "")
            + bars(c.get("available") or {}, c.get("total") or {})
            + table(f"Nodes of {name}: free / total", ["Node", *[("Memory" if r == "memory" else r) for r in resources]],
                    nodes, empty="No nodes reported.")
            + table(f"Health history of {name}, newest first (UTC)", ("Time", "Health", "Detail"), changes,
                    empty="No health change recorded yet.") + "</section>")


def not_found(what: str) -> Parts:
    return Parts("Not found", "<h1>Not found</h1>", f"<p>{esc(what)}</p><p><a href=\"/jobs\">All jobs</a></p>",
                 status=404)
