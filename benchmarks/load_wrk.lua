-- The clients of `benchmarks/load.py --mode submit`, run by wrk (one phase per run).
-- load.py sets, in the environment:
--   LOAD_PHASE  "submit" (POST the body below again and again) or "get" (GET /jobs/{id})
--   LOAD_BODY   submit: a file holding the multipart body; LOAD_TYPE its Content-Type
--   LOAD_IDS    submit: the accepted jobs' ids are written to LOAD_IDS.<thread>, one a line;
--               get: the file of ids to cycle through
--   LOAD_MAX    requests a thread makes at most: it stops there, whatever the time left
-- done() prints `load name=value` lines for load.py.
--
-- Values reach done() (the main Lua state) from the threads' states through thread:get,
-- which copies strings and numbers well but not tables (wrk 4.1's copy of a table pops one
-- value too many): so each status is counted in a global of its own, status_<code>.

local phase = os.getenv("LOAD_PHASE")
local max_requests = tonumber(os.getenv("LOAD_MAX"))
local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
   thread:set("index", #threads)
end

if phase == "submit" then
   local f = assert(io.open(os.getenv("LOAD_BODY"), "rb"))
   wrk.method = "POST"
   wrk.body = f:read("*a")
   f:close()
   wrk.headers["Content-Type"] = os.getenv("LOAD_TYPE")
end

local responses = 0
local ids, next_id, ids_out

function init(args)
   if phase == "submit" then
      -- Written as they come (buffered); C's exit() flushes it when wrk ends.
      ids_out = assert(io.open(os.getenv("LOAD_IDS") .. "." .. index, "w"))
   else
      ids = {}
      for line in io.lines(os.getenv("LOAD_IDS")) do
         ids[#ids + 1] = line
      end
      assert(#ids > 0, "no ids in " .. os.getenv("LOAD_IDS"))
      next_id = (index - 1) * 7919 -- threads start apart, as load.py's clients did
   end
end

if phase == "get" then
   function request()
      next_id = next_id + 1
      return wrk.format("GET", "/jobs/" .. ids[next_id % #ids + 1])
   end
end

function response(status, headers, body)
   local key = "status_" .. status
   _G[key] = (_G[key] or 0) + 1
   if status == 202 and ids_out then
      local id = body:match('"id"%s*:%s*"([^"]+)"')
      if id then
         ids_out:write(id, "\n")
      end
   end
   responses = responses + 1
   if max_requests and responses >= max_requests then
      capped = 1
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local function out(name, value)
      io.write(string.format("load %s=%s\n", name, tostring(value)))
   end
   out("requests", summary.requests)
   out("duration_us", summary.duration)
   for _, name in ipairs({ "connect", "read", "write", "timeout" }) do
      out("errors_" .. name, summary.errors[name])
   end
   for _, p in ipairs({ 50, 95, 99 }) do
      out("latency_p" .. p .. "_us", latency:percentile(p))
   end
   local capped = 0
   for status = 100, 599 do
      local n = 0
      for _, thread in ipairs(threads) do
         n = n + (thread:get("status_" .. status) or 0)
      end
      if n > 0 then
         out("status_" .. status, n)
      end
   end
   for _, thread in ipairs(threads) do
      capped = capped + (thread:get("capped") or 0)
   end
   out("capped_threads", capped)
end
