"""The training worker process: ``python -m jobs.worker JOB_ID --data-dir DIR``.

The daemon starts it (``mftd.protocol.worker_command``) and reads how the run ended from the exit
code alone:

- ``EXIT_SUCCEEDED`` (0): trained to the end, artifacts saved.
- ``EXIT_STOPPED`` (75): SIGTERM/SIGINT (or the daemon died); a checkpoint of the last completed
  optimizer step is on disk.
- ``EXIT_BAD_CONFIG`` (78): the job cannot run as configured (config, model or dataset); retrying will not help.
- ``EXIT_FAILED`` (1): anything else went wrong.

For 78 and 1 the newest ``error`` event of the job says what went wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import traceback
from pathlib import Path
from typing import Optional

from jobs.errors import JobNotFoundError, JobSetupError
from jobs.reporting import Heartbeat, JobReporter
from jobs.stop import StopSignal, ask_for_sigterm_when_parent_dies, install_stop_handlers
from mftd.db import make_engine
from mftd.protocol import EXIT_BAD_CONFIG, EXIT_FAILED, EXIT_STOPPED, EXIT_SUCCEEDED
from mftd.settings import Settings

logger = logging.getLogger("jobs.worker")

OUT_OF_MEMORY_HINTS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def run_worker(job_id: int, settings: Settings, stop: StopSignal) -> int:
    """Run job ``job_id`` and map how it ended to the worker's exit code (the one place that does).

    Args:
        job_id: the job's row id.
        settings: where the data dir and database are.
        stop: the stop flag the training loop reads.

    Returns:
        One of the ``mftd.protocol.EXIT_*`` codes.
    """
    # Imported here so that ``--help`` and argument errors answer without loading torch.
    from jobs.job_run import run_job
    from jobs.training import LoopEnd

    engine = make_engine(settings.db_path)
    reporter = JobReporter(engine, job_id)
    with Heartbeat(reporter):
        try:
            end = run_job(job_id, settings, engine, reporter, stop)
        except JobNotFoundError as error:
            logger.error("%s", error)  # no job row to attach an event to
            return EXIT_BAD_CONFIG
        except JobSetupError as error:
            _report_failure(reporter, str(error), error)
            return EXIT_BAD_CONFIG
        except Exception as error:
            _report_failure(reporter, describe_failure(error), error)
            return EXIT_FAILED
    return EXIT_STOPPED if end == LoopEnd.STOPPED else EXIT_SUCCEEDED


def describe_failure(error: BaseException) -> str:
    """A one-line message for an unexpected error: what went wrong and what to try."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, MemoryError) or any(hint in text.lower() for hint in OUT_OF_MEMORY_HINTS):
        return (
            f"training ran out of memory ({text}); lower batch_size or max_seq_len, turn on gradient_checkpointing, "
            "or use method lora"
        )
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"the disk is full ({text}); free some storage or lower keep_checkpoints, then resume the job"
    return f"training failed: {type(error).__name__}: {text}; the traceback is in this event and in worker.log"


def _report_failure(reporter: JobReporter, message: str, error: BaseException) -> None:
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    logger.error("%s\n%s", message, details)
    try:
        reporter.event(message, level="error", kind="error", data={"error_type": type(error).__name__, "traceback": details})
    except Exception as report_error:  # the database itself may be what failed; the log line above remains
        logger.error("could not record the error event: %s", report_error)


def _setup_logging() -> None:
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def _quiet_progress_bars() -> None:
    # Loading bars redraw with carriage returns, which make worker.log unreadable.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.worker", description="Train one mftd job (started by the daemon).")
    parser.add_argument("job_id", type=int, help="The job's id in the database.")
    parser.add_argument("--data-dir", type=Path, required=True, help="The daemon's data dir (database, jobs/<id>/).")
    args = parser.parse_args(argv)
    _setup_logging()
    # Before anything slow (importing torch takes seconds): a SIGTERM from now on means "checkpoint and exit 75".
    stop = StopSignal()
    install_stop_handlers(stop)
    ask_for_sigterm_when_parent_dies(stop)
    _quiet_progress_bars()
    return run_worker(args.job_id, Settings(data_dir=args.data_dir), stop)


if __name__ == "__main__":
    sys.exit(main())
