#!/usr/bin/env node
// Compatibility check: the published noblox.js client (npm `noblox.js`) against a running server.
//
// Usage (noblox.js installed anywhere, found through NODE_PATH or a node_modules above):
//   NODE_PATH=/tmp/noblox/node_modules node noblox_presence.js BASE_URL TOKEN
//   PRESENCE_URL=http://127.0.0.1:8080 PRESENCE_TOKEN=... node noblox_presence.js
//
// The server must run with `api.presence_type = "integer"` and accept TOKEN; PLACE_ID must
// not be in its place catalog. noblox.js calls https://presence.roblox.com/v1/presence/users
// after fetching an X-CSRF-TOKEN from https://auth.roblox.com/v2/logout (a cookie POST that
// answers 403 + x-csrf-token). Nothing in node_modules is edited: before noblox.js is loaded,
// the exported request function of its lib/util/http.js is wrapped so that presence.roblox.com
// goes to BASE_URL and the logout handshake goes to BASE_URL's register-app-presence, which
// answers a cookie call without a CSRF token the same way (403 + x-csrf-token, nothing
// recorded). getPresences returns the response JSON unparsed, so entries are compared exactly.
// Ends with the line "noblox.js: N passed, M failed"; exits 1 on any failure.

'use strict'

const PLACE_ID = 4815162342
const UNIVERSE_ID = 108
const GAME_ID = '6fbe6f4e-3a3f-4b43-9f7e-2d7c7c8e9a11'
const SLACK_MS = 1000 // lastOnline vs. this machine's clock (ms truncation, loopback)

const base = (process.argv[2] || process.env.PRESENCE_URL || '').replace(/\/+$/, '')
const token = process.argv[3] || process.env.PRESENCE_TOKEN || ''
if (!base || !token) {
  console.error('usage: node noblox_presence.js BASE_URL TOKEN (or PRESENCE_URL, PRESENCE_TOKEN)')
  process.exit(2)
}

let httpMod, noblox, version
try {
  httpMod = require('noblox.js/lib/util/http.js')
  version = require('noblox.js/package.json').version
} catch (e) {
  console.error(`noblox.js is not installed (${e.message}): npm install noblox.js, then set NODE_PATH`)
  process.exit(2)
}

// Redirect noblox.js's requests (must happen before noblox.js's modules capture `.func`).
const routed = []
const realHttp = httpMod.func
httpMod.func = function (args) {
  const url = new URL(args.url.startsWith('//') ? 'https:' + args.url : args.url)
  let target
  if (url.host === 'presence.roblox.com') target = base + url.pathname + url.search
  else if (url.host === 'auth.roblox.com' && url.pathname === '/v2/logout') target = base + '/v1/presence/register-app-presence'
  else throw new Error('noblox.js asked for an unexpected URL: ' + url.href)
  const sent = { method: (args.options && args.options.method) || 'GET', from: url.href, to: target }
  routed.push(sent)
  return realHttp({ ...args, url: target }).then((res) => {
    if (res && res.statusCode) {
      sent.status = res.statusCode
      sent.csrf = res.headers['x-csrf-token']
    }
    return res
  })
}
noblox = require('noblox.js')

let passed = 0
const failures = []
// Key order does not matter; a missing key differs from a null one.
const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === 'object' && !Array.isArray(x))
  ? Object.fromEntries(Object.keys(x).sort().map((key) => [key, x[key]])) : x)
const same = (a, b) => canon(a) === canon(b)
function check (name, actual, expected) {
  if (same(actual, expected)) passed++
  else failures.push(`${name}: expected ${canon(expected)}, got ${canon(actual)}`)
}
function checkTrue (name, ok, detail) {
  if (ok) passed++
  else failures.push(`${name}: ${detail}`)
}

function userIdOf (jwt) {
  return Number(JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString()).sub)
}

async function heartbeat (body) {
  const res = await fetch(base + '/v1/presence/register-app-presence', {
    method: 'POST',
    headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
    body: JSON.stringify(body)
  })
  return [res.status, await res.text()]
}

function checkLastOnline (name, value, before, after) {
  checkTrue(`${name} format`, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(value), `got ${JSON.stringify(value)}`)
  const t = Date.parse(value)
  checkTrue(`${name} is the heartbeat time`, t >= before - SLACK_MS && t <= after + SLACK_MS,
    `${value} not within [${new Date(before).toISOString()}, ${new Date(after).toISOString()}]`)
}

async function main () {
  console.log(`noblox.js ${version} against ${base}`)
  const uid = userIdOf(token)
  const never = 1e12 + Math.floor(Math.random() * 1e14) // an id no heartbeat ever named
  const neverSeen = {
    userPresenceType: 0, lastLocation: '', placeId: null, rootPlaceId: null, universeId: null,
    gameId: null, userId: never, lastOnline: '0001-01-01T00:00:00.000Z'
  }
  const lookup = () => noblox.getPresences({ userIds: [uid, never], jar: token })

  const steps = {
    'in game': async (name) => {
      const before = Date.now()
      check(`${name}: heartbeat answer`, await heartbeat({ placeId: PLACE_ID, location: 'compat check', gameId: GAME_ID, universeId: UNIVERSE_ID }), [200, '{}'])
      const after = Date.now()
      const n = routed.length
      const res = await lookup()
      const calls = routed.slice(n)
      check(`${name}: noblox.js's requests`, calls.map((c) => `${c.method} ${c.from}`),
        ['POST https://auth.roblox.com/v2/logout', 'POST https://presence.roblox.com/v1/presence/users'])
      check(`${name}: CSRF handshake answer`, [calls[0] && calls[0].status, Boolean(calls[0] && calls[0].csrf)], [403, true])
      const [me, other] = res.userPresences || []
      check(`${name}: entry`, { ...me, lastOnline: undefined }, {
        userPresenceType: 2, lastLocation: 'compat check', placeId: PLACE_ID, rootPlaceId: PLACE_ID,
        universeId: UNIVERSE_ID, gameId: GAME_ID, userId: uid
      })
      checkLastOnline(`${name}: lastOnline`, me && me.lastOnline, before, after)
      check(`${name}: never-seen entry`, other, neverSeen)
      check(`${name}: entries`, (res.userPresences || []).length, 2)
    },
    online: async (name) => {
      const before = Date.now()
      check(`${name}: heartbeat answer`, await heartbeat({}), [200, '{}'])
      const after = Date.now()
      const res = await lookup()
      const [me, other] = res.userPresences
      check(`${name}: entry`, { ...me, lastOnline: undefined }, {
        userPresenceType: 1, lastLocation: 'Website', placeId: null, rootPlaceId: null,
        universeId: null, gameId: null, userId: uid
      })
      checkLastOnline(`${name}: lastOnline`, me.lastOnline, before, after)
      check(`${name}: never-seen entry`, other, neverSeen)
    },
    offline: async (name) => {
      const before = Date.now()
      check(`${name}: heartbeat answer`, await heartbeat({ disconnect: true }), [200, '{}'])
      const after = Date.now()
      const [me] = (await lookup()).userPresences
      check(`${name}: entry`, { ...me, lastOnline: undefined }, {
        userPresenceType: 0, lastLocation: 'Website', placeId: null, rootPlaceId: null,
        universeId: null, gameId: null, userId: uid
      })
      checkLastOnline(`${name}: lastOnline`, me.lastOnline, before, after)
    },
    errors: async (name) => {
      try {
        await noblox.getPresences({ userIds: Array.from({ length: 51 }, (_, i) => i + 1), jar: token })
        failures.push(`${name}: 51 ids: no error`)
      } catch (e) {
        check(`${name}: 51 ids`, [e.name, e.httpStatusCode, e.error],
          ['RobloxAPIError', 400, { code: 2, message: 'Too many User Ids being sent in the request.' }])
      }
    }
  }
  for (const [name, fn] of Object.entries(steps)) {
    try {
      await fn(name)
    } catch (e) {
      failures.push(`${name}: noblox.js raised ${e && e.name}: ${e && e.message}`)
    }
  }
}

main().then(() => {
  for (const f of failures) console.log('FAIL ' + f)
  console.log(`noblox.js: ${passed} passed, ${failures.length} failed`)
  process.exit(failures.length ? 1 : 0)
})
