-- wrk script for the benchmark: POST one chat completion per request, check each reply,
-- and print the run's numbers as one JSON line from done().
--
--   wrk -t1 -c64 -d5s -s bench/chat.lua URL -- <body file> <bearer key> <stream: 0|1>
--
-- A reply counts as bad (besides wrk's own non-2xx and socket error counts) when its status
-- is 200 but its body is not a finished completion: a stream must end with "data: [DONE]"
-- and carry finish_reason "stop" and no error event; a JSON reply must carry finish_reason
-- "stop". So a gateway that answers fast with an error inside a 200 cannot look fast.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local file = assert(io.open(args[1], "rb"))
   wrk.body = file:read("*a")
   file:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   wrk.headers["Authorization"] = "Bearer " .. args[2]
   streaming = args[3] == "1"
   bad = 0
end

local FINISHED = '"finish_reason"%s*:%s*"stop"'

function response(status, headers, body)
   if status ~= 200 then
      return -- counted by wrk as a non-2xx response
   end
   local ok = string.find(body, FINISHED) ~= nil
   if ok and streaming then
      ok = string.find(body, "data: [DONE]", -24, true) ~= nil
         and string.find(body, 'data: {"error"', 1, true) == nil
   end
   if not ok then
      bad = bad + 1
   end
end

function done(summary, latency, requests)
   local bad_bodies = 0
   for _, thread in ipairs(threads) do
      bad_bodies = bad_bodies + (thread:get("bad") or 0)
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
         .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
         .. '"non_2xx":%d,"bad_bodies":%d,'
         .. '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.timeout,
      errors.status, bad_bodies,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.mean, latency.max))
end
