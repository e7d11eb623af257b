-- roll.lua is tally.lua (loaded from the same directory: the same tally
-- and done() output) plus a timeline, for the rolling-restart scenario
-- (-roll): every response is counted in the millisecond it arrived, on
-- CLOCK_MONOTONIC (read through LuaJIT's ffi, the clock the harness reads
-- too), as ok (status < 400) or bad (>= 400, which wrk counts as non-2xx
-- errors). done() adds one line per millisecond that had a response:
-- "SBS at <ms> <ok> <bad>" (per thread; the harness sums them). wrk's
-- socket errors (connect, read, write, timeout) reach no script callback,
-- so they are only in the totals.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "tally.lua")

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } sbs_timespec;
int clock_gettime(int clk, sbs_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("sbs_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + math.floor(tonumber(ts.tv_nsec) / 1000000)
end

local tally_setup, tally_init, tally_response, tally_done = setup, init, response, done
local threads = {}

function setup(thread)
  tally_setup(thread)
  table.insert(threads, thread)
end

function init(args)
  tally_init(args)
  ok = {}
  bad = {}
end

function response(status, headers, body)
  tally_response(status, headers, body)
  local t = now_ms()
  if status > 399 then
    bad[t] = (bad[t] or 0) + 1
  else
    ok[t] = (ok[t] or 0) + 1
  end
end

function done(summary, latency, requests)
  tally_done(summary, latency, requests)
  for _, t in ipairs(threads) do
    local tok, tbad = t:get("ok"), t:get("bad")
    for ms, n in pairs(tok) do
      io.write(string.format("SBS at %d %d %d\n", ms, n, tbad[ms] or 0))
    end
    for ms, n in pairs(tbad) do
      if not tok[ms] then
        io.write(string.format("SBS at %d 0 %d\n", ms, n))
      end
    end
  end
end
