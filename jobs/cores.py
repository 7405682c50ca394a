"""The worker's cores: pinned to the performance cores, torch's thread count set, both shown on the job."""

from __future__ import annotations

import torch

from jobs.reporting import JobReporter
from mftd.cpu import allowed_cores, format_core_list, performance_cores, pin_to_cores


def use_cores(num_threads: int, reporter: JobReporter) -> list[int]:
    """Pin the worker to the cores it should train on and give torch ``num_threads`` threads.

    The performance cores, unless the job asked for more threads than there are: then every core
    the process may use, so that threads do not queue on a few cores while others idle. Call it
    before torch does any work, so that its thread pool starts on these cores.

    Args:
        num_threads: the resolved thread count (the job's own, or one per performance core).
        reporter: where the event naming the cores and threads goes.

    Returns:
        The cores the worker runs on (pinned, or would have been where pinning failed).
    """
    allowed = sorted(allowed_cores())
    performance = performance_cores(allowed=set(allowed))
    cores = performance if num_threads <= len(performance) else allowed
    problem = None
    try:
        pin_to_cores(cores)
    except OSError as error:
        problem = f"could not pin the worker to them ({error.strerror or error})"
    torch.set_num_threads(num_threads)

    slower = sorted(set(allowed) - set(performance))
    message = f"threads: {num_threads} on cores {format_core_list(cores)}"
    if cores == performance:
        message += f" (the performance cores; slower cores {format_core_list(slower)} left out)" if slower else " (all cores)"
    else:
        message += f" (the job's num_threads; the performance cores are {format_core_list(performance)})"
    level = "info"
    if num_threads > len(allowed):
        level = "warning"
        message += (
            f"; {num_threads} threads on {len(allowed)} cores wait for each other, "
            f"set num_threads to {len(performance)} or leave it out"
        )
    if problem:
        level = "warning"
        message += f"; {problem}"
    reporter.event(
        message,
        level=level,
        data={"threads": num_threads, "cores": cores, "performance_cores": performance, "allowed_cores": allowed, "pinned": problem is None},
    )
    return cores
