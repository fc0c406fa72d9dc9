"""The page of `onerec serve` (/ui) in a real browser: a real `onerec serve` process on 127.0.0.1 over the tiny
trained run, Debian's chromium driven headless by playwright (CI installs chromium in .ci/run; the test skips where
playwright or a chromium executable is missing). A screenshot goes to $ONEREC_UI_SCREENSHOT when set."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("PIL")

from onerec.data.schema import Dataset
from onerec.data.simulator import World
from test_serve import run  # noqa: F401  (the module's tiny trained run, reused)
from test_serve_hostile import start_server, stop

K = 4
CHROMIUMS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_executable() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install 'onerec[test]'): the page's browser test is skipped")
    for path in (*CHROMIUMS, shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and os.access(path, os.X_OK):
            return path
    pytest.skip("no chromium executable (looked for /usr/bin/chromium, /usr/bin/chromium-browser and PATH; "
                "apt-get install chromium): the page's browser test is skipped")


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):  # noqa: F811
    path, _ = run
    data = path / "data"
    World.load(data / "world").render_covers(Dataset.load(data, validate=False).items, data / "covers",
                                             relative_to=data)  # covers, as the vlm content backend renders them
    proc, port = start_server(path, tmp_path_factory.mktemp("ui") / "server.log", [])
    yield port
    stop(proc)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.problems = []  # console errors, page errors, failed requests
        page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: page.problems.append(f"request failed: {r.url}"))
        page.goto(f"http://127.0.0.1:{server}/ui")
        yield page
        browser.close()


def columns(page) -> dict[str, list[dict[str, str]]]:
    """Each column's rows as the page shows them."""
    out = {}
    for col in page.query_selector_all(".col"):
        rows = []
        for tr in col.query_selector_all("tbody tr"):
            cell = {c: (tr.query_selector(f"td.{c}").inner_text() if tr.query_selector(f"td.{c}") else "")
                    for c in ("rank", "item", "score", "sid")}
            img = tr.query_selector("td.cover img")
            cell["cover"] = img.get_attribute("src") if img else ""
            cell["title"] = tr.query_selector(".title").inner_text() if tr.query_selector(".title") else ""
            rows.append(cell)
        out[col.get_attribute("data-model")] = rows
    return out


# Predicates of wait_for_function are function expressions: playwright evaluates a bare expression with eval()
# inside the page, which the page's Content-Security-Policy (no 'unsafe-eval') refuses.
def wait_for_rows(page, n_cols: int) -> None:
    page.wait_for_function(
        "([n, k]) => document.querySelectorAll('.col').length === n && "
        "[...document.querySelectorAll('.col')].every(c => c.querySelectorAll('tbody tr').length === k) && "
        "!document.getElementById('go').disabled", arg=[n_cols, K], timeout=30000)


def check_columns(page, history_ids: set[str]) -> None:
    cols = columns(page)
    assert list(cols) == ["onerec_generator", "onerec_prior", "popular", "transitions"]
    for model, rows in cols.items():
        assert [r["rank"] for r in rows] == [str(i) for i in range(1, K + 1)], model
        for r in rows:
            assert r["title"].strip() and re.fullmatch(r"\d+(-\d+)+", r["sid"]), (model, r)
            assert re.fullmatch(r"\d+" if model == "popular" else r"-?\d+(\.\d{3})?", r["score"]), (model, r)
            assert re.fullmatch(r"/ui/cover/\d+", r["cover"]), (model, r)
        item_ids = [r["item"].split("\n")[-1].split(" · ")[0] for r in rows]
        assert len(set(item_ids)) == K and all(i.startswith("sim_v") for i in item_ids), (model, item_ids)
        assert not set(item_ids) & history_ids or not page.is_checked("#exclude"), model


def test_pick_a_user_then_paste_a_history(page):
    page.wait_for_function("() => document.querySelectorAll('#user option').length > 1", timeout=30000)
    assert not page.is_checked("#exclude")  # generate.exclude_seen is false in this run
    page.fill("#k", str(K))
    user = page.eval_on_selector("#user", "s => s.options[2].value")
    page.select_option("#user", user)
    page.click("#go")
    wait_for_rows(page, 4)
    n_items = re.search(r"\((\d+) items\)", page.eval_on_selector("#user", "s => s.selectedOptions[0].text"))[1]
    assert page.inner_text("#histlen").startswith(f"{n_items} items")
    history_ids = set(page.eval_on_selector_all("#histlist li .id", "ls => ls.map(l => l.textContent)"))
    assert 0 < len(history_ids) <= int(n_items)
    check_columns(page, history_ids)
    assert page.eval_on_selector_all("img.thumb", "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
    if shot := os.environ.get("ONEREC_UI_SCREENSHOT"):
        page.screenshot(path=str(Path(shot).with_suffix(".user.png")), full_page=True)

    # a pasted history of the dataset's raw ids, with the history left out of every column
    page.fill("#history", "sim_v3, sim_v17 sim_v42\nsim_v5")
    assert page.is_checked("#src-history")
    page.check("#exclude")
    page.evaluate("document.querySelectorAll('.col').forEach(c => c.remove())")
    page.click("#go")
    wait_for_rows(page, 4)
    assert page.eval_on_selector_all("#histlist li .id", "ls => ls.map(l => l.textContent)") == [
        "sim_v3", "sim_v17", "sim_v42", "sim_v5"]
    check_columns(page, {"sim_v3", "sim_v17", "sim_v42", "sim_v5"})
    assert "seen items excluded" in page.inner_text("#status")
    if shot:
        page.screenshot(path=str(Path(shot).with_suffix(".history.png")), full_page=True)

    # an unknown id is the server's 422, shown on the page (as text) and the columns stay
    page.fill("#history", "sim_v3 <b>nope</b>")
    page.click("#go")
    page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=30000)
    assert "unknown item id '<b>nope</b>'" in page.inner_text("#status")
    assert page.query_selector("#status b") is None  # shown as text, never parsed as HTML
    problems = [p for p in page.problems if "422" not in p]  # the refused request above is expected
    assert problems == []
