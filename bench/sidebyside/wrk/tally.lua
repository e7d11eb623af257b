-- tally.lua counts responses per X-Sidecar-Worker header (and, for the
-- proxy scenario's upstream, per X-Upstream-Body) in every wrk thread and,
-- when the run is done, prints machine-readable lines ("SBS key value...")
-- for the sidebyside harness. upload.lua loads it (dofile) and adds the
-- request.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
  bodies = {}
end

function response(status, headers, body)
  local id = headers["X-Sidecar-Worker"] or headers["x-sidecar-worker"] or "none"
  counts[id] = (counts[id] or 0) + 1
  local b = headers["X-Upstream-Body"] or headers["x-upstream-body"]
  if b then
    bodies[b] = (bodies[b] or 0) + 1
  end
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
    for b, n in pairs(t:get("bodies")) do
      io.write(string.format("SBS body %s %d\n", b, n))
    end
  end
end
