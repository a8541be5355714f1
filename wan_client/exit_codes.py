"""Exit statuses of the client commands, for scripts (``wan-serve generate ...; case $? in ...``)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a client command's exit status means. 2 is click's usage error (bad options)."""

    OK = 0  #: done: the job succeeded, or the command did what it says
    JOB_FAILED = 1  #: the job ended ``error``
    USAGE = 2  #: the command line is wrong (click's own code)
    CANCELED = 3  #: the job ended ``canceled``
    REFUSED = 4  #: the service refused the request (a 4xx answer: bad input, unknown job, queue full)
    UNREACHABLE = 5  #: no answer from the service, or a 5xx
    NOT_READY = 6  #: ``server status``: some variant has no running generator replica
    INTERRUPTED = 130  #: Ctrl-C, and the job was left running (128 + SIGINT, as shells report it)
