"""The page at / and CORS in a real headless Chromium, against the real server.

Run by .ci/browser, which builds and starts the server and passes:

    page_test.py BASE_URL SERVER_BINARY CONFIG LISTED_PORT FOREIGN_PORT

LISTED_PORT is the port of an origin listed in the server's api.cors_origins
(http://127.0.0.1:LISTED_PORT); FOREIGN_PORT one that is not. This script serves a tiny
page on each itself. Each check prints one line; the first failure stops the run with a
message, a screenshot in target/browser-failure.png and the browser's console.
"""

import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
REGISTER = "/v1/presence/register-app-presence"
USERS = "/v1/presence/users"
WAIT = 10.0

BASE, BINARY, CONFIG, LISTED_PORT, FOREIGN_PORT = sys.argv[1:6]
passed = 0


class Failed(Exception):
    pass


def ok(what):
    global passed
    passed += 1
    print(f"browser: ok - {what}", flush=True)


def token(user):
    return subprocess.run(
        [BINARY, "--config", CONFIG, "token", "--user-id", str(user)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def post(path, body, bearer=None):
    request = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    if bearer:
        request.add_header("authorization", f"Bearer {bearer}")
    with urllib.request.urlopen(request, timeout=10) as res:
        return res.status, json.loads(res.read())


def heartbeat(user, body):
    status, answer = post(REGISTER, body, bearer=token(user))
    if (status, answer) != (200, {}):
        raise Failed(f"heartbeat of {user} with {body}: {status} {answer}")


def type_name(value):
    """userPresenceType as a name, whether the server writes strings or integers."""
    return ["Offline", "Online", "InGame", "InStudio"][value] if isinstance(value, int) else value


def lookup(ids):
    return post(USERS, {"userIds": ids})[1]["userPresences"]


def wait_for(what, check, within=WAIT):
    """Polls check() until it returns something true; fails with `what` after `within` s."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except WebDriverException as e:
            last = f"(not yet: {e.msg})"
        else:
            if last:
                return last
        time.sleep(0.1)
    raise Failed(f"{what}: not seen within {within:.0f}s (last: {last!r})")


def text(driver, css):
    elements = driver.find_elements(By.CSS_SELECTOR, css)
    return elements[0].text if elements else None


def attr(driver, css, name):
    elements = driver.find_elements(By.CSS_SELECTOR, css)
    return elements[0].get_attribute(name) if elements else None


def count(driver, kind):
    value = text(driver, f"#count-{kind}")
    return int(value.replace(",", "")) if value and value.replace(",", "").isdigit() else None


# ---- Pages of other origins, each served on its own port by this script.

def cross_origin_page(cookie_token):
    """Calls the server from another origin: a lookup (JSON, so with a preflight), then a
    cookie heartbeat that gets a 403 and repeats with the x-csrf-token it could read."""
    return f"""<!doctype html><meta charset="utf-8"><title>another origin</title>
<pre id="result"></pre>
<script>
(async () => {{
  const base = {json.dumps(BASE)};
  const out = {{}};
  try {{
    const r = await fetch(base + "{USERS}", {{method: "POST",
      headers: {{"content-type": "application/json"}}, body: JSON.stringify({{userIds: [901, 902]}})}});
    out.lookup = {{status: r.status, body: await r.json()}};
    if ({json.dumps(cookie_token)}) {{
      document.cookie = ".ROBLOSECURITY=" + {json.dumps(cookie_token)} + "; path=/";
      const first = await fetch(base + "{REGISTER}", {{method: "POST", credentials: "include",
        headers: {{"content-type": "application/json"}}, body: "{{}}"}});
      const csrf = first.headers.get("x-csrf-token");
      out.first = {{status: first.status, token: csrf !== null}};
      const second = await fetch(base + "{REGISTER}", {{method: "POST", credentials: "include",
        headers: {{"content-type": "application/json", "x-csrf-token": csrf || ""}},
        body: JSON.stringify({{location: "From another origin"}})}});
      out.second = {{status: second.status}};
    }}
  }} catch (e) {{
    out.error = String(e);
  }}
  document.getElementById("result").textContent = JSON.stringify(out);
}})();
</script>
"""


def serve(port, body):
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = body.encode()
            self.send_response(200 if self.path == "/" else 404)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--window-size=1100,900",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


# ---- The checks.

def counts(driver):
    driver.get(BASE + "/")
    if "Presence" not in driver.title:
        raise Failed(f"the page's title is {driver.title!r}")
    before = wait_for("the counts", lambda: count(driver, "Online") is not None and count(driver, "Online") + 1)
    ok(f"the page loads and shows the counts (Online {before - 1})")
    driver.execute_script("window.notReloaded = true;")
    heartbeat(901, {"location": "Lobby"})
    seen = wait_for("Online >= 1 on the page after a heartbeat", lambda: (count(driver, "Online") or 0) >= 1 and count(driver, "Online"))
    total = count(driver, "total")
    if total is None or total < seen:
        raise Failed(f"total present {total} is below Online {seen}")
    ok(f"the Online count reaches {seen} without a reload (total {total})")


def row(driver, user, part):
    return text(driver, f'tr[data-user-id="{user}"] .{part}')


def row_type(driver, user):
    return attr(driver, f'tr[data-user-id="{user}"]', "data-type")


def watch(driver):
    ids = driver.find_element(By.ID, "ids")
    for bad, expected in [("1, abc", "not a user id"), ("0", "not a user id"), ("9223372036854775808", "not a user id"), ("", "at least one")]:
        ids.clear()
        ids.send_keys(bad)
        driver.find_element(By.ID, "watch").click()
        message = wait_for(f"a message for {bad!r}", lambda: driver.find_element(By.ID, "message").is_displayed() and text(driver, "#message"))
        if expected not in message:
            raise Failed(f"for {bad!r} the page says {message!r}")
    ok("ids that are not positive int64 are refused on the page with a message")

    ids.clear()
    ids.send_keys("901, 902 903,901")
    driver.find_element(By.ID, "watch").click()
    wait_for("the stream live", lambda: attr(driver, "#state", "data-state") == "live")
    for user, expected in [(901, "Online"), (902, "Offline"), (903, "Offline")]:
        wait_for(f"user {user} {expected}", lambda: row_type(driver, user) == expected)
    rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-user-id]")
    if [r.get_attribute("data-user-id") for r in rows] != ["901", "902", "903"]:
        raise Failed(f"rows {[r.get_attribute('data-user-id') for r in rows]}")
    if row(driver, 901, "location") != "Lobby" or row(driver, 902, "last-online") != "never":
        raise Failed(f"901 at {row(driver, 901, 'location')!r}, 902 last online {row(driver, 902, 'last-online')!r}")
    if driver.find_element(By.ID, "message").is_displayed():
        raise Failed("the earlier message is still shown")
    ok("Watch shows one row per distinct id, with the current state")

    heartbeat(902, {"placeId": 1818})
    wait_for("902 InGame", lambda: row_type(driver, 902) == "InGame" and row(driver, 902, "location") == "Classic: Crossroads")
    if "1818" not in (row(driver, 902, "place") or ""):
        raise Failed(f"902's place cell is {row(driver, 902, 'place')!r}")
    ok("a heartbeat at a place turns the row In game, live")

    heartbeat(901, {"location": "Home"})
    wait_for("901 at Home", lambda: row(driver, 901, "location") == "Home")
    ok("a location change shows live")

    heartbeat(901, {"disconnect": True})
    wait_for("901 Offline", lambda: row_type(driver, 901) == "Offline" and "Offline" in (row(driver, 901, "type") or ""))
    ok("a disconnect turns the row Offline, live")

    if driver.execute_script("return window.notReloaded === true;") is not True:
        raise Failed("the page was reloaded")
    ok("all of it without a reload")


def cors(driver):
    driver.get(f"http://127.0.0.1:{LISTED_PORT}/")
    raw = wait_for("the listed origin's result", lambda: text(driver, "#result"))
    result = json.loads(raw)
    if "error" in result:
        raise Failed(f"the listed origin's page could not call the API: {result['error']}")
    lookup_answer = result["lookup"]
    got = [(p["userId"], type_name(p["userPresenceType"])) for p in lookup_answer["body"]["userPresences"]]
    if lookup_answer["status"] != 200 or got != [(901, "Offline"), (902, "InGame")]:
        raise Failed(f"the listed origin's lookup: {lookup_answer}")
    ok("a page of a listed origin calls POST /v1/presence/users (through a preflight)")
    if result["first"] != {"status": 403, "token": True} or result["second"] != {"status": 200}:
        raise Failed(f"the listed origin's cookie heartbeat: {result}")
    entry = lookup([903])[0]
    if (type_name(entry["userPresenceType"]), entry["lastLocation"]) != ("Online", "From another origin"):
        raise Failed(f"903 after the cookie heartbeat: {entry}")
    ok("with a cookie, it reads the x-csrf-token of the 403 and repeats the call")

    driver.get(f"http://127.0.0.1:{FOREIGN_PORT}/")
    result = json.loads(wait_for("the unlisted origin's result", lambda: text(driver, "#result")))
    if "error" not in result:
        raise Failed(f"a page of an unlisted origin read the API: {result}")
    ok(f"a page of an unlisted origin is blocked ({result['error']})")


def main():
    listed = serve(LISTED_PORT, cross_origin_page(token(903)))
    foreign = serve(FOREIGN_PORT, cross_origin_page(None))
    with tempfile.TemporaryDirectory(prefix="presence-browser-") as profile:
        driver = browser(profile)
        try:
            for step in (counts, watch, cors):
                step(driver)
        except Exception as e:
            print(f"browser: FAILED - {e}", flush=True)
            try:
                driver.save_screenshot("target/browser-failure.png")
                print("browser: screenshot in target/browser-failure.png")
                for entry in driver.get_log("browser"):
                    print(f"browser console: {entry['level']} {entry['message']}")
            except Exception as more:
                print(f"browser: no screenshot ({more})")
            print(f"{passed} passed, 1 failed", flush=True)
            return 1
        finally:
            driver.quit()
            listed.shutdown()
            foreign.shutdown()
    print(f"{passed} passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
