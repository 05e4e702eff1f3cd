"""The web dashboard of the status service, at `GET /` on the daemon's HTTP address.

Server-rendered HTML (`layout`, `pages`: pure, data in, text out), a little CSS and JavaScript of
our own under `static/` (no third-party code, nothing from the internet, no build step), and the
routes that gather the data (`routes`): the status store, the scheduler's reports, and the event
hub. Every page reads fine with JavaScript off; with it, the page's live region is fetched again
whenever an event arrives on the dashboard's event stream (`/live`), and a job's log tail follows.
"""

from .routes import Dashboard

__all__ = ["Dashboard"]
