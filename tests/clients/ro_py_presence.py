#!/usr/bin/env python3
"""Compatibility check: the published ro.py client (PyPI `roblox`) against a running server.

Usage:
    python3 ro_py_presence.py BASE_URL TOKEN
    PRESENCE_URL=http://127.0.0.1:8080 PRESENCE_TOKEN=... python3 ro_py_presence.py

The server must run with `api.presence_type = "integer"` (what ro.py parses) and TOKEN must
be a credential it accepts (`presence-server --config FILE token --user-id 42`). The place
used below (PLACE_ID) must not be in the server's place catalog.

Heartbeats are sent with urllib (Bearer) and once through ro.py's own session (cookie
`.ROBLOSECURITY` and its X-CSRF-Token retry). Lookups go through ro.py's
`client.presence.get_user_presences`, with ro.py's URL generator replaced on the client
instance so that https://presence.roblox.com/v1/... becomes BASE_URL/v1/... (nothing in
site-packages is changed). Every parsed value is compared exactly; the script exits 1 with
a message per mismatch, and ends with the line "ro.py: N passed, M failed".
"""

import asyncio
import base64
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

try:
    import roblox
    from roblox.bases.basejob import BaseJob
    from roblox.bases.baseplace import BasePlace
    from roblox.bases.baseuniverse import BaseUniverse
    from roblox.presence import PresenceType
except ImportError as e:  # pragma: no cover
    sys.exit(f"ro.py is not installed ({e}): pip install roblox")

PLACE_ID = 4815162342
UNIVERSE_ID = 108
GAME_ID = "6fbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a11"
EPOCH_SENTINEL = datetime(1, 1, 1, tzinfo=timezone.utc)
SLACK = timedelta(seconds=1)  # lastOnline vs. this machine's clock (ms truncation, loopback)

passed = 0
failures = []


def check(name, actual, expected):
    global passed
    if actual == expected:
        passed += 1
    else:
        failures.append(f"{name}: expected {expected!r}, got {actual!r}")


def check_true(name, ok, detail):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(f"{name}: {detail}")


def token_user_id(token):
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return int(json.loads(base64.urlsafe_b64decode(payload))["sub"])


def heartbeat(base, token, body):
    """POST register-app-presence with a Bearer token; returns (status, body)."""
    req = urllib.request.Request(
        base + "/v1/presence/register-app-presence",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def make_client(base):
    """A ro.py Client whose URL generator points at BASE_URL; records what it was asked for."""
    client = roblox.Client()
    original = client.url_generator.get_url
    asked = []

    def get_url(subdomain, path="", base_url=None, protocol="https"):
        asked.append(original(subdomain, path, base_url, protocol))
        return f"{base}/{path}"

    client.url_generator.get_url = get_url  # instance attribute: shared by every provider
    # Keep the raw JSON of each response ro.py received (ro.py 2.x does not parse userId).
    raw = []
    real_post = client.requests.post

    async def post(*args, **kwargs):
        resp = await real_post(*args, **kwargs)
        raw.append(resp.json())
        return resp

    client.requests.post = post
    return client, asked, raw


def check_last_online(name, value, before, after):
    check_true(f"{name} is a datetime", isinstance(value, datetime), f"got {value!r}")
    if not isinstance(value, datetime):
        return
    check_true(f"{name} is UTC", value.utcoffset() == timedelta(0), f"got {value!r}")
    check_true(
        f"{name} is the heartbeat time",
        before - SLACK <= value <= after + SLACK,
        f"{value.isoformat()} not within [{before.isoformat()}, {after.isoformat()}]",
    )


async def run(base, token):
    uid = token_user_id(token)
    never = random.randrange(10**12, 10**15)  # an id no heartbeat ever named
    client, asked, raw = make_client(base)

    async def lookup(step):
        n = len(asked)
        presences = await client.presence.get_user_presences([uid, never])
        check(f"{step}: ro.py's request URL", asked[n:], ["https://presence.roblox.com/v1/presence/users"])
        check(f"{step}: userIds in the response ro.py parsed", [p["userId"] for p in raw[-1]["userPresences"]], [uid, never])
        check(f"{step}: number of Presence objects", len(presences), 2)
        return presences

    def check_never_seen(step, p):
        check(f"{step}: never-seen user_presence_type", p.user_presence_type, PresenceType.offline)
        check(f"{step}: never-seen last_location", p.last_location, "")
        for attr in ("place", "root_place", "universe", "job"):
            check(f"{step}: never-seen {attr}", getattr(p, attr), None)
        check(f"{step}: never-seen last_online (0001-01-01 sentinel)", p.last_online, EPOCH_SENTINEL)

    async def step(name, fn):
        try:
            await fn(name)
        except Exception as e:  # a client crash is a failed check, not a traceback
            failures.append(f"{name}: ro.py raised {type(e).__name__}: {e}")

    # 1. In game (Bearer heartbeat with the gameId and universeId extensions).
    async def in_game(name):
        before = datetime.now(timezone.utc)
        status, body = heartbeat(base, token, {"placeId": PLACE_ID, "location": "compat check",
                                               "gameId": GAME_ID, "universeId": UNIVERSE_ID})
        after = datetime.now(timezone.utc)
        check(f"{name}: heartbeat answer", (status, body), (200, "{}"))
        me, other = await lookup(name)
        check(f"{name}: user_presence_type", me.user_presence_type, PresenceType.in_game)
        check(f"{name}: last_location", me.last_location, "compat check")
        check(f"{name}: place is a BasePlace", type(me.place), BasePlace)
        check(f"{name}: place.id", getattr(me.place, "id", None), PLACE_ID)
        check(f"{name}: root_place.id (unknown place: the place)", getattr(me.root_place, "id", None), PLACE_ID)
        check(f"{name}: universe is a BaseUniverse", type(me.universe), BaseUniverse)
        check(f"{name}: universe.id", getattr(me.universe, "id", None), UNIVERSE_ID)
        check(f"{name}: job is a BaseJob", type(me.job), BaseJob)
        check(f"{name}: job.id (gameId)", getattr(me.job, "id", None), GAME_ID)
        check_last_online(f"{name}: last_online", me.last_online, before, after)
        check_never_seen(name, other)

    # 2. In Studio, sent through ro.py's own session: cookie credential, 403 + x-csrf-token, retry.
    async def in_studio(name):
        client.set_token(token)
        before = datetime.now(timezone.utc)
        resp = await client.requests.post(
            client.url_generator.get_url("presence", "v1/presence/register-app-presence"),
            json={"location": "Studio", "placeId": PLACE_ID},
        )
        after = datetime.now(timezone.utc)
        check(f"{name}: cookie heartbeat answer", (resp.status_code, resp.text), (200, "{}"))
        check_true(f"{name}: ro.py picked up the CSRF token",
                   bool(client.requests.session.headers.get("X-CSRF-Token")),
                   f"session headers {dict(client.requests.session.headers)}")
        client.requests.session.cookies.clear()  # lookups stay anonymous
        me, other = await lookup(name)
        check(f"{name}: user_presence_type", me.user_presence_type, PresenceType.in_studio)
        check(f"{name}: last_location", me.last_location, "Studio")
        check(f"{name}: place.id", getattr(me.place, "id", None), PLACE_ID)
        check(f"{name}: root_place.id", getattr(me.root_place, "id", None), PLACE_ID)
        check(f"{name}: universe (unknown place, no extension)", me.universe, None)
        check(f"{name}: job (none in Studio)", me.job, None)
        check_last_online(f"{name}: last_online", me.last_online, before, after)
        check_never_seen(name, other)

    # 3. Online on the website (empty heartbeat).
    async def online(name):
        before = datetime.now(timezone.utc)
        status, body = heartbeat(base, token, {})
        after = datetime.now(timezone.utc)
        check(f"{name}: heartbeat answer", (status, body), (200, "{}"))
        me, _ = await lookup(name)
        check(f"{name}: user_presence_type", me.user_presence_type, PresenceType.online)
        check(f"{name}: last_location", me.last_location, "Website")
        for attr in ("place", "root_place", "universe", "job"):
            check(f"{name}: {attr}", getattr(me, attr), None)
        check_last_online(f"{name}: last_online", me.last_online, before, after)

    # 4. Disconnect: Offline at once, last location kept.
    async def offline(name):
        before = datetime.now(timezone.utc)
        status, body = heartbeat(base, token, {"disconnect": True})
        after = datetime.now(timezone.utc)
        check(f"{name}: heartbeat answer", (status, body), (200, "{}"))
        me, _ = await lookup(name)
        check(f"{name}: user_presence_type", me.user_presence_type, PresenceType.offline)
        check(f"{name}: last_location (kept)", me.last_location, "Website")
        for attr in ("place", "root_place", "universe", "job"):
            check(f"{name}: {attr}", getattr(me, attr), None)
        check_last_online(f"{name}: last_online", me.last_online, before, after)

    # 5. Errors as ro.py raises them.
    async def errors(name):
        for ids, code, message in (
            (list(range(1, 52)), 2, "Too many User Ids being sent in the request."),
            ([0], 1, "Invalid user id."),
        ):
            try:
                await client.presence.get_user_presences(ids)
                failures.append(f"{name}: {len(ids)} ids {ids[:1]}...: no exception")
            except roblox.BadRequest as e:
                check(f"{name}: status", e.status, 400)
                check(f"{name}: parsed errors", [(x.code, x.message) for x in e.errors], [(code, message)])

    for name, fn in (("in game", in_game), ("in studio", in_studio), ("online", online),
                     ("offline", offline), ("errors", errors)):
        await step(name, fn)


def main():
    args = sys.argv[1:]
    base = (args[0] if args else os.environ.get("PRESENCE_URL", "")).rstrip("/")
    token = args[1] if len(args) > 1 else os.environ.get("PRESENCE_TOKEN", "")
    if not base or not token:
        sys.exit(__doc__.split("\n\n")[1])
    try:
        from importlib.metadata import version
        print(f"ro.py (roblox) {version('roblox')} against {base}")
    except Exception:
        pass
    start = time.monotonic()
    asyncio.run(run(base, token))
    for f in failures:
        print("FAIL " + f)
    print(f"({time.monotonic() - start:.1f}s)")
    print(f"ro.py: {passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
