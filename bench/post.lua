-- wrk script: a small non-streaming OpenAI chat completion call.
--
-- done() appends one JSON line to $BENCH_OUT (stdout when unset), prefixed
-- with the fields in $BENCH_TAG (e.g. '"case":"throughput","target":"direct",'),
-- so bench/report.py can take medians over repetitions.  Latencies are in
-- microseconds; "non2xx" counts non-2xx/3xx answers, err_* socket errors.

wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"

done = function(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local e = summary.errors
   local line = string.format(
      '{%s"requests":%d,"seconds":%.3f,"rps":%.1f,'
      .. '"lat_p50_us":%.1f,"lat_p90_us":%.1f,"lat_p99_us":%.1f,"lat_p999_us":%.1f,"lat_max_us":%.1f,"lat_mean_us":%.1f,'
      .. '"non2xx":%d,"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d,"bytes":%d}\n',
      os.getenv("BENCH_TAG") or "",
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
      latency.max, latency.mean,
      e.status, e.connect, e.read, e.write, e.timeout, summary.bytes)
   local path = os.getenv("BENCH_OUT")
   if path and path ~= "" then
      local f = assert(io.open(path, "a"))
      f:write(line)
      f:close()
   else
      io.write(line)
   end
end
