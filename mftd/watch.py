"""``mftd watch``: one job's live progress in a terminal (a redrawn bar) or for scripts (JSON lines).

It reads the job's Server-Sent Events stream (``/v1/live/jobs/{id}``: job snapshots, new metrics,
new events), and while the job is not running it asks the daemon why: the device's reasons, the job
that holds the one training slot, or the job's own status reason.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional, TextIO

from mftd.client import Client, DaemonNotRunningError

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
PACE_WINDOW = 20
REASONS_EVERY_SECONDS = 5.0
RECONNECT_SECONDS = 1.0
RECONNECT_GIVE_UP_SECONDS = 60.0
SHOWN_EVENT_KINDS = ("status", "checkpoint", "error", "stop_request", "artifacts")
BAR_CELLS_MAX = 30


@dataclass
class Pace:
    """Steps per second from the latest (time, step) samples: metric timestamps when there are metrics, else arrival times."""

    samples: deque = field(default_factory=lambda: deque(maxlen=PACE_WINDOW))

    def add(self, seconds: float, step: int) -> None:
        if not self.samples or step > self.samples[-1][1]:
            self.samples.append((seconds, step))
        elif step < self.samples[-1][1]:  # resumed from an earlier checkpoint: the old pace no longer applies
            self.samples.clear()
            self.samples.append((seconds, step))

    def eta_seconds(self, step: int, total_steps: Optional[int]) -> Optional[float]:
        if not total_steps or len(self.samples) < 2:
            return None
        (first_time, first_step), (last_time, last_step) = self.samples[0], self.samples[-1]
        if last_step <= first_step or last_time <= first_time:
            return None
        return max(0, total_steps - step) * (last_time - first_time) / (last_step - first_step)


@dataclass
class WatchState:
    """What is known about the watched job; ``progress()`` is what gets shown."""

    job: dict[str, Any] = field(default_factory=dict)
    tokens_per_second: Optional[float] = None
    pace: Pace = field(default_factory=Pace)
    reasons: list[str] = field(default_factory=list)
    has_metrics: bool = False

    def add_job(self, job: dict[str, Any], now: float) -> None:
        self.job = job
        if not self.has_metrics:  # without metrics, the pace comes from when the steps were seen
            self.pace.add(now, int(job.get("step") or 0))

    def add_metrics(self, metrics: list[dict[str, Any]]) -> None:
        if metrics and not self.has_metrics:
            self.has_metrics = True
            self.pace.samples.clear()
        for metric in metrics:
            if metric.get("split") != "train":
                continue
            if isinstance(metric.get("tokens_per_second"), (int, float)):
                self.tokens_per_second = metric["tokens_per_second"]
            moment = _epoch_seconds(metric.get("created_at"))
            if moment is not None:
                self.pace.add(moment, int(metric.get("step", 0)))

    def progress(self) -> dict[str, Any]:
        job = self.job
        running = job.get("status") == "running"
        eta = self.pace.eta_seconds(job.get("step", 0), job.get("total_steps")) if running else None
        return {
            "id": job.get("id"),
            "status": job.get("status"),
            "step": job.get("step", 0),
            "total_steps": job.get("total_steps"),
            "progress": job.get("progress"),
            "loss": job.get("loss"),
            "tokens_per_second": self.tokens_per_second if running else None,
            "eta_seconds": None if eta is None else round(eta, 1),
            "reasons": [] if running else self.reasons,
        }


def _epoch_seconds(iso: Optional[str]) -> Optional[float]:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_line(progress: dict[str, Any], width: int = 80) -> str:
    """One line: status, a bar, step/total, loss, tokens/s, ETA, and the reasons while the job waits."""
    total, step = progress.get("total_steps"), progress.get("step", 0)
    parts = [f"job {progress.get('id')} {progress.get('status')}"]
    if total:
        cells = max(10, min(BAR_CELLS_MAX, width // 4))
        filled = int(cells * min(1.0, step / total)) if total else 0
        parts.append("[" + "#" * filled + "-" * (cells - filled) + "]")
        parts.append(f"{step}/{total} {100 * min(1.0, step / total):3.0f}%")
    else:
        parts.append(f"step {step}")
    if isinstance(progress.get("loss"), (int, float)):
        parts.append(f"loss {progress['loss']:.4g}")
    if isinstance(progress.get("tokens_per_second"), (int, float)):
        parts.append(f"{progress['tokens_per_second']:.0f} tok/s")
    if progress.get("eta_seconds") is not None:
        parts.append(f"ETA {format_duration(progress['eta_seconds'])}")
    line = "  ".join(parts)
    if progress.get("reasons"):
        line += " — " + "; ".join(progress["reasons"])
    return line


def waiting_reasons(client: Client, job: dict[str, Any]) -> list[str]:
    """Why a job that is not running is not running, as the daemon sees it now."""
    status = job.get("status")
    if status in FINAL_STATUSES:
        return [job["status_reason"]] if job.get("status_reason") else []
    if status == "paused":
        return [f"paused; `mftd resume {job.get('id')}` to continue it"]
    reasons = [job["status_reason"]] if status in ("waiting", "interrupted") and job.get("status_reason") else []
    if status == "queued":
        running = client.get("/v1/jobs", params={"status": "running", "limit": 1}).get("data", [])
        if running and running[0].get("id") != job.get("id"):
            reasons.append(f"job {running[0]['id']} is training (one job at a time)")
    device = client.get("/v1/device")
    if not device.get("can_train"):
        reasons.extend(device.get("reasons") or ["the device cannot train right now"])
    if job.get("not_before"):
        reasons.append(f"not before {job['not_before']}")
    return reasons or (["starting"] if status == "queued" else [])


class Display:
    """Writes progress: a bar redrawn in place on a terminal, a line per change otherwise, or JSON lines."""

    def __init__(self, out: TextIO, as_json: bool, width: Optional[int] = None):
        self.out = out
        self.as_json = as_json
        self.in_place = out.isatty() and not as_json
        self._width = width
        self._last = ""

    @property
    def width(self) -> int:
        return self._width or shutil.get_terminal_size().columns

    def progress(self, progress: dict[str, Any]) -> None:
        if self.as_json:
            text = json.dumps({"type": "progress", **progress})
        else:
            text = progress_line(progress, self.width)
        if text == self._last:
            return
        self._last = text
        if self.in_place:
            self.out.write("\r\x1b[2K" + text[: max(10, self.width - 1)])
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def event(self, event: dict[str, Any]) -> None:
        if self.as_json:
            self.out.write(json.dumps({"type": "event", **event}) + "\n")
        elif event.get("kind") in SHOWN_EVENT_KINDS or event.get("level") in ("warning", "error"):
            moment = (event.get("created_at") or "")[11:19]
            prefix = "\r\x1b[2K" if self.in_place else ""
            self.out.write(f"{prefix}{moment}  {event.get('message', '')}\n")
            self._last = ""  # redraw the bar below the event
        self.out.flush()

    def close(self) -> None:
        if self.in_place and self._last:
            self.out.write("\n")
            self.out.flush()


def watch(client: Client, job_id: int, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Show job ``job_id``'s progress until it ends; 0 if it succeeded, 1 if it failed or was cancelled.

    Raises:
        ApiError: the job does not exist, or the token is refused.
        DaemonNotRunningError: the daemon is gone for longer than a minute.
    """
    state = WatchState(job=client.get(f"/v1/jobs/{job_id}"))
    display = Display(out, as_json)
    seen_events: set[int] = set()
    last_reasons, reasons_for = float("-inf"), None
    lost_since: Optional[float] = None
    try:
        while state.job.get("status") not in FINAL_STATUSES:
            try:
                for name, payload in client.stream(f"/v1/live/jobs/{job_id}"):
                    lost_since = None
                    if name == "job":
                        state.add_job(payload, time.time())
                    elif name == "metrics":
                        state.add_metrics(payload)
                    elif name == "event" and payload.get("id") not in seen_events:
                        seen_events.add(payload.get("id"))
                        display.event(payload)
                    status = state.job.get("status")
                    if status != "running" and (status != reasons_for or time.monotonic() - last_reasons >= REASONS_EVERY_SECONDS):
                        state.reasons = waiting_reasons(client, state.job)
                        last_reasons, reasons_for = time.monotonic(), status
                    display.progress(state.progress())
            except DaemonNotRunningError:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > RECONNECT_GIVE_UP_SECONDS:
                    raise
            if state.job.get("status") not in FINAL_STATUSES:
                time.sleep(RECONNECT_SECONDS)  # the stream closed early (a daemon restart): reconnect
                state.job = client.get(f"/v1/jobs/{job_id}")
        state.reasons = waiting_reasons(client, state.job)
        display.progress(state.progress())
    finally:
        display.close()
    return 0 if state.job.get("status") == "succeeded" else 1
