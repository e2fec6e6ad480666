-- wrk script for omnirouter's POST /v1/inbound/{tenant} with HMAC-signed bodies.
--
--   ingest-ref gen-requests --count 200000 --secret S --tenant bench --out bodies.lua
--   wrk -t2 -c64 -d10s --latency -s benches/wrk/inbound.lua http://127.0.0.1:PORT -- bodies.lua 2
--
-- Arguments after `--`: the generated bodies file, the number of wrk threads (-t), and
-- optionally where each thread starts in its slice: one number for all, or a comma-separated
-- list by thread (default 0). The result line's `next=` is such a list, so a measured run can
-- continue exactly where its warm-up stopped. The file may also be given as WRK_BODIES, the
-- thread count as WRK_THREADS, the start as WRK_START.
--
-- Design. The daemon is run with every check on: X-Omni-Signature (HMAC-SHA256 of the raw
-- body), JSON parse, normalize, dedupe. Each request must carry a client_message_id the daemon
-- has not seen, or it would be answered from the dedupe cache without publishing. Lua has no
-- HMAC, and a pure-Lua SHA-256 per request would cost wrk about as much CPU as the daemon spends
-- per request on a 2-core machine, so bodies are signed ahead of time by `ingest-ref
-- gen-requests`. A table covering a whole run (up to ~50k req/s × 10 s) would be several hundred
-- MB, so instead:
--   * each thread takes a disjoint slice of the table (record k goes to thread k % threads) and
--     cycles through it;
--   * ingest.sh runs the daemon with a dedupe capacity of at most half the table size. A body
--     comes round again only after every other body of the table (about `count` inserts later,
--     at least `count / 2` even if one thread is twice as fast as the other), by which time the
--     capacity bound has evicted its id, so it is published again exactly like a new message
--     (same lookup miss, publish, insert, eviction: the daemon's steady state under load,
--     where the cache is always full). Within one pass ids are distinct; `wraps` in the result
--     line says how many passes past the first there were, and ingest.sh cross-checks the
--     daemon's omni_ingress_duplicates_total, which must stay 0;
--   * the measured run starts in the table where the warm-up stopped (third argument), so the
--     two together behave as one continuous run; the daemon is restarted for every
--     configuration, so no state carries over.
-- Requests are pre-formatted with wrk.format in init(), so request() is a table lookup.
--
-- Start barrier. wrk runs each thread's init() and starts that thread before initialising the
-- next, and starts its clock only after the last one: loading the table (~0.4 s per thread)
-- would give thread 0 a head start whose requests count but whose time does not (+10-20 %
-- req/s in a 3 s run). So every thread's first request() waits (LuaJIT FFI usleep) until the
-- last thread has finished init() and created a marker file; latency is not affected, since
-- wrk stamps a request's start after request() returns.
--
-- done() prints one parseable line:
--   WRK_RESULT requests=… ok=… duration_s=… rps=… ok_rps=… p50_us=… p99_us=… p999_us=… …
-- (latencies in microseconds; non2xx counts HTTP statuses >= 400 as wrk does, plus socket
-- errors listed separately).

local has_ffi, ffi = pcall(require, "ffi")
if has_ffi then
   ffi.cdef([[
      int getpid(void);
      int usleep(unsigned int usec);
   ]])
end

-- The start-barrier marker: one per wrk process, in $WRK_READY_DIR (else $TMPDIR or /tmp).
local function ready_path()
   if not has_ffi then
      return nil
   end
   local dir = os.getenv("WRK_READY_DIR") or os.getenv("TMPDIR") or "/tmp"
   return dir .. "/wrk-inbound-" .. ffi.C.getpid() .. ".ready"
end

local threads = {}
local thread_count = 0

-- Runs in the main Lua state once per thread, before that thread's init().
function setup(thread)
   thread:set("id", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

local requests = {}
local n = 0
-- Globals, so done() can read them with thread:get(): the last record sent (index in this
-- thread's slice) and how many times the thread went past the end of its slice.
pos = 0
wraps = 0

function init(args)
   local file = args[1] or os.getenv("WRK_BODIES")
   local nthreads = tonumber(args[2] or os.getenv("WRK_THREADS") or "1")
   local starts = {}
   for v in string.gmatch(args[3] or os.getenv("WRK_START") or "0", "%d+") do
      starts[#starts + 1] = tonumber(v)
   end
   if not file then
      error("usage: wrk ... -s inbound.lua URL -- BODIES_FILE THREADS [START]")
   end
   local me = id or 0
   local start = starts[me + 1] or starts[1] or 0
   if os.getenv("WRK_DEBUG") then
      io.stderr:write("inbound.lua: thread " .. me .. " of " .. nthreads .. "\n")
   end
   local data = dofile(file)
   local path = "/v1/inbound/" .. data.tenant
   local records = data.records
   local at, k = 1, 0
   while true do
      local nl = records:find("\n", at, true)
      if not nl then
         break
      end
      if k % nthreads == me then
         local sp = records:find(" ", at, true)
         local headers = {
            ["Content-Type"] = "application/json",
            ["X-Omni-Signature"] = "sha256=" .. records:sub(at, sp - 1),
         }
         n = n + 1
         requests[n] = wrk.format("POST", path, headers, records:sub(sp + 1, nl - 1))
      end
      at = nl + 1
      k = k + 1
   end
   if n == 0 then
      error("no request bodies for thread " .. me .. " in " .. file)
   end
   data = nil
   records = nil
   collectgarbage()
   -- request() increments before use: the first record sent is the one after `start`.
   pos = start % n
   local marker = ready_path()
   if marker and me == nthreads - 1 then
      local f = io.open(marker, "w")
      if f then
         f:close()
      end
   end
end

local waited = not has_ffi
-- wrk calls thread 0's request() once from the main thread, right after that thread's init(),
-- to check the script (script_verify_request): that call must not wait.
local verify_call_pending = true

-- Blocks this thread until the last thread is initialised (at most 60 s).
local function wait_for_start()
   waited = true
   local marker = ready_path()
   for _ = 1, 120000 do
      local f = io.open(marker, "r")
      if f then
         f:close()
         return
      end
      ffi.C.usleep(500)
   end
end

function request()
   if not waited then
      if verify_call_pending and (id or 0) == 0 then
         verify_call_pending = false
      else
         wait_for_start()
      end
   end
   pos = pos + 1
   if pos > n then
      pos = 1
      wraps = wraps + 1
   end
   return requests[pos]
end

function done(summary, latency, _)
   local marker = ready_path()
   if marker then
      os.remove(marker)
   end
   local total_wraps = 0
   local next_pos = {}
   for k, t in ipairs(threads) do
      total_wraps = total_wraps + (tonumber(t:get("wraps")) or 0)
      next_pos[k] = tostring(tonumber(t:get("pos")) or 0)
   end
   local e = summary.errors
   local secs = summary.duration / 1e6
   local ok = summary.requests - e.status
   io.write(string.format(
      "WRK_RESULT requests=%d ok=%d duration_s=%.3f rps=%.1f ok_rps=%.1f "
         .. "p50_us=%d p99_us=%d p999_us=%d max_us=%d non2xx=%d "
         .. "connect_err=%d read_err=%d write_err=%d timeout_err=%d wraps=%d next=%s\n",
      summary.requests, ok, secs, summary.requests / secs, ok / secs,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
      e.status, e.connect, e.read, e.write, e.timeout, total_wraps, table.concat(next_pos, ",")))
end
