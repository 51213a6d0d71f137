"""The admin's rotate flow, end to end, in a real headless Chromium driven through chromedriver.

The test-client tests in tests/credentials/test_admin.py cover the views, their permissions and their
headers; this one checks what they cannot: that an operator can actually log in, pick the action,
confirm it and copy a secret that works, with the admin's real HTML, CSS and JavaScript.

It needs Chromium and its chromedriver (Debian: apt install chromium chromium-driver). Without them it
is skipped, unless AGENTIDP_REQUIRE_BROWSER=1 (as in CI), which turns the skip into a failure.
Set AGENTIDP_SCREENSHOT_DIR to a directory to keep a screenshot of the page that shows the new secret.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.factories import AgentFactory, make_credential

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-test-password"
WAIT_SECONDS = 10


def _find(*candidates: str) -> str | None:
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def _unavailable(reason: str):
    """Skip for want of a browser, or fail when the environment promises one."""
    if os.environ.get("AGENTIDP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"AGENTIDP_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (Debian: apt install chromium chromium-driver)")


@pytest.fixture
def browser(live_server):
    """A headless Chromium, allowed to use the clipboard on the live server, quit after the test."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    chromedriver = _find("chromedriver")
    if chromium is None or chromedriver is None:
        _unavailable("chromium or chromedriver is not on PATH")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--no-proxy-server",  # the live server is on localhost, whatever the environment's proxy says
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit chromedriver: selenium-manager must never download a browser or a driver.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.execute_cdp_cmd(
            "Browser.grantPermissions",
            {"origin": live_server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )
        yield driver
    finally:
        driver.quit()


def _token_response(session: requests.Session, base_url: str, client_id: str, client_secret: str):
    return session.post(
        base_url + "/api/v1/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, client_secret),
        timeout=WAIT_SECONDS,
    )


def test_admin_rotates_a_credential_in_a_browser_and_only_the_new_secret_gets_tokens(
    browser, live_server, django_user_model
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    django_user_model.objects.create_superuser(username="operator", password=PASSWORD, email="op@example.com")
    issued = make_credential(AgentFactory(name="report-bot"))
    client_id = issued.credential.client_id
    old_secret = issued.client_secret
    wait = WebDriverWait(browser, WAIT_SECONDS)

    # Log in through the admin's own form.
    browser.get(live_server.url + "/admin/login/?next=/admin/credentials/credential/")
    browser.find_element(By.NAME, "username").send_keys("operator")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()

    # The changelist: tick the credential, choose the action, Go.
    checkbox = wait.until(
        EC.element_to_be_clickable((By.CSS_SELECTOR, f"input.action-select[value='{issued.credential.pk}']"))
    )
    assert client_id in browser.find_element(By.ID, "result_list").text
    checkbox.click()
    Select(browser.find_element(By.NAME, "action")).select_by_visible_text("Rotate selected credentials")
    browser.find_element(By.CSS_SELECTOR, "#changelist-form button[name=index]").click()

    # The confirmation page names the credential and offers no grace period by default.
    confirm = wait.until(EC.element_to_be_clickable((By.ID, "confirm-rotate")))
    assert client_id in browser.find_element(By.ID, "credentials-to-rotate").text
    assert browser.find_element(By.NAME, "grace_period_seconds").get_attribute("value") == "0"
    confirm.click()

    # The result page shows the new secret once, next to its clientId.
    field = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input.client-secret")))
    assert browser.find_element(By.CSS_SELECTOR, "h1").text == "Rotated credentials"
    assert "The old secret has stopped working." in browser.page_source
    assert field.get_attribute("data-client-id") == client_id
    new_secret = field.get_attribute("value")
    assert new_secret and new_secret != old_secret
    assert len(browser.find_elements(By.CSS_SELECTOR, "input.client-secret")) == 1

    # The Copy button puts exactly that secret on the clipboard.
    button = browser.find_element(By.CSS_SELECTOR, "button.copy-secret")
    button.click()
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "button.copy-secret"), "Copied"))
    clipboard = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, (error) => done('clipboard error: ' + error));"
    )
    assert clipboard == new_secret

    screenshots = os.environ.get("AGENTIDP_SCREENSHOT_DIR")
    if screenshots:
        assert browser.save_screenshot(str(Path(screenshots) / "rotate-result.png"))

    # No script error on the way (a missing favicon is a network error, not a script one).
    script_errors = [
        entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE" and entry.get("source") != "network"
    ]
    assert script_errors == []

    # The token endpoint agrees: the new secret gets a token, the old one is refused at once.
    with requests.Session() as session:
        session.trust_env = False  # straight to the live server, never through a proxy
        response = _token_response(session, live_server.url, client_id, new_secret)
        assert response.status_code == 200, response.text
        assert response.json()["access_token"]

        response = _token_response(session, live_server.url, client_id, old_secret)
        assert response.status_code == 401
        assert response.json()["error"] == "invalid_client"
