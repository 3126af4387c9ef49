-- wrk script: POST pre-generated 1,000-event bodies to /api/v1/events and count the answers that
-- say all 1,000 were accepted (only those count towards the throughput figure).
-- Usage: wrk -t2 -c16 -d10s -s ingest.lua http://ADDR -- BODY_DIR TOKEN
-- The bodies come from `loader.py gen --dir BODY_DIR`; each thread cycles through all of them
-- from its own starting point, so consecutive requests carry different batches.

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  local dir, token = args[1], args[2]
  local n = tonumber(io.open(dir .. "/count"):read("*l"))
  reqs = {}
  for i = 0, n - 1 do
    local f = assert(io.open(string.format("%s/body_%03d.json", dir, i), "rb"))
    local body = f:read("*a")
    f:close()
    reqs[#reqs + 1] = wrk.format("POST", "/api/v1/events",
      { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" }, body)
  end
  idx = ((tid or 1) * 7) % #reqs
  acked, bad, last_bad = 0, 0, ""
end

function request()
  idx = idx % #reqs + 1
  return reqs[idx]
end

function response(status, headers, body)
  if status == 200 and string.find(body, '"accepted":1000,"rejected":0', 1, true) then
    acked = acked + 1
  else
    bad = bad + 1
    last_bad = status .. " " .. string.sub(body or "", 1, 200)
  end
end

function done(summary, latency, requests)
  local a, b, lb = 0, 0, ""
  for _, t in ipairs(threads) do
    a = a + t:get("acked")
    b = b + t:get("bad")
    local l = t:get("last_bad")
    if l ~= "" then lb = l end
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_s=%.3f acked_requests=%d bad=%d socket_errors=%d p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, summary.duration / 1e6, a, b, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  if lb ~= "" then io.write("LAST_BAD " .. lb .. "\n") end
end
