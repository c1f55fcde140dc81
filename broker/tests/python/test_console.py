"""The web console (/console/) in a real headless Chromium: Debian's /usr/bin/chromium,
driven by Playwright for Python (never a browser that Playwright downloads).

    apt-get install -y chromium
    pip install playwright==1.65.2          # no `playwright install`
    python3 -m pytest broker/tests/python/test_console.py -v

With ROOKERY_SCREENSHOTS=docs (a directory; relative paths are from the repository root)
the tests save the screenshots the README shows. Skipped when playwright or
/usr/bin/chromium is missing, except under CI (CI=true), where .ci/run installs both and
a skip would hide a console that is not tested.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, Broker

CHROMIUM = Path("/usr/bin/chromium")
UI_WAIT_MS = 10000  # the upper bound for anything the page is expected to show
STATS_WAIT_MS = 10000  # the status bar polls every 2 s


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the console test: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install playwright==1.65.2")
    if not CHROMIUM.exists():
        unavailable("/usr/bin/chromium is not installed: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    page.set_default_timeout(UI_WAIT_MS)
    # CSP violations and script errors would mean a broken console even if it looks fine.
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("console", lambda msg: page.problems.append(msg.text)
            if msg.type == "error" and "Failed to load resource" not in msg.text else None)
    yield page
    context.close()


def screenshot(page, name: str):
    directory = os.environ.get("ROOKERY_SCREENSHOTS")
    if not directory:
        return
    path = Path(directory)
    if not path.is_absolute():
        path = REPO / path
    path.mkdir(parents=True, exist_ok=True)
    # A viewport as tall as the page rather than full_page: Chromium would paint the
    # sticky status bar over the middle of a full-page capture.
    size = page.viewport_size
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    page.screenshot(path=str(path / f"console-{name}.png"))
    page.set_viewport_size(size)


def console_url(broker: Broker) -> str:
    return f"http://127.0.0.1:{broker.http_port}"


def ok(broker: Broker, request: dict) -> dict:
    status, answer = broker.api(request)
    assert status == 200 and answer["result"], answer
    return answer


def log_in(page, broker: Broker):
    from playwright.sync_api import expect
    page.goto(console_url(broker) + "/")
    page.fill("#token", broker.app_token)
    page.click("#login button[type=submit]")
    expect(page.locator("#groups")).to_be_visible()


def test_console_creates_a_group_adds_members_sends_and_sees_history(broker, page, client_factory):
    from playwright.sync_api import expect
    import paho.mqtt.client as mqtt

    alice = broker.add_user("alice")
    broker.add_user("bob")
    # Two groups made elsewhere, so that the list has something to search through.
    ok(broker, {"op": "groupadd", "group": {"name": "Night shift", "members": {"m": "alice"}}})
    ok(broker, {"op": "groupadd", "group": {"name": "Announcements", "flags": 0x40,
                                            "permissions": {"send": 1}}})

    # `/` leads to the console; a wrong token is refused with the API's error.
    page.goto(console_url(broker) + "/")
    assert page.url == console_url(broker) + "/console/"
    expect(page.locator("#login")).to_be_visible()
    screenshot(page, "login")
    page.fill("#token", "not-the-token")
    page.click("#login button[type=submit]")
    expect(page.locator("#error")).to_contain_text("AUTHFAIL")
    expect(page.locator("#error")).to_contain_text("the app token is missing or wrong")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('rookery.token')") is None

    page.fill("#token", broker.app_token)
    page.click("#login button[type=submit]")
    expect(page.locator("#groups tbody tr")).to_have_count(2)
    expect(page.locator("#error")).to_be_hidden()

    # Create a group in the form.
    page.click("#new-group")
    form = page.locator("#group-form")
    form.locator("input[name=name]").fill("Support <team>")
    form.locator("input[name=loopback]").check()
    form.locator("select[name=recv]").select_option("0")
    form.locator("button[type=submit]").click()
    expect(page.locator("#members")).to_be_visible()
    expect(page.locator("#notice")).to_contain_text("created")
    gid = int(page.url.rsplit("/", 2)[-2])
    group = ok(broker, {"op": "groupget", "group": {"gid": gid}})["group"]
    assert group["name"] == "Support <team>" and group["loopback"] and not group["nostore"]
    # The name is text, not markup.
    expect(page.locator("h2")).to_contain_text("Support <team>")

    # Two members; an unknown address shows the API's error and adds nobody.
    page.fill("#member-addresses", "alice, ghost")
    page.click("#member-form button[type=submit]")
    expect(page.locator("#error")).to_contain_text("NOUSER")
    expect(page.locator("#members tbody tr")).to_have_count(0)
    page.fill("#member-addresses", "alice, bob")
    page.click("#member-form button[type=submit]")
    expect(page.locator("#members tbody tr")).to_have_count(2)
    expect(page.locator("#members tr[data-address=bob]")).to_be_visible()
    members = ok(broker, {"op": "groupgetmembers", "group": {"gid": gid}})
    assert [m["address"] for m in members["members"]] == ["alice", "bob"]
    screenshot(page, "members")

    # A member online: the status bar counts the connection and subscription live.
    phone = client_factory(broker.port, "alice-phone", mqtt.MQTTv5, username="alice", password=alice)
    phone.subscribe("groups/#", 1)
    expect(page.locator('#status [data-stat="connections"] b')).to_have_text("1", timeout=STATS_WAIT_MS)
    expect(page.locator('#status [data-stat="subscriptions"] b')).to_have_text("1", timeout=STATS_WAIT_MS)

    # Send a message and see it in the history, as text.
    page.click(".tabs >> text=Messages")
    expect(page.locator("#message-from")).to_have_value("alice")
    text = "hello from the console <b>not bold</b>"
    page.fill("#message-text", text)
    page.click("#message-form button[type=submit]")
    expect(page.locator("#notice")).to_contain_text(f"groups/{gid}")
    row = page.locator("#history tbody tr").first
    expect(row.locator("td.payload")).to_have_text(text)
    expect(row).to_contain_text("alice")
    assert page.locator("#history b").count() == 0
    # Loopback is on: alice's own phone gets it too.
    assert phone.message().payload == text.encode()
    history = ok(broker, {"op": "groupmessages", "group": {"gid": gid}})
    assert history["messages"][0]["payload"] == text
    # The broker counted it (polled every 2 s).
    expect(page.locator('#status [data-stat="messages in"] b')).not_to_have_text("0", timeout=STATS_WAIT_MS)
    screenshot(page, "history")

    # The list: search by name and by gid.
    page.click("header >> text=Groups")
    rows = page.locator("#groups tbody tr")
    expect(rows).to_have_count(3)
    screenshot(page, "groups")
    page.fill("#group-search", "support")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Support <team>")
    page.fill("#group-search", str(gid))
    expect(rows).to_have_count(1)
    page.fill("#group-search", "no such group")
    expect(rows).to_have_count(0)
    assert page.problems == []


def test_console_edits_settings_type_rules_and_members(broker, page):
    from playwright.sync_api import expect

    broker.add_user("alice")
    broker.add_user("bob")
    gid = ok(broker, {"op": "groupadd", "group": {"name": "Ops", "members": {"m": "alice,bob"}}})["group"]["gid"]
    log_in(page, broker)
    page.click("#groups >> text=Ops")

    # Settings: name, no-store, a permission; validity untouched unless changed.
    before = ok(broker, {"op": "groupget", "group": {"gid": gid}})["group"]
    form = page.locator("#group-form")
    form.locator("input[name=name]").fill("Ops room")
    form.locator("input[name=nostore]").check()
    form.locator("select[name=send]").select_option("2")
    form.locator("input[name=expiryext]").fill("3600")
    form.locator("button[type=submit]").click()
    expect(page.locator("#notice")).to_contain_text("Settings saved")
    expect(page.locator("h2")).to_contain_text("Ops room")
    group = ok(broker, {"op": "groupget", "group": {"gid": gid}})["group"]
    assert group["name"] == "Ops room" and group["nostore"] and not group["loopback"]
    assert group["permissions"]["send"] == 2 and group["permissions"]["recv"] == 0
    assert group["validity"]["expiryext"] == 3600
    assert group["validity"]["expires"] == before["validity"]["expires"]
    # The form shows what was saved.
    expect(page.locator("#group-form select[name=send]")).to_have_value("2")
    expect(page.locator("#group-form input[name=nostore]")).to_be_checked()

    # A rule for message type 5.
    rule = page.locator("#type-form")
    rule.locator("input[name=type]").fill("5")
    rule.locator("select[name=send]").select_option("1")
    rule.locator("button[type=submit]").click()
    expect(page.locator("#types tbody tr")).to_have_count(1)
    types = ok(broker, {"op": "groupget", "group": {"gid": gid}})["group"]["types"]
    assert [(t["type"], t["permissions"]["send"]) for t in types] == [(5, 1)]
    screenshot(page, "settings")

    # Members: edit bob's permissions and admin flags, then remove him.
    page.click(".tabs >> text=Members")
    page.locator("#members tr[data-address=bob] >> text=edit").click()
    expect(page.locator("#member-addresses")).to_have_value("bob")
    member_form = page.locator("#member-form")
    member_form.locator("input[name=send]").uncheck()
    member_form.locator("input[name=modify]").check()
    member_form.locator("button[type=submit]").click()
    expect(page.locator("#members tr[data-address=bob]")).to_contain_text("modify")
    bob = next(m for m in ok(broker, {"op": "groupgetmembers", "group": {"gid": gid}})["members"]
               if m["address"] == "bob")
    assert bob["permissions"]["send"] is False and bob["permissions"]["recv"] is True
    assert bob["admin"]["modify"] is True and bob["admin"]["owner"] is False

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#members tr[data-address=bob] >> text=remove").click()
    expect(page.locator("#members tbody tr")).to_have_count(1)
    assert ok(broker, {"op": "groupgetmembers", "group": {"gid": gid}})["total"] == 1

    # A no-store group has no history, and the page says so.
    page.click(".tabs >> text=Messages")
    expect(page.locator("#history-info")).to_contain_text("no-store")

    # Deleting the group.
    page.click(".tabs >> text=Settings")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete-group")
    expect(page.locator("#groups")).to_be_visible()
    status, answer = broker.api({"op": "groupget", "group": {"gid": gid}})
    assert status == 404 and answer["error"] == "NOGROUP"
    assert page.problems == []


def test_console_files_have_their_types_and_a_strict_policy(broker):
    """No browser needed: the headers themselves, and the brokerstats op's shape."""
    base = console_url(broker)
    expected = {
        "/console/": "text/html; charset=utf-8",
        "/console/app.js": "text/javascript; charset=utf-8",
        "/console/style.css": "text/css; charset=utf-8",
        "/console/icon.svg": "image/svg+xml",
    }
    for path, content_type in expected.items():
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert response.status == 200
            assert response.headers["content-type"] == content_type, path
            policy = response.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert "unsafe-inline" not in policy
            assert response.headers["x-content-type-options"] == "nosniff"
            body = response.read().decode()
        if path == "/console/":
            # No inline script or style: everything is a file the policy allows.
            assert '<script src="app.js" defer></script>' in body
            assert "<style" not in body and " style=" not in body and "onclick" not in body
        if path == "/console/app.js":
            for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write"):
                assert sink not in body, sink
    stats = ok(broker, {"op": "brokerstats"})["stats"]
    assert set(stats) == {"connections", "messages_received", "messages_sent",
                          "subscriptions", "uptime_secs"}
    assert all(isinstance(v, int) for v in stats.values())
    status, answer = broker.api({"op": "brokerstats", "token": "wrong"})
    assert status == 401 and answer["error"] == "AUTHFAIL"
    # Unknown console paths are plain 404s.
    try:
        urllib.request.urlopen(base + "/console/nope.js", timeout=5)
        raise AssertionError("expected 404")
    except urllib.error.HTTPError as error:
        assert error.code == 404


def test_history_keeps_a_message_nobody_was_subscribed_to(broker):
    """Found while testing the console: `message` to a group whose members are offline
    and unsubscribed was answered ok, but `groupmessages` showed nothing (the router
    returned before recording history when no subscription matched)."""
    broker.add_user("alice")
    gid = ok(broker, {"op": "groupadd", "group": {"members": {"m": "alice"}}})["group"]["gid"]
    ok(broker, {"op": "message", "message": {"from": "alice", "gid": gid, "message": "anyone?"}})
    history = ok(broker, {"op": "groupmessages", "group": {"gid": gid}})
    assert [m["payload"] for m in history["messages"]] == ["anyone?"]
