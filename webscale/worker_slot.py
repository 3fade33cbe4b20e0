"""One worker process as the supervisor keeps track of it (supervisor.py).

A slot outlives its processes: a worker that dies is started again in the same slot, with the
same index and notify socket, after a backoff counted in `quick_deaths`.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field

from .loop import Timer


@dataclass(slots=True)
class WorkerSlot:
    index: int
    notify_sock: socket.socket
    notify_path: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: bool = False
    last_heartbeat: float = 0.0
    status: str = "starting"
    quick_deaths: int = 0
    restart_timer: Timer | None = None
    reload_when_ready: bool = False
    exit_codes: list[int] = field(default_factory=list)
