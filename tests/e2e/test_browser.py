"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright, against a real daemon.

On a phone-sized viewport it logs in (a wrong token first, then a one-time login link), registers
a tiny real model, uploads a dataset through the form (a file that is not JSONL first), submits a
short LoRA job through the form (missing fields first), watches it succeed, checks the loss chart
has its points, downloads the adapter, pauses, resumes and cancels a second job, and checks that
every control fits the screen. Screenshots go to the test's tmp_path and to tests/e2e/output/.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import playwright.sync_api as playwright_sync
import pytest

from tests.e2e.daemon_process import DaemonProcess

pytestmark = pytest.mark.slow

OUTPUT_DIR = Path(__file__).parent / "output"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}
TRAINING_TIMEOUT_MS = 240_000
STATUS_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser() -> Iterator["playwright_sync.Browser"]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `apt-get install -y chromium` (.ci/run does it)")
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator["playwright_sync.Page"]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2, accept_downloads=True)
    page = context.new_page()
    page.uncaught_errors = []
    page.on("pageerror", lambda error: page.uncaught_errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and "Failed to load resource" not in message.text and page.uncaught_errors.append(message.text))
    page.on("dialog", lambda dialog: dialog.accept())
    yield page
    context.close()


def assert_fits_phone(page) -> None:
    """No horizontal scrolling, and every visible control lies within the screen's width."""
    layout = page.evaluate(
        """() => {
          const width = window.innerWidth;
          const offenders = [];
          for (const element of document.querySelectorAll('button, input, select, textarea, a, summary, svg')) {
            const box = element.getBoundingClientRect();
            if (box.width === 0 && box.height === 0) continue;  // not shown in this view
            if (box.left < -0.5 || box.right > width + 0.5) {
              offenders.push(`${element.tagName.toLowerCase()}#${element.id} ${Math.round(box.left)}..${Math.round(box.right)}`);
            }
          }
          return {width, scrollWidth: document.scrollingElement.scrollWidth, offenders};
        }"""
    )
    assert layout["width"] == PHONE["width"], f"the page widened the layout viewport to {layout['width']} px"
    assert layout["scrollWidth"] <= layout["width"], layout
    assert not layout["offenders"], layout["offenders"]


def open_all_details(page) -> None:
    page.evaluate("() => document.querySelectorAll('details').forEach((details) => { details.open = true; })")


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    OUTPUT_DIR.mkdir(exist_ok=True)
    shutil.copy(shot, OUTPUT_DIR / name)
    return shot


def expect_message(page, selector: str, pattern: str) -> str:
    playwright_sync.expect(page.locator(selector)).to_have_text(re.compile(pattern, re.S), timeout=15_000)
    return page.locator(selector).inner_text()


def wait_for_status(page, status: str, timeout: int = STATUS_TIMEOUT_MS) -> None:
    try:
        page.wait_for_selector(f'#job-status[data-status="{status}"]', timeout=timeout)
    except playwright_sync.TimeoutError as error:
        shown = page.locator("#job-status").inner_text()
        events = page.locator("#events").inner_text()
        raise AssertionError(f"the page shows {shown!r}, not {status!r}; events:\n{events}") from error


def log_in_with_wrong_then_right_token(page, daemon: DaemonProcess) -> None:
    page.goto(f"{daemon.url}/")
    playwright_sync.expect(page.locator("#login-view")).to_be_visible()
    page.click("#login-form button")
    expect_message(page, "#login-message", "Paste the token first")
    page.fill("#token-input", "not-the-token")
    page.click("#login-form button")
    expect_message(page, "#login-message", r"refused this token: wrong token: use the one in .*token")
    assert_fits_phone(page)

    with daemon.client() as client:
        code = client.post("/v1/auth/login-codes").json()["code"]
    page.goto(f"{daemon.url}/#code={code}")
    playwright_sync.expect(page.locator("#home-view")).to_be_visible()
    assert "code=" not in page.url, "the one-time code stayed in the address bar"
    page.reload()  # the token is remembered
    playwright_sync.expect(page.locator("#home-view")).to_be_visible()


def register_model(page, model_dir: Path) -> None:
    page.fill("#model-name", "tiny")
    page.fill("#model-path", "/no/such/folder")
    page.click("#model-form button")
    expect_message(page, "#model-form-message", r"Not registered: .*/no/such/folder")
    page.fill("#model-path", str(model_dir))
    page.click("#model-form button")
    expect_message(page, "#model-form-message", r"Model tiny registered: Qwen2ForCausalLM")


def upload_datasets(page, tmp_path: Path, dataset: Path) -> None:
    page.click("#dataset-form button")
    expect_message(page, "#dataset-form-message", "Missing: a JSONL file and a name")
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes\nnot JSON lines at all\n")
    page.set_input_files("#dataset-file", str(notes))
    assert page.input_value("#dataset-name") == "notes"
    page.click("#dataset-form button")
    text = expect_message(page, "#dataset-form-message", r"not a valid dataset")
    assert "line 1: not valid JSON" in text and "line 2: not valid JSON" in text

    page.fill("#dataset-name", "")
    page.set_input_files("#dataset-file", str(dataset))
    page.fill("#dataset-name", "chat")
    page.click("#dataset-form button")
    expect_message(page, "#dataset-form-message", r"Dataset chat uploaded: 32 examples, messages format")


def submit_job_through_the_form(page) -> None:
    page.click("#job-form button[type=submit]")
    expect_message(page, "#job-form-message", r"Not submitted: choose a model and a dataset")

    page.select_option("#job-model", label="tiny (Qwen2ForCausalLM)")
    page.select_option("#job-dataset", label="chat (messages, 32 examples)")
    page.fill("#job-max-steps", "0")
    page.click("#job-form button[type=submit]")
    expect_message(page, "#job-form-message", r"Not submitted: max_steps: Input should be greater than or equal to 1")

    page.click("#job-more summary")
    playwright_sync.expect(page.locator("#more-lora_rank")).to_be_visible()  # built from the API's own schema
    open_all_details(page)
    assert_fits_phone(page)

    page.fill("#job-max-steps", "10")
    page.fill("#job-learning-rate", "0.01")
    page.fill("#job-batch-size", "2")
    page.fill("#job-grad-accum", "1")
    page.fill("#job-name", "phone-test")
    page.fill("#more-lora_rank", "4")
    page.fill("#more-constraints-min_free_storage_mb", "1")  # a group of fields from the schema, sent as a nested object
    page.click("#job-form button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/1$"))


def check_the_finished_job_page(page, tmp_path: Path) -> Path:
    wait_for_status(page, "succeeded", TRAINING_TIMEOUT_MS)
    playwright_sync.expect(page.locator("#job-title")).to_have_text("Job #1 · phone-test")
    loss = page.locator('[data-chart="loss"] svg')
    playwright_sync.expect(loss).to_have_attribute("data-points", "10", timeout=15_000)
    path = loss.locator('path[data-series="training"]').get_attribute("d")
    assert len(re.findall(r"[ML]\d", path)) == 10, path
    for chart in ("tokens", "memory"):
        assert int(page.locator(f'[data-chart="{chart}"] svg').get_attribute("data-points")) == 10
    events = page.locator("#events").inner_text()
    assert "running -> succeeded" in events
    stats = page.locator("#job-stats").inner_text()
    assert "10 / 10" in stats and "100 %" in stats
    config = page.locator("#job-config").inner_text()
    assert '"lora_rank": 4' in config and '"min_free_storage_mb": 1' in config

    playwright_sync.expect(page.locator('[data-artifact="adapter"]')).to_be_visible(timeout=15_000)
    with page.expect_download() as download_info:
        page.click('[data-artifact="adapter"]')
    archive = tmp_path / "adapter.zip"
    download_info.value.save_as(archive)
    assert download_info.value.suggested_filename == "job-1-adapter.zip"
    assert "adapter_config.json" in zipfile.ZipFile(archive).namelist()

    page.evaluate("() => window.scrollTo(0, 0)")
    shot = save_screenshot(page, tmp_path, "job-page.png")
    open_all_details(page)
    assert_fits_phone(page)
    return shot


def pause_resume_and_cancel(page, daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        body = {"model": "tiny", "dataset": "chat", "max_steps": 100_000, "batch_size": 1, "grad_accum_steps": 1, "checkpoint_every_steps": 10_000}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
    page.goto(f"{daemon.url}/#/jobs/{job_id}")
    wait_for_status(page, "running")
    page.click('[data-action="pause"]')
    wait_for_status(page, "paused")
    expect_message(page, "#job-reason", "paused by the user")
    playwright_sync.expect(page.locator('[data-action="pause"]')).to_be_disabled()
    page.click('[data-action="resume"]')
    page.wait_for_selector('#job-status:is([data-status="queued"], [data-status="running"])', timeout=STATUS_TIMEOUT_MS)
    page.click('[data-action="cancel"]')
    wait_for_status(page, "cancelled")
    for action in ("pause", "resume", "cancel"):
        playwright_sync.expect(page.locator(f'[data-action="{action}"]')).to_be_disabled()


def check_the_home_page(page, daemon: DaemonProcess, tmp_path: Path) -> None:
    page.goto(f"{daemon.url}/#/")
    first, second = page.locator('.job[data-job-id="1"]'), page.locator('.job[data-job-id="2"]')
    playwright_sync.expect(first).to_contain_text("succeeded")
    playwright_sync.expect(first).to_contain_text("step 10/10")
    playwright_sync.expect(second).to_contain_text("cancelled")
    playwright_sync.expect(page.locator("#device-readings")).to_contain_text("free storage")
    playwright_sync.expect(page.locator("#connection")).to_have_text("live")
    open_all_details(page)
    assert_fits_phone(page)
    save_screenshot(page, tmp_path, "home-page.png")


def test_dashboard_on_a_phone_screen(daemon: DaemonProcess, page, tiny_qwen2: Path, chat_jsonl: Path, tmp_path: Path):
    log_in_with_wrong_then_right_token(page, daemon)
    register_model(page, tiny_qwen2)
    upload_datasets(page, tmp_path, chat_jsonl)
    submit_job_through_the_form(page)
    shot = check_the_finished_job_page(page, tmp_path)
    assert shot.stat().st_size > 10_000
    pause_resume_and_cancel(page, daemon)
    check_the_home_page(page, daemon, tmp_path)

    page.click("#logout")
    playwright_sync.expect(page.locator("#login-view")).to_be_visible()
    page.reload()
    playwright_sync.expect(page.locator("#login-view")).to_be_visible()  # the token is gone from the browser
    assert page.uncaught_errors == []


def test_a_stale_token_sends_the_page_back_to_log_in(daemon: DaemonProcess, page):
    page.goto(f"{daemon.url}/")
    page.evaluate("() => localStorage.setItem('mftd.token', 'an-old-token')")
    page.reload()
    expect_message(page, "#login-message", r"The daemon refused the token: wrong token")
    assert page.evaluate("() => localStorage.getItem('mftd.token')") is None
    page.goto(f"{daemon.url}/#code=made-up")
    expect_message(page, "#login-message", r"The login link did not work: this login code is unknown, already used or expired")
    assert page.uncaught_errors == []


def test_a_foreign_host_is_refused_by_the_real_daemon(daemon: DaemonProcess):
    for path in ("/", "/v1/health", "/v1/jobs"):
        response = httpx.get(f"{daemon.url}{path}", headers={"Host": "evil.example:80", "Authorization": f"Bearer {daemon.token}"})
        assert response.status_code == 421
        assert "DNS rebinding" in response.json()["detail"]
    assert httpx.get(f"{daemon.url}/", headers={"Host": f"localhost:{daemon.port}"}).status_code == 200
