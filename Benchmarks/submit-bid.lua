-- wrk script: POST /v1/bids/{id}/submit, each request a different draft bid, as the supplier user who drafted it.
-- Run with the demo supplier's token (compare.sh passes it as -H; it names the files below):
--   LOCALITY_REGISTRATIONS_PER_HOUR=1000 ROLE=supplier_user OURS_PATH=/v1/me PEER_MODE=post \
--     OURS_LUA=Benchmarks/submit-bid.lua ../shared/bench/compare.sh
-- Draft bids are prepared by Benchmarks/prepare-bids.py (the demo LIM publishes a small project per bid, one of
-- SUPPLIERS suppliers, default 64, drafts a complete bid on it) before the load starts: twice BIDS_PER_RUN (default 8,000) when fewer
-- than BIDS_PER_RUN are left. A run that would submit more than are left sends the rest to an unknown bid (404). They are kept in /tmp/lcm-bids-<token prefix>.txt; a second file records how many have
-- been used, so the successive wrk runs of compare.sh never submit a bid twice.
local per_run = tonumber(os.getenv("BIDS_PER_RUN") or "8000")
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local threads = {}

local function count_lines(path)
  local n = 0
  local f = io.open(path, "r")
  if f then for _ in f:lines() do n = n + 1 end f:close() end
  return n
end

local function read_number(path)
  local f = io.open(path, "r")
  if not f then return 0 end
  local n = tonumber(f:read("*l") or "0") or 0
  f:close()
  return n
end

local wrk_threads = tonumber(os.getenv("WRK_THREADS") or "2")   -- compare.sh runs wrk -t2

function setup(thread)
  if #threads == 0 then
    local token = (wrk.headers["Authorization"] or ""):gsub("^Bearer ", "")
    state = "/tmp/lcm-bids-" .. token:sub(5, 16)
    local used = read_number(state .. ".used")
    if count_lines(state .. ".txt") - used < per_run then
      local url = string.format("http://%s:%s", wrk.host, wrk.port)
      local command = string.format("python3 %sprepare-bids.py %s %s %d >> %s.txt", here, url, token, 2 * per_run, state)
      io.stderr:write("submit-bid.lua: preparing " .. 2 * per_run .. " draft bids\n")
      local status = os.execute(command)
      assert(status == 0 or status == true, "preparing bids failed")
    end
    -- Two flat lists (wrk copies a thread's values one level deep): the bid, and its supplier user's token.
    bids, tokens = {}, {}
    local i = 0
    for line in io.lines(state .. ".txt") do
      i = i + 1
      if i > used then
        local id, token = line:match("^(%S+)%s*(%S*)")
        bids[#bids + 1] = id
        tokens[#tokens + 1] = token
      end
    end
  end
  -- Thread k of n takes bids k, k + n, k + 2n, …: no two requests submit the same bid.
  thread:set("bids", bids)
  thread:set("tokens", tokens)
  thread:set("k", #threads)
  thread:set("n", wrk_threads)
  table.insert(threads, thread)
end

function init(args)
  index = 0
end

function request()
  local i = index * n + k + 1
  index = index + 1
  local id, token = bids[i] or "00000000-0000-0000-0000-000000000000", tokens[i] or ""
  if token ~= "" then
    return wrk.format("POST", "/v1/bids/" .. id .. "/submit", {Authorization = "Bearer " .. token})
  end
  return wrk.format("POST", "/v1/bids/" .. id .. "/submit")
end

function done(summary, latency, requests)
  -- Everything a run may have touched counts as used (the busiest thread's share, for every thread).
  local most = 0
  for _, thread in ipairs(threads) do most = math.max(most, thread:get("index") or 0) end
  local used = read_number(state .. ".used") + most * wrk_threads + wrk_threads
  local f = io.open(state .. ".used", "w")
  f:write(tostring(used), "\n")
  f:close()
end
