-- wrk script: GET a seed endpoint (or any path with one numeric id) for random ids in 1..N.
-- Usage: wrk -t2 -c16 -d10s --latency -s query.lua http://ADDR -- PATH_PREFIX N TOKEN
--   e.g. -- /api/product/sale/ 1000 js_…     (without a token: no Authorization header, for nginx)
-- Prints one RESULT line: requests/s, p50/p99 latency, and non-2xx / socket error counts, so a
-- run that answered 401/404/500 can never pass for a fast one.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  prefix, n, token = args[1], tonumber(args[2]), args[3]
  if token and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  math.randomseed(12345 + (tid or 0))
end

-- Requests are formatted once, not per request (up to PRECOMPUTED ids; beyond, per request):
-- formatting in Lua costs wrk CPU that, on 2 cores, comes out of the server's.
local PRECOMPUTED = 200000

function request()
  if not reqs then
    reqs = {}
    if n > 0 and n <= PRECOMPUTED then
      for i = 1, n do
        reqs[i] = wrk.format("GET", prefix .. i)
      end
    elseif n <= 0 then
      reqs[1] = wrk.format("GET", prefix)
    end
  end
  if n > PRECOMPUTED then
    return wrk.format("GET", prefix .. math.random(1, n))
  end
  return reqs[math.random(1, #reqs)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f rps=%.1f non2xx=%d socket_errors=%d p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
