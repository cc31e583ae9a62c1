"""The web UI in a real browser: Debian's chromium driven by Playwright (sync API), against the
built pyz's all-in-one appliance (so the pages and ``web_static`` files come out of the pyz).

Signup from the invite link (QR code, a computed TOTP code), login with password + code, the
node list with labels, filtered by label and by text, a node added and removed with ``ctl``
showing up and going away without a reload, logout. Any CSP violation in the console fails
the test. Screenshots go to ``build/test-output/`` (``$JUMPGATE_TEST_OUTPUT``; ignored by git).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from _cluster import PASSWORD, REPO, Authenticator, Cluster

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
LIVE = 10_000  # ms: a push reaches the page in about 0.5 s; 20x that
pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(ignore_https_errors=True)  # the cluster's self-signed certificate
    page = context.new_page()
    page.set_default_timeout(LIVE)
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda error: violations.append(f"page error: {error}"))
    yield page
    context.close()
    assert violations == [], violations


def _shot(page, name: str) -> Path:
    folder = Path(os.environ.get("JUMPGATE_TEST_OUTPUT", REPO / "build" / "test-output"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _rows(page):
    return page.locator("#nodes tbody tr")


def test_signup_login_filter_live_update_and_logout_in_a_real_browser(cluster: Cluster, page):
    expect = sync_api.expect
    base = f"https://{cluster.web}"
    token = cluster.add_user("webuser", ["webuser"])

    page.goto(f"{base}/web/invite/{token}")
    expect(page.locator("figure.qr svg")).to_be_visible()
    otp_uri = page.locator("details pre").text_content()
    authenticator = Authenticator.from_uri(otp_uri)
    page.fill("#password", PASSWORD)
    page.fill("#password2", PASSWORD)
    page.fill("#otp_code", authenticator.code())
    page.click("#signup button")
    expect(page.locator("#message")).to_contain_text("Signed up")

    page.goto(f"{base}/web/login")
    page.fill("#user", "webuser")
    page.fill("#password", PASSWORD)
    page.fill("#otp_code", authenticator.unused_wrong_code())
    page.click("#login button")
    expect(page.locator("#message")).to_contain_text("5 failed")  # the CLI's one answer (A3)
    page.fill("#otp_code", authenticator.code())
    page.click("#login button")
    page.wait_for_url(f"{base}/web/nodes")
    cookie = next(c for c in page.context.cookies() if c["name"] == "__Host-jumpgate-session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

    node = _rows(page).filter(has_text=cluster.node_name)
    expect(node).to_have_count(1)
    expect(node).to_contain_text("env=prod")
    expect(node).to_contain_text("online")
    expect(page.locator("#who")).to_contain_text("webuser")

    cluster.ctl("nodes", "add", "--name", "web9", "--addr", "127.0.0.1:2222", "--labels", "env=dev,team=web")
    expect(_rows(page).filter(has_text="web9")).to_contain_text("team=web", timeout=LIVE)  # no reload
    expect(_rows(page)).to_have_count(2)
    _shot(page, "node-list")

    page.fill("#selector", "env=dev")
    expect(_rows(page)).to_have_count(1)
    expect(_rows(page).first).to_contain_text("web9")
    page.fill("#selector", "env=prod,team=core")
    expect(_rows(page)).to_have_count(1)
    expect(_rows(page).first).to_contain_text(cluster.node_name)
    page.fill("#selector", "")
    page.fill("#search", "web")
    expect(_rows(page)).to_have_count(1)
    page.fill("#search", "")

    cluster.ctl("nodes", "rm", "web9")
    expect(_rows(page).filter(has_text="web9")).to_have_count(0, timeout=LIVE)
    expect(_rows(page)).to_have_count(1)

    page.click("#logout")
    page.wait_for_url(f"{base}/web/login")
    page.goto(f"{base}/web/nodes")
    page.wait_for_url(f"{base}/web/login")  # the session is gone server-side, not only the cookie


def _login(page, base: str, cluster: Cluster, user: str, logins: list[str]) -> None:
    """Sign up ``user`` through the service's invite page and log in in ``page``."""
    token = cluster.add_user(user, logins)
    page.goto(f"{base}/web/invite/{token}")
    authenticator = Authenticator.from_uri(page.locator("details pre").text_content())
    page.fill("#password", PASSWORD)
    page.fill("#password2", PASSWORD)
    page.fill("#otp_code", authenticator.code())
    page.click("#signup button")
    sync_api.expect(page.locator("#message")).to_contain_text("Signed up")
    page.goto(f"{base}/web/login")
    page.fill("#user", user)
    page.fill("#password", PASSWORD)
    page.fill("#otp_code", authenticator.code())
    page.click("#login button")
    page.wait_for_url(f"{base}/web/nodes")


_BUFFER = """() => { const b = window.jumpgateTerminal.buffer.active; const lines = [];
  for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
  return lines.join("\\n"); }"""
_COLOURED = """() => { const b = window.jumpgateTerminal.buffer.active;
  for (let i = 0; i < b.length; i++) { const line = b.getLine(i); const text = line.translateToString(true);
    const at = text.indexOf("RED-TEXT"); if (at >= 0 && !text.includes("printf"))
      return {fg: line.getCell(at).getFgColor(), mode: line.getCell(at).isFgPalette()}; }
  return null; }"""


def test_w11_a_terminal_on_the_clusters_node_in_a_real_browser(cluster: Cluster, page):
    """Open from the node list; echo, UTF-8 and a colour round-trip; the window's size reaches
    the pty; logout elsewhere closes the terminal (W11-W13)."""
    import getpass
    expect = sync_api.expect
    base = f"https://{cluster.web}"
    login = getpass.getuser()
    page.set_viewport_size({"width": 1000, "height": 700})
    _login(page, base, cluster, "termuser", [login])

    node = _rows(page).filter(has_text=cluster.node_name)
    node.get_by_role("link", name=f"terminal on {cluster.node_name} as {login}").click()
    page.wait_for_url(f"{base}/web/terminal?*")
    expect(page.locator("#status")).to_contain_text("Connected", timeout=LIVE)

    def typed(text: str, want: str) -> str:
        page.locator("#terminal").click()
        page.keyboard.type(text + "\n")
        page.wait_for_function(f"() => ({_BUFFER})().includes({want!r})", timeout=LIVE)
        return page.evaluate(_BUFFER)

    assert "42" in typed("echo $((6*7))", "\n42")
    typed("echo \"grüße ✓ 日本\"", "\ngrüße ✓ 日本")
    typed(r"printf '\033[31mRED-TEXT\033[0m\n'", "\nRED-TEXT")
    assert page.evaluate(_COLOURED) == {"fg": 1, "mode": True}  # palette colour 1: red

    first = page.evaluate("() => [window.jumpgateTerminal.rows, window.jumpgateTerminal.cols]")
    before = typed("stty size", f"\n{first[0]} {first[1]}")  # wait for the answer itself, not any newline
    page.set_viewport_size({"width": 700, "height": 450})
    page.wait_for_function(f"() => window.jumpgateTerminal.cols < {first[1]}", timeout=LIVE)
    size = page.evaluate("() => [window.jumpgateTerminal.rows, window.jumpgateTerminal.cols]")
    after = typed("stty size", f"\n{size[0]} {size[1]}")
    assert f"{first[0]} {first[1]}" in before and f"{size[0]} {size[1]}" in after, (first, size)
    _shot(page, "terminal")

    other = page.context.new_page()           # the same browser session, another tab
    other.goto(f"{base}/web/nodes")
    other.click("#logout")
    other.wait_for_url(f"{base}/web/login")
    page.wait_for_url(f"{base}/web/login", timeout=LIVE)   # the server closed the socket with 4401
