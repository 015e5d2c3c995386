"""End to end: the search page in headless Chromium against a real uvicorn server and real photos.

Needs the Debian ``chromium`` and ``chromium-driver`` packages, selenium, the clothing photos and the
default encoder's weights; skips (with the reason) when any is missing. Set ``CLOTHSIM_SCREENSHOT_DIR``
to keep the screenshot it takes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.real_photos, pytest.mark.real_weights, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("CLOTHSIM_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CLOTHSIM_CHROMEDRIVER", "/usr/bin/chromedriver"))
PER_CATEGORY = 8
K = 6
KEY = "browser-test-key-0123456789"
WAIT_S = 30


@pytest.fixture(scope="module")
def browser_parts():
    """selenium and its pieces, skipping when selenium, chromium or chromedriver is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (path.is_file() and os.access(path, os.X_OK)):
            pytest.skip(f"{path} not found (Debian packages chromium and chromium-driver)")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed")
    return webdriver


@pytest.fixture(scope="module")
def real_subset(clothing_dataset):
    """A few training photos per category for the index, and one test photo to search with."""
    from clothsim.data.folder import read_folder_catalog

    records = read_folder_catalog(clothing_dataset)
    by_category = defaultdict(list)
    for record in records:
        if record.split == "train":
            by_category[record.category].append(record)
    subset = [r for category in sorted(by_category) for r in sorted(by_category[category], key=lambda r: r.path)
              [:PER_CATEGORY]]
    query = min((r for r in records if r.split == "test"), key=lambda r: (r.category, r.path))
    return subset, Path(query.path)


@pytest.fixture(scope="module")
def real_index(browser_parts, real_subset, tmp_path_factory):
    """The subset indexed with the default encoder (its folder)."""
    from clothsim.similarity_index import SimilarityIndex
    from clothsim.encoders.registry import create_encoder
    from clothsim.errors import UnknownEncoderError, WeightsUnavailableError

    try:
        encoder = create_encoder("efficientnet_lite0")
    except (UnknownEncoderError, WeightsUnavailableError, ImportError, OSError) as exc:
        pytest.skip(f"the default encoder efficientnet_lite0 is not available: {exc}")
    records, _ = real_subset
    folder = tmp_path_factory.mktemp("web_index") / "index"
    catalog, _ = SimilarityIndex.build(records, folder, encoder=encoder, num_workers=0, progress=False)
    assert len(catalog) == len(records)
    return folder


def _serve(app):
    """A uvicorn server for ``app`` on a free 127.0.0.1 port, in a thread; yields its URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="clothsim-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"uvicorn did not start on 127.0.0.1:{port}")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(real_index):
    """A read-only server over the index of real photos."""
    from clothsim.similarity_index import SimilarityIndex
    from clothsim.web.app import create_app

    yield from _serve(create_app(SimilarityIndex.open(real_index)))


@pytest.fixture(scope="module")
def writes_url(real_index, tmp_path_factory):
    """A server that takes writes, over a copy of the index."""
    from clothsim.similarity_index import SimilarityIndex
    from clothsim.web.app import create_app
    from clothsim.web.auth import ApiKey
    from clothsim.web.writes import WriteSettings

    copy = tmp_path_factory.mktemp("writable") / "index"
    shutil.copytree(real_index, copy)
    yield from _serve(create_app(SimilarityIndex.open(copy), writes=WriteSettings(ApiKey(KEY), copy.parent / "up")))


@pytest.fixture(scope="module")
def driver(browser_parts, tmp_path_factory):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1280,1100",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    # An explicit driver path: selenium-manager is never asked to download anything.
    chrome = browser_parts.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    chrome.set_page_load_timeout(WAIT_S)
    yield chrome
    chrome.quit()


def _results(driver) -> list[dict]:
    """What the result grid shows: id, rank, score and category of each card, and whether its image loaded."""
    return driver.execute_script("""
        return Array.from(document.querySelectorAll('#results .hit')).map((b) => ({
            id: Number(b.dataset.id), rank: b.querySelector('.rank').textContent,
            score: b.querySelector('.score').textContent, category: b.querySelector('.category').textContent,
            loaded: b.querySelector('img').complete && b.querySelector('img').naturalWidth > 0,
        }));""")


def _wait_for_results(driver, query_tag: str) -> list[dict]:
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        if d.find_element("id", "results").get_attribute("data-query") != query_tag:
            return False
        cards = _results(d)
        return cards if len(cards) == K and all(c["loaded"] for c in cards) else False

    return WebDriverWait(driver, WAIT_S).until(ready, message=f"no {K} loaded results for {query_tag}")


def _check_cards(cards: list[dict], categories: set[str]) -> None:
    assert [c["rank"] for c in cards] == [f"#{i}" for i in range(1, K + 1)]
    scores = [float(c["score"]) for c in cards]
    assert all(re.fullmatch(r"-?\d\.\d{3}", c["score"]) for c in cards)
    assert scores == sorted(scores, reverse=True) and scores[0] <= 1.0
    assert {c["category"] for c in cards} <= categories


def test_upload_then_click_a_result_then_filter(driver, server_url, real_subset, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    records, query_photo = real_subset
    categories = {r.category for r in records}
    driver.get(server_url + "/")
    WebDriverWait(driver, WAIT_S).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#category-select option")) == len(categories) + 1,
        message="the category list never loaded")
    assert f"{len(records)} items" in driver.find_element(By.ID, "index-info").text
    k_input = driver.find_element(By.ID, "k-input")
    k_input.clear()
    k_input.send_keys(str(K))

    # 1. Upload a real test photo.
    driver.find_element(By.ID, "file-input").send_keys(str(query_photo))
    cards = _wait_for_results(driver, "upload")
    _check_cards(cards, categories)
    assert query_photo.name in driver.find_element(By.ID, "query-caption").text
    assert driver.find_element(By.ID, "error").get_attribute("hidden") is not None

    # 2. Click the second result: the page searches from that catalogue item.
    clicked = cards[1]["id"]
    driver.find_element(By.CSS_SELECTOR, f'#results .hit[data-id="{clicked}"]').click()
    new_cards = _wait_for_results(driver, f"item:{clicked}")
    _check_cards(new_cards, categories)
    assert clicked not in [c["id"] for c in new_cards]
    assert [c["id"] for c in new_cards] != [c["id"] for c in cards]
    assert f"#{clicked}" in driver.find_element(By.ID, "query-caption").text

    shot = tmp_path / "clothsim-search.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("CLOTHSIM_SCREENSHOT_DIR"):
        keep = Path(os.environ["CLOTHSIM_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / shot.name)

    # 3. A category filter re-runs the same query within that category.
    wanted = min(categories)
    Select(driver.find_element(By.ID, "category-select")).select_by_value(wanted)
    WebDriverWait(driver, WAIT_S).until(
        lambda d: (cards := _results(d)) and {c["category"] for c in cards} == {wanted}
        and all(c["loaded"] for c in cards), message=f"results never narrowed to {wanted}")
    # Each category has PER_CATEGORY (> K) items, so a full page even when the query item is left out.
    assert len(_results(driver)) == K


def test_a_rejected_file_shows_a_clear_message(driver, server_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("a shopping list, not a photo\n")
    driver.get(server_url + "/")
    driver.find_element(By.ID, "file-input").send_keys(str(not_a_photo))
    error = driver.find_element(By.ID, "error")
    WebDriverWait(driver, WAIT_S).until(lambda d: error.is_displayed(), message="no error message shown")
    assert "notes.jpg was not accepted" in error.text and "not an image" in error.text
    assert driver.find_elements(By.CSS_SELECTOR, "#results .hit") == []


def _api_routes(driver) -> list[str]:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements("css selector", "#api-routes li"),
                                        message="the API list never loaded")
    return [li.get_attribute("textContent") for li in driver.find_elements("css selector", "#api-routes li")]


def test_a_read_only_server_lists_its_api_and_shows_no_write_forms(driver, server_url):
    driver.get(server_url + "/")
    routes = _api_routes(driver)
    assert any(r.startswith("POST /api/search") for r in routes)
    assert any(r.startswith("GET /metrics") for r in routes) and any(r.startswith("GET /ready") for r in routes)
    assert not any("/api/items " in r or r.startswith("DELETE") for r in routes)
    assert driver.find_element("id", "writes").get_attribute("hidden") is not None


def test_with_a_key_the_page_adds_and_deletes_an_item(driver, writes_url, real_subset):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, photo = real_subset
    driver.get(writes_url + "/")
    routes = _api_routes(driver)
    assert any(r.startswith("POST /api/items") and "(API key)" in r for r in routes)
    WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.ID, "writes").is_displayed(),
                                        message="the write forms are not shown")
    key, error = driver.find_element(By.ID, "api-key"), driver.find_element(By.ID, "error")
    driver.find_element(By.ID, "add-file").send_keys(str(photo))
    driver.find_element(By.ID, "add-category").send_keys("new-arrivals")
    key.send_keys("not-the-key-at-all")
    driver.find_element(By.CSS_SELECTOR, "#add-form button").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: error.is_displayed(), message="a wrong key showed no error")
    assert "may not write" in error.text

    key.clear()
    key.send_keys(KEY)
    driver.find_element(By.CSS_SELECTOR, "#add-form button").click()
    status = driver.find_element(By.ID, "write-status")
    WebDriverWait(driver, WAIT_S).until(lambda d: "Added item #" in status.text, message="the add was not shown")
    new_id = int(re.search(r"#(\d+)", status.text).group(1))
    WebDriverWait(driver, WAIT_S).until(  # the page searches from the new item; its category is offered
        lambda d: f"#{new_id}" in d.find_element(By.ID, "query-caption").text
        and d.find_elements(By.CSS_SELECTOR, '#category-select option[value="new-arrivals"]'),
        message="the new item was not searched from")

    driver.find_element(By.ID, "delete-id").send_keys(str(new_id))
    driver.find_element(By.CSS_SELECTOR, "#delete-form button").click()
    WebDriverWait(driver, WAIT_S).until(lambda d: f"Deleted item #{new_id}" in status.text,
                                        message="the delete was not shown")


@pytest.fixture(scope="module")
def text_index(browser_parts, tmp_path_factory):
    """Photos of three categories indexed with a tiny OpenCLIP model (random weights) that has a text tower."""
    pytest.importorskip("open_clip", reason="the hub extra (open-clip-torch) is not installed")
    from _hub_models import register_tiny_clip
    from clothsim.cli.main import main

    sample = Path(__file__).resolve().parents[1] / "src" / "clothsim" / "assets" / "clothing_sample" / "train"
    photos = tmp_path_factory.mktemp("text_photos")
    for category in ("dress", "hat", "shoes"):
        (photos / category).mkdir()
        for photo in sorted((sample / category).glob("*.jpg"))[:4]:
            shutil.copy(photo, photos / category / photo.name)
    folder = tmp_path_factory.mktemp("text_index") / "index"
    assert main(["-q", "index", str(photos), "--out", str(folder), "--encoder", f"open_clip:{register_tiny_clip()}",
                 "--weights", "random"]) == 0
    return folder


def test_the_text_box_searches_an_index_with_a_text_tower(driver, text_index):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from clothsim.similarity_index import SimilarityIndex
    from clothsim.web.app import create_app

    for url in _serve(create_app(SimilarityIndex.open(text_index))):
        driver.get(url + "/")
        form = driver.find_element(By.ID, "text-form")
        WebDriverWait(driver, WAIT_S).until(lambda d: form.is_displayed(), message="the text box is not offered")
        k_input = driver.find_element(By.ID, "k-input")
        k_input.clear()
        k_input.send_keys(str(K))
        driver.find_element(By.ID, "text-input").send_keys("a red dress")
        driver.find_element(By.ID, "text-button").click()
        cards = _wait_for_results(driver, "text:a red dress")
    # The page shows what the index answers for the same text, in its order.
    expected = SimilarityIndex.open(text_index).search_text("a red dress", k=K)
    assert [c["id"] for c in cards] == [hit.id for hit in expected]
    assert [c["rank"] for c in cards] == [f"#{i}" for i in range(1, K + 1)]
    assert "a red dress" in driver.find_element(By.ID, "query-caption").text


def test_an_image_only_index_offers_no_text_box(driver, server_url):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server_url + "/")
    WebDriverWait(driver, WAIT_S).until(lambda d: "items" in d.find_element("id", "index-info").text,
                                        message="the index facts never loaded")
    assert not driver.find_element("id", "text-form").is_displayed()
