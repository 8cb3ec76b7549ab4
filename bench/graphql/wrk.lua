-- wrk script of bench/graphql: random document reads over REST or GraphQL, every answer checked.
--
--   wrk -t2 -c16 -d10s --latency -s bench/graphql/wrk.lua URL -- rest|graphql N_DOCS [BARREL]
--
-- rest:    GET /barrels/<barrel>/docs/r<k>
-- graphql: POST /graphql {"query":"query($id:String!){barrel(name:\"<barrel>\"){doc(id:$id){id rev body}}}",
--                         "variables":{"id":"r<k>"}}
-- graphql-id:  the same without body: doc(id:$id){id rev}      (diagnostics: what `body` costs)
-- graphql-min: {"query":"{__typename}"}                      (diagnostics: the GraphQL floor)
-- with k uniform in [0, N_DOCS). The response hook counts answers that are not 200, GraphQL
-- answers that carry "errors", and answers without the document (REST: no "_id"; GraphQL:
-- "doc":null). done() prints one line `WRKJSON {...}` with the figures for bench.py.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1] or "rest"
  ndocs = tonumber(args[2] or "10000")
  barrel = args[3] or "bench"
  responses, non200, gqlerrors, nodoc = 0, 0, 0, 0
  sample = ""
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  rest_prefix = "/barrels/" .. barrel .. "/docs/r"
  gql_head = '{"query":"query($id:String!){barrel(name:\\"' .. barrel ..
             '\\"){doc(id:$id){id rev body}}}","variables":{"id":"r'
  if mode == "graphql-id" then
    gql_head = string.gsub(gql_head, "{id rev body}", "{id rev}")
  end
  gql_headers = { ["Content-Type"] = "application/json" }
  gql_min = wrk.format("POST", "/graphql", gql_headers, '{"query":"{__typename}"}')
end

function request()
  local k = math.random(0, ndocs - 1)
  if mode == "graphql-min" then
    return gql_min
  elseif mode ~= "rest" then
    return wrk.format("POST", "/graphql", gql_headers, gql_head .. k .. '"}}')
  end
  return wrk.format("GET", rest_prefix .. k)
end

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    non200 = non200 + 1
    if sample == "" then sample = status .. " " .. string.sub(body or "", 1, 200) end
    return
  end
  if mode == "graphql-min" then
    if not string.find(body, '"__typename"', 1, true) then gqlerrors = gqlerrors + 1 end
  elseif mode ~= "rest" then
    if string.find(body, '"errors"', 1, true) then
      gqlerrors = gqlerrors + 1
      if sample == "" then sample = string.sub(body, 1, 200) end
    elseif string.find(body, '"doc":null', 1, true) then
      nodoc = nodoc + 1
    end
  elseif not string.find(body, '"_id"', 1, true) then
    nodoc = nodoc + 1
  end
end

local function esc(s)
  return (string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end))
end

function done(summary, latency, requests)
  local r, n2, ge, nd, smp = 0, 0, 0, 0, ""
  for _, t in ipairs(threads) do
    r = r + t:get("responses")
    n2 = n2 + t:get("non200")
    ge = ge + t:get("gqlerrors")
    nd = nd + t:get("nodoc")
    if smp == "" then smp = t:get("sample") end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"responses":%d,"non200":%d,' ..
    '"gql_errors":%d,"no_doc":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"lat_p50_us":%d,"lat_p99_us":%d,"lat_mean_us":%.1f,"sample":"%s"}\n',
    summary.requests, summary.duration, summary.bytes, r, n2, ge, nd,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, esc(smp)))
end
