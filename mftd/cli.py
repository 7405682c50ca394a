"""The ``mftd`` command line: ``mftd serve`` runs the daemon; every other command talks to it over HTTP.

Settings come from flags, then ``MFTD_*`` environment variables, then defaults. This module
imports neither torch nor the API; ``mftd models import`` runs the GGUF converter as a child
process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from mftd import __version__
from mftd.client import ApiError, Client, find_token, find_url
from mftd.errors import MftdError
from mftd.jobconfig import JobConfig

FINAL_STATUSES = ("succeeded", "failed", "cancelled")
GGUF_IMPORT_MODULE = "jobs.gguf_import"
WAIT_POLL_SECONDS = 1.0


class UsageError(MftdError):
    """A command line that cannot be acted on (an unknown --set field, a bad value)."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        getattr(args, "help_parser", parser).print_help()
        return 2
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `mftd jobs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (MftdError, OSError) as error:
        print(f"mftd: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # pydantic's ValidationError for a bad MFTD_* variable is a ValueError
        print(f"mftd: invalid setting: {error}", file=sys.stderr)
        return 1


# ---- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="The data dir (default: MFTD_DATA_DIR or ~/.local/share/mftd).")
    client = argparse.ArgumentParser(add_help=False, parents=[common])
    client.add_argument("--url", default=argparse.SUPPRESS, help="The daemon's URL (default: MFTD_URL, <data dir>/daemon.json, or http://127.0.0.1:<port>).")
    client.add_argument("--token", default=argparse.SUPPRESS, help="The API token (default: MFTD_TOKEN or <data dir>/token).")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="Print JSON instead of a table.")

    parser = argparse.ArgumentParser(prog="mftd", description="A fine-tuning daemon for phones.", parents=[client])
    parser.add_argument("--version", action="version", version=f"mftd {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Callable, help: str, parents=(client,)) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, parents=list(parents))
        sub.set_defaults(handler=handler, help_parser=sub)
        return sub

    serve = command("serve", cmd_serve, "Run the daemon (HTTP API + scheduler) in the foreground.", parents=(common,))
    serve.add_argument("--host", default=argparse.SUPPRESS, help="Address to listen on (default 127.0.0.1).")
    serve.add_argument("--port", type=int, default=argparse.SUPPRESS, help="Port to listen on (default 8765; 0 picks a free one).")
    serve.add_argument("--allow-remote", action="store_true", default=argparse.SUPPRESS, help="Allow a non-loopback --host.")

    command("ping", cmd_ping, "Exit 0 if the daemon answers, 1 if not.")

    models = command("models", None, "Register, list and import base models.").add_subparsers(title="models commands", metavar="ACTION")
    models_add = models.add_parser("add", help="Register a local Hugging Face folder.", parents=[client])
    models_add.add_argument("name")
    models_add.add_argument("path", type=Path)
    models_add.set_defaults(handler=cmd_models_add)
    models_list = models.add_parser("list", help="List the registered models.", parents=[client, as_json])
    models_list.set_defaults(handler=cmd_models_list)
    models_import = models.add_parser("import", help="Convert a GGUF file once into a Hugging Face folder and register it.", parents=[client])
    models_import.add_argument("file", type=Path)
    models_import.add_argument("--name", required=True)
    models_import.set_defaults(handler=cmd_models_import)

    datasets = command("datasets", None, "Register and list JSONL datasets.").add_subparsers(title="datasets commands", metavar="ACTION")
    datasets_add = datasets.add_parser("add", help="Upload a JSONL file (every line is checked).", parents=[client])
    datasets_add.add_argument("name")
    datasets_add.add_argument("file", type=Path)
    datasets_add.add_argument("--link", action="store_true", help="Register the file where it is instead of uploading a copy.")
    datasets_add.add_argument("--format", default="auto", choices=["auto", "text", "prompt_completion", "messages"], help="The dataset format (default: detected from the keys).")
    datasets_add.set_defaults(handler=cmd_datasets_add)
    datasets_list = datasets.add_parser("list", help="List the registered datasets.", parents=[client, as_json])
    datasets_list.set_defaults(handler=cmd_datasets_list)

    submit = command("submit", cmd_submit, "Queue a fine-tuning job; prints its id.")
    submit.add_argument("--model", required=True, help="Model name (or id).")
    submit.add_argument("--dataset", required=True, help="Dataset name (or id).")
    submit.add_argument("--name", help="A name for the job.")
    submit.add_argument("--priority", type=int, help="Higher runs first (default 0).")
    submit.add_argument("--method", choices=["lora", "dora", "full"])
    submit.add_argument("--max-steps", type=int)
    submit.add_argument("--learning-rate", type=float)
    submit.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="Any job config field (repeatable), e.g. --set batch_size=2.")
    submit.add_argument("--quiet", "-q", action="store_true", help="Print only the job id.")
    submit.add_argument("--json", action="store_true", help="Print the created job as JSON.")

    jobs = command("jobs", cmd_jobs, "List jobs.", parents=(client, as_json))
    jobs.add_argument("--status", help="Only jobs with this status.")

    show = command("show", cmd_show, "Show one job.", parents=(client, as_json))
    show.add_argument("job_id", type=int)
    for action in ("pause", "resume", "cancel"):
        sub = command(action, cmd_job_action, f"{action.capitalize()} a job.")
        sub.add_argument("job_id", type=int)
        sub.set_defaults(action=action)

    logs = command("logs", cmd_logs, "Print a job's events; -f follows them until the job ends.", parents=(client, as_json))
    logs.add_argument("job_id", type=int)
    logs.add_argument("-f", "--follow", action="store_true")

    command("device", cmd_device, "Show the device readings and whether training may run.", parents=(client, as_json))

    watch = command("watch", cmd_watch, "Show a job's live progress (step/total, loss, tokens/s, ETA, and why it waits) until it ends; exit 0 if it succeeded.", parents=(client, as_json))
    watch.add_argument("job_id", type=int)

    open_command = command("open", cmd_open, "Print (and open) a dashboard URL that logs in once with a one-time code.", parents=(client, as_json))
    open_command.add_argument("--no-browser", action="store_true", help="Only print the URL.")

    wait = command("wait", cmd_wait, "Wait until a job ends; exit 0 if it succeeded, else 1 (also when it is paused).")
    wait.add_argument("job_id", type=int)
    wait.add_argument("--timeout", type=float, help="Give up after this many seconds (exit 1).")
    return parser


# ---- helpers ----------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace, **overrides: Any):
    from mftd.settings import Settings

    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir.expanduser().resolve()
    return Settings(**overrides)


def _client(args: argparse.Namespace) -> Client:
    settings = _settings(args)
    url = find_url(settings.data_dir, settings.port, getattr(args, "url", None))
    return Client(url, find_token(settings.data_dir, getattr(args, "token", None)))


def _items(body: Any) -> list[dict]:
    """A list response, whether the API sends a bare list or ``{"data": [...], "count": n}``."""
    if isinstance(body, dict) and "data" in body:
        return list(body["data"])
    return list(body or [])


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _print_table(rows: list[dict], columns: list[tuple[str, str]], empty: str = "") -> None:
    if not rows and empty:
        print(empty)
        return
    header = [title for _key, title in columns]
    cells = [[_cell(row.get(key)) for key, _title in columns] for row in rows]
    widths = [max(len(text) for text in column) for column in zip(header, *cells)]
    for line in [header, *cells]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _parse_set(pairs: list[str]) -> dict[str, Any]:
    """``field=value`` pairs as JobConfig fields; a value is read as JSON when it parses, else as a string."""
    known = set(JobConfig.model_fields)
    fields: dict[str, Any] = {}
    unknown = []
    for pair in pairs:
        key, separator, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not separator or not key:
            raise UsageError(f"--set {pair!r}: expected FIELD=VALUE, e.g. --set batch_size=2")
        if key not in known:
            unknown.append(key)
            continue
        try:
            fields[key] = json.loads(text)
        except ValueError:
            fields[key] = text
    if unknown:
        raise UsageError(f"unknown job config field(s): {', '.join(unknown)}. Known fields: {', '.join(sorted(known))}")
    return fields


def _job_line(job: dict) -> str:
    progress = f"step {job.get('step', 0)}" + (f"/{job['total_steps']}" if job.get("total_steps") else "")
    loss = f", loss {job['loss']:.4g}" if isinstance(job.get("loss"), (int, float)) else ""
    reason = f" — {job['status_reason']}" if job.get("status_reason") else ""
    return f"job {job['id']}: {job['status']} ({progress}{loss}){reason}"


def _event_line(event: dict) -> str:
    moment = event.get("created_at") or ""
    level = event.get("level", "info")
    kind = event.get("kind", "")
    return f"{moment}  {level:<7} {kind:<10} {event.get('message', '')}".rstrip()


# ---- commands ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from mftd.daemon import serve

    overrides = {name: getattr(args, name) for name in ("host", "port", "allow_remote") if hasattr(args, name)}
    settings = _settings(args, **overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    serve(settings)
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    with _client(args) as client:
        health = client.get("/v1/health")
    print(f"mftd is running at {client.url}" + (f" (version {health['version']})" if isinstance(health, dict) and health.get("version") else ""))
    return 0


def cmd_models_add(args: argparse.Namespace) -> int:
    with _client(args) as client:
        model = client.post("/v1/models", json={"name": args.name, "path": str(args.path.expanduser().resolve())})
    print(f"model {model.get('id')} {model.get('name')!r} registered ({model.get('architecture', '?')}, {model.get('num_parameters', '?')} parameters)")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        models = _items(client.get("/v1/models"))
    if args.json:
        _print_json(models)
    else:
        _print_table(models, [("id", "ID"), ("name", "NAME"), ("model_type", "TYPE"), ("num_parameters", "PARAMS"), ("dtype", "DTYPE"), ("path", "PATH")], empty="no models yet: `mftd models add NAME FOLDER` or `mftd models import FILE.gguf --name NAME`")
    return 0


def cmd_models_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    source = args.file.expanduser().resolve()
    if not source.is_file():
        raise UsageError(f"{source} is not a file; give the path of a .gguf file")
    out_dir = settings.models_dir / args.name
    if out_dir.exists():
        raise UsageError(f"{out_dir} already exists; choose another --name, or register it with `mftd models add {args.name} {out_dir}`")
    with _client(args) as client:
        client.get("/v1/health")  # fail before a long conversion if the daemon is not there
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        print(f"converting {source} into {out_dir}", file=sys.stderr)
        command = [sys.executable, "-m", GGUF_IMPORT_MODULE, str(source), str(out_dir)]
        last_message = _run_with_progress(command)
        if last_message is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise UsageError(f"the GGUF import failed: {last_message}")
        try:
            model = client.post("/v1/models", json={"name": args.name, "path": str(out_dir)})
        except ApiError as error:
            raise ApiError(error.status_code, f"{error.detail} (the converted folder is kept at {out_dir}; register it with `mftd models add`)") from error
    print(f"model {model.get('id')} {model.get('name')!r} imported into {out_dir}")
    return 0


def _run_with_progress(command: list[str]) -> Optional[str]:
    """Run a converter that prints JSON progress lines; None if it succeeded, else what went wrong."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1, env=_child_env())
    last = ""
    assert process.stdout is not None
    for line in process.stdout:
        line = line.strip()
        if not line:
            continue
        try:
            payload = json.loads(line)
        except ValueError:
            payload = line
        print(f"  {_describe_progress(payload)}", file=sys.stderr, flush=True)
        last = str(payload.get("message") or last) if isinstance(payload, dict) else line
    code = process.wait()
    if code == 0:
        return None
    return f"{last or 'no output'} (exit code {code})"


def _describe_progress(payload: Any) -> str:
    """One progress line of the converter (``{"stage", "progress": 0..1, "message", ...}``) for people."""
    if not isinstance(payload, dict):
        return str(payload)
    progress = payload.get("progress")
    prefix = f"[{100 * progress:3.0f}%] " if isinstance(progress, (int, float)) else ""
    stage = payload.get("stage")
    text = str(payload.get("message") or stage or json.dumps(payload))
    if isinstance(payload.get("elapsed_seconds"), (int, float)):
        text += f" (still working, {payload['elapsed_seconds']:g} s)"
    if stage == "done" and isinstance(payload.get("seconds"), (int, float)):
        text = f"done in {payload['seconds']:g} s"
    return prefix + text


def _child_env() -> dict[str, str]:
    """The environment for ``python -m jobs...``: this checkout importable when mftd is not installed, no progress bars."""
    env = dict(os.environ)
    env.setdefault("TQDM_DISABLE", "1")  # the JSON progress lines say it already
    root = str(Path(__file__).resolve().parent.parent)
    if (Path(root) / "jobs").is_dir() and root not in env.get("PYTHONPATH", "").split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), root]))
    return env


def cmd_datasets_add(args: argparse.Namespace) -> int:
    path = args.file.expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"{path} is not a file; give the path of a JSONL file")
    with _client(args) as client:
        form = {"name": args.name, "format": args.format}
        if args.link:
            dataset = client.post("/v1/datasets", data={**form, "path": str(path)})
        else:
            with path.open("rb") as file:
                dataset = client.post("/v1/datasets", data=form, files={"file": (path.name, file, "application/jsonl")})
    print(f"dataset {dataset.get('id')} {dataset.get('name')!r} registered ({dataset.get('format', '?')}, {dataset.get('num_examples', '?')} examples)")
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        datasets = _items(client.get("/v1/datasets"))
    if args.json:
        _print_json(datasets)
    else:
        _print_table(datasets, [("id", "ID"), ("name", "NAME"), ("format", "FORMAT"), ("num_examples", "EXAMPLES"), ("size_bytes", "BYTES"), ("path", "PATH")], empty="no datasets yet: `mftd datasets add NAME FILE.jsonl`")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"model": args.model, "dataset": args.dataset}
    body.update(_parse_set(args.set))
    for key in ("name", "priority", "method", "max_steps", "learning_rate"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    with _client(args) as client:
        job = client.post("/v1/jobs", json=body)
    if args.json:
        _print_json(job)
        return 0
    print(job["id"])
    if not args.quiet:
        print(f"job {job['id']} {job.get('status', 'queued')}: follow it with `mftd logs {job['id']} -f`", file=sys.stderr)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    params = {"status": args.status} if args.status else None
    with _client(args) as client:
        jobs = _items(client.get("/v1/jobs", params=params))
    if args.json:
        _print_json(jobs)
        return 0
    for job in jobs:
        total = job.get("total_steps")
        job["progress"] = f"{job.get('step', 0)}/{total}" if total else str(job.get("step", 0))
    _print_table(jobs, [("id", "ID"), ("status", "STATUS"), ("progress", "STEP"), ("loss", "LOSS"), ("priority", "PRIO"), ("name", "NAME"), ("status_reason", "REASON")], empty="no jobs" + (f" with status {args.status}" if args.status else ""))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get(f"/v1/jobs/{args.job_id}")
    if args.json:
        _print_json(job)
        return 0
    width = max(len(key) for key in job)
    for key, value in job.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        print(f"{key:<{width}}  {_cell(value)}")
    return 0


def cmd_job_action(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.post(f"/v1/jobs/{args.job_id}/{args.action}")
    print(_job_line(job))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if not args.follow:
            events = _items(client.get(f"/v1/jobs/{args.job_id}/events"))
            for event in events:
                print(json.dumps(event) if args.json else _event_line(event))
            return 0
        return _follow(client, args.job_id, args.json)


def _follow(client: Client, job_id: int, as_json: bool) -> int:
    """Print the job's events as they happen, until the job is final."""
    last_id: Optional[str] = None
    while True:
        for event_id, event in client.stream_events(job_id, last_id):
            last_id = event_id or last_id
            if event.get("kind") == "end":
                print(json.dumps(event) if as_json else event.get("message", ""), flush=True)
            elif "message" in event:
                print(json.dumps(event) if as_json else _event_line(event), flush=True)
        job = client.get(f"/v1/jobs/{job_id}")
        if job["status"] in FINAL_STATUSES:
            return 0
        time.sleep(WAIT_POLL_SECONDS)  # the stream closed early (e.g. a restart); reconnect and carry on


def cmd_device(args: argparse.Namespace) -> int:
    with _client(args) as client:
        device = client.get("/v1/device")
    if args.json:
        _print_json(device)
        return 0
    can_train = device.get("can_train")
    print(f"can train: {'yes' if can_train else 'no'}")
    for reason in device.get("reasons", []):
        print(f"  - {reason}")
    readings = device.get("readings", [])
    if isinstance(readings, dict):
        readings = list(readings.values())
    rows = []
    for reading in readings:
        value = reading.get("value")
        rows.append(
            {
                "name": reading.get("name"),
                "value": "unavailable" if reading.get("unavailable_reason") else _with_unit(value, reading.get("unit", "")),
                "source": reading.get("source"),
                "note": reading.get("unavailable_reason"),
            }
        )
    if rows:
        print()
        _print_table(rows, [("name", "READING"), ("value", "VALUE"), ("source", "SOURCE"), ("note", "NOTE")])
    _print_device_policy(device)
    return 0


def _print_device_policy(device: dict) -> None:
    """The default constraints, each job's verdict and the throttle, under the readings."""
    checks = device.get("constraints") or []
    if checks:
        print("\ndefault constraints:")
        for check in checks:
            print(f"  {'ok  ' if check.get('holds') else 'FAIL'}  {check.get('constraint', ''):<20} {check.get('detail', '')}")
    jobs = device.get("jobs") or []
    if jobs:
        print("\njobs:")
        for job in jobs:
            verdict = "may train" if job.get("allowed") else "held back: " + "; ".join(job.get("reasons") or [])
            print(f"  job {job.get('job_id')} ({job.get('status')}): {verdict}")
    throttle = device.get("throttle") or {}
    if throttle.get("duty_cycle", 1) < 1:
        print(f"\nthrottle: {throttle.get('reason')}")
    if device.get("measured_at"):
        print(f"\nmeasured at {device['measured_at']}")


def _with_unit(value: Any, unit: str) -> str:
    if isinstance(value, bool) or unit == "bool":
        return _cell(value)
    return f"{_cell(value)} {unit}".strip()


def cmd_wait(args: argparse.Namespace) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with _client(args) as client:
        while True:
            job = client.get(f"/v1/jobs/{args.job_id}")
            if job["status"] in FINAL_STATUSES:
                print(_job_line(job))
                return 0 if job["status"] == "succeeded" else 1
            if job["status"] == "paused":  # it will not move until someone resumes it
                print(_job_line(job))
                print(f"mftd: job {args.job_id} is paused; `mftd resume {args.job_id}` to continue it", file=sys.stderr)
                return 1
            if deadline is not None and time.monotonic() > deadline:
                print(f"mftd: gave up waiting after {args.timeout:g} s; {_job_line(job)}", file=sys.stderr)
                return 1
            time.sleep(WAIT_POLL_SECONDS)


def cmd_watch(args: argparse.Namespace) -> int:
    from mftd.watch import watch

    with _client(args) as client:
        return watch(client, args.job_id, as_json=args.json)


def cmd_open(args: argparse.Namespace) -> int:
    with _client(args) as client:
        login = client.post("/v1/auth/login-codes")
    url = f"{client.url}/#code={login['code']}"  # in the fragment: browsers never send it to a server
    if args.json:
        _print_json({"url": url, "expires_in": login.get("expires_in")})
    else:
        print(url)
        print(f"the link logs in once, within {login.get('expires_in', 300) // 60} minutes", file=sys.stderr)
    if not args.no_browser:
        _open_in_browser(url)
    return 0


def _open_in_browser(url: str) -> None:
    """Termux's opener on a phone; elsewhere the desktop's browser, if there is a desktop."""
    if shutil.which("termux-open-url"):
        subprocess.run(["termux-open-url", url], check=False, timeout=10)
    elif sys.platform == "darwin" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        import webbrowser

        webbrowser.open(url)
