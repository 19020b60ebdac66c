#!/usr/bin/env python3
"""Prepares draft bids for the bid-submission benchmark (Benchmarks/submit-bid.lua) on a demo server.

For each bid: the demo LIM creates and publishes a small project (£1 budget, so the board's allocation
covers tens of thousands), then the demo supplier creates a complete draft bid on it. Prints one bid id per
line. The LIM's token comes from LIM_TOKEN, or else from the demo log of `../shared/bench/compare.sh`
(the /tmp/lcm-compare.*/ours.log that printed the supplier's token).

  prepare-bids.py http://127.0.0.1:18777 <supplier token> <count> >> bids.txt
"""
import datetime, glob, http.client, json, os, sys, threading, urllib.parse

url, supplier, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
parsed = urllib.parse.urlparse(url)


def lim_token():
    if os.environ.get("LIM_TOKEN"):
        return os.environ["LIM_TOKEN"]
    for log in glob.glob("/tmp/lcm-compare.*/ours.log"):
        text = open(log).read()
        if supplier in text:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == "lim" and parts[1].startswith("lcm_"):
                    return parts[1]
    sys.exit("prepare-bids: no LIM token (set LIM_TOKEN)")


class Client:
    def __init__(self):
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)

    def call(self, method, path, token, body=None):
        headers = {"Authorization": "Bearer " + token}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        payload = response.read()
        if response.status >= 300:
            sys.exit(f"prepare-bids: {method} {path} answered {response.status}: {payload[:300]!r}")
        return json.loads(payload) if payload else {}


lim = lim_token()
setup = Client()
board = setup.call("GET", "/v1/me", lim)["board_ids"][0]
theme = setup.call("GET", "/v1/themes", lim)["items"][0]["id"]
today = datetime.date.today()
first = today.year if today.month >= 4 else today.year - 1
year = f"{first}-{(first + 1) % 100:02d}"
deadline = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
start = (today + datetime.timedelta(days=60)).isoformat()
end = (today + datetime.timedelta(days=300)).isoformat()
project = {
    "board_id": board, "theme_id": theme, "funding_stream": "locality", "financial_year": year,
    "description": "Benchmark project.", "outcomes_sought": "Bids to submit.", "max_value_pence": 100,
    "bid_deadline": deadline, "planned_start": start, "planned_end": end, "contract_manager": "Bench",
    "evaluation": {"price_weight": 40, "quality_weight": 45, "social_value_weight": 15,
                   "quality_criteria": [{"name": "Q", "weight": 45}], "social_value_criteria": [{"name": "S", "weight": 15}]},
}
bid = {
    "price_pence": 90, "approach": "Twilight sessions in every school.", "outputs": "Twelve sessions.",
    "kpis": [{"title": "Staff trained", "measure": "Staff completing the course", "unit": "count", "baseline": 0,
              "target": 120, "target_date": end, "frequency": "termly", "evidence_source": "Attendance registers"}],
    "social_value": [{"measure_code": "NT13", "quantity": 2.5}],
    "declarations": {"accepts_terms": True, "information_accurate": True, "conflicts_of_interest": ""},
}
lock = threading.Lock()
remaining = [count]


def worker(tag):
    client = Client()
    n = 0
    while True:
        with lock:
            if remaining[0] == 0:
                return
            remaining[0] -= 1
        n += 1
        created = client.call("POST", "/v1/projects", lim, dict(project, title=f"Bench {tag}-{n}-{os.getpid()}"))
        client.call("POST", f"/v1/projects/{created['id']}/publish", lim)
        draft = client.call("POST", f"/v1/projects/{created['id']}/bids", supplier, bid)
        with lock:
            print(draft["id"], flush=True)


threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
