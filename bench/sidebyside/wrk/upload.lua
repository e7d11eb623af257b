-- upload.lua is tally.lua (loaded from the same directory, so the tally
-- and done() output are the same) with a request of its own, for the
-- proxy scenario's upload mode: POST /upload, Transfer-Encoding: chunked,
-- a 4 KiB body in two chunks (3000 and 1096 bytes) and the last chunk.
-- wrk.format cannot write it (it adds Content-Length to any body), so the
-- raw bytes are built here, once per thread in init, and request()
-- returns them (a global request() makes wrk call it for every request).
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "tally.lua")

local chunks = { 3000, 1096 }
local req

local tally_init = init
function init(args)
  tally_init(args)
  local s = {
    "POST /upload HTTP/1.1\r\n",
    "Host: " .. wrk.headers["Host"] .. "\r\n", -- set by wrk before init
    "Content-Type: application/octet-stream\r\n",
    "Transfer-Encoding: chunked\r\n",
    "\r\n",
  }
  for _, n in ipairs(chunks) do
    s[#s + 1] = string.format("%x\r\n", n) .. string.rep("x", n) .. "\r\n"
  end
  s[#s + 1] = "0\r\n\r\n"
  req = table.concat(s)
end

function request()
  return req
end
