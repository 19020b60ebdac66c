#!/usr/bin/env python3
"""Creates and publishes one project as the demo LIM and prints its id, for Benchmarks/get-project.lua.

The demo seeds no projects, so `compare.sh`'s `{project}` placeholder finds none for the LIM and the path
becomes `/v1/projects/` (the list route). Run by get-project.lua with the LIM's token:

  prepare-project.py http://127.0.0.1:18777 <LIM token>
"""
import datetime, http.client, json, sys, urllib.parse

url, lim = sys.argv[1], sys.argv[2]
parsed = urllib.parse.urlparse(url)
connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)


def call(method, path, body=None):
    headers = {"Authorization": "Bearer " + lim}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body)
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    payload = response.read()
    if response.status >= 300:
        sys.exit(f"prepare-project: {method} {path} answered {response.status}: {payload[:300]!r}")
    return json.loads(payload) if payload else {}


board = call("GET", "/v1/me")["board_ids"][0]
theme = call("GET", "/v1/themes")["items"][0]["id"]
today = datetime.date.today()
first = today.year if today.month >= 4 else today.year - 1
deadline = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
project = call("POST", "/v1/projects", {
    "board_id": board, "theme_id": theme, "funding_stream": "locality", "financial_year": f"{first}-{(first + 1) % 100:02d}",
    "title": "Benchmark: speech and language support", "description": "Benchmark project.", "outcomes_sought": "A project to read.",
    "max_value_pence": 100, "bid_deadline": deadline, "planned_start": (today + datetime.timedelta(days=60)).isoformat(),
    "planned_end": (today + datetime.timedelta(days=300)).isoformat(), "contract_manager": "Bench",
    "evaluation": {"price_weight": 40, "quality_weight": 45, "social_value_weight": 15,
                   "quality_criteria": [{"name": "Q", "weight": 45}], "social_value_criteria": [{"name": "S", "weight": 15}]},
})
call("POST", f"/v1/projects/{project['id']}/publish")
print(project["id"])
