-- tally.lua counts responses per X-Sidecar-Worker header in every wrk
-- thread and, when the run is done, prints machine-readable lines
-- ("SBS key value...") for the sidebyside harness.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
end

function response(status, headers, body)
  local id = headers["X-Sidecar-Worker"] or headers["x-sidecar-worker"] or "none"
  counts[id] = (counts[id] or 0) + 1
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("SBS requests %d\n", summary.requests))
  io.write(string.format("SBS duration_us %d\n", summary.duration))
  io.write(string.format("SBS errors %d %d %d %d %d\n",
    e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("SBS p50_us %d\n", latency:percentile(50)))
  io.write(string.format("SBS p99_us %d\n", latency:percentile(99)))
  for _, t in ipairs(threads) do
    for id, n in pairs(t:get("counts")) do
      io.write(string.format("SBS worker %s %d\n", id, n))
    end
  end
end
