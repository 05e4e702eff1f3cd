"""`rmcs`: the command line for users of the scheduler, on the producers' `Client`.

Submitting goes through the broker (the wire contract), so it works while the daemon is down;
looking at jobs and clusters goes through the daemon's HTTP API. Exit codes: 0 done, 1 the job
ended badly (or the request could not be carried out), 2 bad arguments, 3 broker or API
unreachable, 4 unknown job, 5 gave up waiting (`--timeout`), 130 interrupted.

    parser.py   the arguments            output.py   exit codes, CliError, text formats
    context.py  settings -> Client       submit.py   rmcs submit (--wait)
    views.py    list, show, logs, clusters (HTTP API)
    control.py  stop, events, declare    main.py     one command per run
    demo.py     rmcs-demo: local clusters, the daemon, example jobs
"""

from .main import main
from .output import CliError
from .parser import build_parser
from .submit import build_job

__all__ = ["main", "CliError", "build_parser", "build_job"]
