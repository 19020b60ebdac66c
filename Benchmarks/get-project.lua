-- wrk script: GET /v1/projects/{id} as the demo LIM, on a project this script creates first (the demo seeds none,
-- so compare.sh's {project} placeholder would fall back to the list route /v1/projects/):
--   OURS_PATH=/v1/me ROLE=lim OURS_LUA=Benchmarks/get-project.lua ../shared/bench/compare.sh   (with /v1/me quoted, see README)
-- The path reaches each thread as the global `project_path` (thread:set): a `local` here would be the upvalue
-- `request` reads in every thread's own Lua state, where setup never ran, and wrk.format would fall back to the
-- command line's URL (/v1/me): how this script measured /v1/me until 2026-12-01.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local path

function setup(thread)
  if not path then
    local token = (wrk.headers["Authorization"] or ""):gsub("^Bearer ", "")
    local state = "/tmp/lcm-project-" .. token:sub(5, 16) .. ".txt"
    local f = io.open(state, "r")
    local id = f and f:read("*l")
    if f then f:close() end
    if not id or id == "" then
      local url = string.format("http://%s:%s", wrk.host, wrk.port)
      assert(os.execute(string.format("python3 %sprepare-project.py %s %s > %s", here, url, token, state)), "preparing the project failed")
      f = io.open(state, "r"); id = f:read("*l"); f:close()
    end
    path = "/v1/projects/" .. id
  end
  thread:set("project_path", path)
end

function request()
  return wrk.format("GET", project_path)
end
