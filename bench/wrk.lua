-- Request generator for bench/http.sh (wrk 4.x, LuaJIT).
--
--   wrk ... -s bench/wrk.lua URL -- put BASE PREFIX   PUT BASE..PREFIX-<thread>-<n>, a new
--                                                     ~300-byte nested JSON document each
--   wrk ... -s bench/wrk.lua URL -- get BASE N        GET BASE..doc-%06d, random in [0, N)
--
-- BASE is the documents path with its trailing slash (`/barrels/bench/docs/` for Cooper,
-- `/bench/` for pouchdb-server). Every response that is not 200 or 201 is counted; `done`
-- prints one `RESULT key=value ...` line that bench/http.sh parses.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local FIRST = { "Ann", "Bob", "Chloe", "Dmitri", "Eve", "Farid", "Grace", "Hiro" }
local LAST = { "Martin", "Dubois", "Smith", "Okafor", "Tanaka", "Novak", "Rossi", "Kim" }
local CITIES = { "Paris", "Lyon", "Berlin", "Lagos", "Osaka", "Prague", "Milan", "Seoul" }
local TAGS = { "alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta" }
local WORDS = { "lorem", "ipsum", "dolor", "sit", "amet", "elit", "sed", "magna" }

local function pick(list, n)
  return list[(n % #list) + 1]
end

-- The same shape as body() in bench/client.js (keep the two in step).
local function body(i)
  local f, l = pick(FIRST, i), pick(LAST, i * 7 + 3)
  return string.format(
    '{"kind":"bench","name":"%s %s","email":"%s.%s%d@example.org","age":%d,"active":%s,'
      .. '"address":{"street":"%d rue %s","city":"%s","zip":"%05d"},'
      .. '"tags":["%s","%s","%s"],"scores":[%d,%d.%d,%d],'
      .. '"profile":{"bio":"%s %s %s %s %s %s","since":%d}}',
    f, l, string.lower(f), string.lower(l), i, 18 + i % 70, (i % 2 == 0) and "true" or "false",
    1 + i % 200, pick(WORDS, i), pick(CITIES, i * 3), (i * 7919) % 100000,
    pick(TAGS, i), pick(TAGS, i + 1), pick(TAGS, i + 2), i % 100, i % 100, i % 10, (i * 13) % 100,
    pick(WORDS, i), pick(WORDS, i + 1), pick(WORDS, i + 2), pick(WORDS, i + 3),
    pick(WORDS, i + 5), pick(WORDS, i + 6), 2000 + i % 25)
end

function init(args)
  mode = args[1]
  base = args[2]
  counter = 0
  ok = 0
  non2xx = 0
  last_bad = ""
  if mode == "put" then
    prefix = args[3]
    headers = { ["Content-Type"] = "application/json" }
  elseif mode == "get" then
    n = tonumber(args[3])
    math.randomseed(os.time() * 1000 + tid * 7919)
  else
    error("mode must be put or get, not " .. tostring(mode))
  end
end

function request()
  if mode == "put" then
    counter = counter + 1
    local id = string.format("%s-%d-%d", prefix, tid, counter)
    return wrk.format("PUT", base .. id, headers, body(tid * 100000000 + counter))
  else
    return wrk.format("GET", string.format("%sdoc-%06d", base, math.random(0, n - 1)))
  end
end

function response(status, headers, body)
  if status == 200 or status == 201 then
    ok = ok + 1
  else
    non2xx = non2xx + 1
    last_bad = status .. " " .. string.sub(body or "", 1, 200)
  end
end

function done(summary, latency, requests)
  local good, bad, sample = 0, 0, ""
  for _, t in ipairs(threads) do
    good = good + t:get("ok")
    bad = bad + t:get("non2xx")
    local s = t:get("last_bad")
    if s ~= "" then sample = s end
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d ok=%d non2xx=%d sockerr=%d secs=%.3f rps=%.1f okps=%.1f p50_ms=%.3f p99_ms=%.3f\n",
    summary.requests, good, bad, e.connect + e.read + e.write + e.timeout, secs,
    summary.requests / secs, good / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
  if sample ~= "" then
    io.write("BAD_SAMPLE " .. (string.gsub(sample, "\n", " ")) .. "\n")
  end
end
