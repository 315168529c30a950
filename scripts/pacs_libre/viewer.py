"""Open a study in OHIF through the web gateway, in Debian's Chromium, and time it.

One module for the browser test of the whole-stack scenarios and for
``pacsctl bench view``: both sign in as a person does (on pacs-web's login
page, or on the single sign-on's portal with a TOTP code), open a URL
(``/iid?...``, ``/viewer?...``, or a correspondent's share link without signing
in), and wait until OHIF has really drawn the study.

What "drawn" means here, measured inside the page so that the clock is the
page's own (``performance.now()``, from the start of the navigation):

- **first image**: the first animation frame at which the viewport's canvas
  (``canvas.cornerstone-canvas``; Cornerstone renders off screen, then copies
  into this 2D canvas) holds a picture, not a blank field;
- **all frames**: the time at which the last of the series' frames arrived,
  counted from the page's resource timing (WADO-RS ``.../frames/N``
  requests; Cornerstone fetches them from the page, decodes in workers).

Playwright drives ``/usr/bin/chromium`` (Debian's package): no browser is
downloaded. WebGL2 comes from SwiftShader when there is no GPU, as here.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pyotp
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from pacs_libre.errors import UserError

CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]

# Installed before any page script: record when the viewport first shows a
# picture, and keep every frame request's timing (the default buffer holds 250).
_PROBE = r"""
(() => {
  performance.setResourceTimingBufferSize(100000);
  window.__pacs = { firstImage: null, frames: new Map(), lastFrame: null, errors: [] };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if (e.name.includes('/frames/')) {
        window.__pacs.frames.set(e.name, e.responseEnd);
        window.__pacs.lastFrame = Math.max(window.__pacs.lastFrame || 0, e.responseEnd);
      }
    }
  }).observe({ type: 'resource', buffered: true });
  const painted = () => {
    const c = document.querySelector('canvas.cornerstone-canvas');
    if (!c || !c.width || !c.height) return false;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let lit = 0, n = 0;
    for (let i = 0; i < d.length; i += 4 * 7) {
      n++;
      if (d[i] > 16 || d[i + 1] > 16 || d[i + 2] > 16) lit++;
    }
    return lit / n > 0.02;
  };
  const tick = () => {
    try {
      if (window.__pacs.firstImage === null && painted()) {
        window.__pacs.firstImage = performance.now();
      }
    }
    catch (e) { window.__pacs.errors.push(String(e)); }
    if (window.__pacs.firstImage === null) requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();
"""

_STATE = """() => ({
  firstImage: window.__pacs ? window.__pacs.firstImage : null,
  frames: window.__pacs ? window.__pacs.frames.size : 0,
  lastFrame: window.__pacs ? window.__pacs.lastFrame : null,
  errors: window.__pacs ? window.__pacs.errors : [],
  path: location.pathname + location.search,
})"""

# Share of the canvas's pixels that are lit, sampled: a blank viewport is 0.
_LIT = """() => {
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0, n = 0, values = new Set();
  for (let i = 0; i < d.length; i += 4 * 5) { n++; if (d[i] > 16) lit++; values.add(d[i]); }
  return { lit: lit / n, levels: values.size };
}"""


class _DicomWebLog:
    """What became of the page's DICOMweb requests (frames aside): for the message of a failure."""

    def __init__(self, page: Any) -> None:
        self.outcome: dict[str, str] = {}
        # Events carry what they say (no call back into the browser from a handler).
        page.on("request", lambda r: self._note(r.url, "pending"))
        page.on("response", lambda r: self._note(r.url, f"HTTP {r.status}"))
        page.on("requestfailed", lambda r: self._note(r.url, f"failed ({r.failure})"))

    def _note(self, url: str, outcome: str) -> None:
        if "/dicom-web/" in url and "/frames/" not in url:
            self.outcome[url.split("/dicom-web/", 1)[1][:120]] = outcome

    def summary(self, limit: int = 8) -> str:
        if not self.outcome:
            return "none"
        items = list(self.outcome.items())
        shown = ", ".join(f"{path} -> {outcome}" for path, outcome in items[-limit:])
        pending = sum(1 for outcome in self.outcome.values() if outcome == "pending")
        return f"{len(items)} ({pending} pending): {shown}"


@dataclass(frozen=True)
class View:
    """What one opening of a study in OHIF gave."""

    #: Seconds from the start of the viewer page's navigation to the first picture.
    first_image_s: float
    #: Seconds to the last frame of the series (None: not all arrived in time).
    all_frames_s: float | None
    #: Distinct frames fetched, and how many the series has.
    frames: int
    expected_frames: int
    #: Share of the viewport's pixels that are lit, and distinct grey levels.
    lit: float
    levels: int
    #: The page's path after redirects (``/viewer?StudyInstanceUIDs=...``).
    path: str
    #: The viewport's overlay and the study panel's text, for the test's checks.
    text: str
    screenshot: Path | None


def chromium() -> str:
    """Debian's chromium, or a UserError that says how to get it."""
    path = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if not path:
        raise UserError(
            "Debian's chromium is not installed on this machine: the viewer tests and "
            "`pacsctl bench view` drive it. Fix: `make prereqs` (as root), "
            "or apt-get install chromium"
        )
    return path


def sign_in(
    page: Any,
    base_url: str,
    user: str,
    password: str,
    next_path: str = "/",
    *,
    totp_secret: str | None = None,
) -> None:
    """Sign in as a person does, then land on ``next_path``.

    ``/login`` is pacs-web's form, or with the single sign-on a redirect to
    LemonLDAP::NG's portal, whose form asks the password, then (from outside
    the hospital) the TOTP code, computed here from ``totp_secret``.
    """
    page.goto(f"{base_url}/login?next={quote(next_path, safe='')}")
    if page.locator("input[name=username]").count():
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", password)
        with page.expect_navigation():
            page.click("button[type=submit], input[type=submit]")
        if urlsplit(page.url).path == "/login":
            raise AssertionError(f"sign-in as {user} refused: {page.inner_text('body')[:300]}")
        return
    portal = urlsplit(page.url).netloc
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("#lform button[type=submit]")
    if page.locator("input[name=code]").count():
        if not totp_secret:
            raise AssertionError(f"the portal asks {user} for a TOTP code, and none was given")
        page.fill("input[name=code]", pyotp.TOTP(totp_secret).now())
        with page.expect_navigation():
            page.click("form[action*=totp2fcheck] button[type=submit]")
    if urlsplit(page.url).netloc == portal and page.locator("input[name=password]").count():
        raise AssertionError(f"sign-in as {user} refused: {page.inner_text('body')[:300]}")


def _state(page: Any) -> dict[str, Any]:
    """The probe's state; between two documents (OHIF's OpenID Connect sign-in redirects
    through the portal and back), the state of none yet."""
    try:
        return dict(page.evaluate(_STATE))
    except PlaywrightError:
        return {"firstImage": None, "frames": 0, "lastFrame": None, "errors": [], "path": page.url}


def open_study(
    base_url: str,
    path: str,
    *,
    user: str | None,
    password: str | None,
    expected_frames: int,
    screenshot: Path | None = None,
    timeout_s: float = 180.0,
    wait_all: bool = True,
    totp_secret: str | None = None,
    resolve: Mapping[str, str] | None = None,
) -> View:
    """Sign in, open ``path`` (an /iid or /viewer URL) and wait for the study to be drawn.

    Without ``user``, nobody signs in: ``path`` is a correspondent's share link.
    ``resolve`` maps host names to addresses for the browser (the SSO's names
    are in no DNS of the test machine). The browser profile is fresh each time
    (cold caches), and TLS errors are ignored only in the browser: the tests
    check the gateway's certificate against the deployment CA separately.
    """
    args = list(CHROMIUM_ARGS)
    if resolve:
        rules = ", ".join(f"MAP {name} {address}" for name, address in resolve.items())
        args.append(f"--host-resolver-rules={rules}")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=args)
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 900}
            )
            page = context.new_page()
            web = _DicomWebLog(page)
            if user is not None and password is not None:
                sign_in(page, base_url, user, password, totp_secret=totp_secret)
            page.add_init_script(_PROBE)
            page.goto(f"{base_url}{path}", wait_until="commit")
            deadline = time.monotonic() + timeout_s
            state = _state(page)
            while time.monotonic() < deadline:
                state = _state(page)
                done_first = state["firstImage"] is not None
                done_all = state["frames"] >= expected_frames
                if done_first and (done_all or not wait_all):
                    break
                time.sleep(0.25)
            if state["firstImage"] is None:
                if screenshot:
                    page.screenshot(path=str(screenshot))
                raise AssertionError(
                    f"OHIF drew no image within {timeout_s:.0f} s at {state['path']}; "
                    f"{state['frames']} frames fetched; page errors: {state['errors'][:3]}; "
                    f"DICOMweb requests: {web.summary()}"
                )
            lit = page.evaluate(_LIT)
            page.wait_for_timeout(300)
            text = page.inner_text("body")
            if screenshot:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot))
            all_s = state["lastFrame"] / 1000 if state["frames"] >= expected_frames else None
            return View(
                first_image_s=state["firstImage"] / 1000,
                all_frames_s=all_s,
                frames=int(state["frames"]),
                expected_frames=expected_frames,
                lit=float(lit["lit"]) if lit else 0.0,
                levels=int(lit["levels"]) if lit else 0,
                path=str(state["path"]),
                text=text,
                screenshot=screenshot,
            )
        finally:
            browser.close()
