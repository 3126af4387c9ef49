-- wrk script of bench/disk.sh: GET PATH_PREFIX{id} for ids drawn at random from a file (one id a
-- line: the products that occur in the loaded stream, since a product never seen is a 404).
-- Usage: wrk -t2 -c16 -d5s --latency -s disk-query.lua http://ADDR -- PATH_PREFIX IDS_FILE TOKEN
-- Prints one RESULT line in query.lua's format (req/s, latency percentiles, non-2xx and socket
-- errors), so a run that answered 401/404/500 can never pass for a fast one.

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  prefix, token = args[1], args[3]
  ids = {}
  for line in io.lines(args[2]) do
    ids[#ids + 1] = line
  end
  assert(#ids > 0, "no ids in " .. args[2])
  if token and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  math.randomseed(12345 + (tid or 0))
end

-- Each id's request is formatted once, here, not per request: formatting one in Lua costs wrk
-- ~5 us of CPU more than the static request of query.lua's hot product and nginx reference, and
-- on 2 cores that CPU comes out of the server's (bench/README.md, "The load generator's share").
function init_requests()
  reqs = {}
  for i, id in ipairs(ids) do
    reqs[i] = wrk.format("GET", prefix .. id)
  end
end

function request()
  if not reqs then
    init_requests()
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
