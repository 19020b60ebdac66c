#!/usr/bin/env python3
"""Prepares draft bids for the bid-submission benchmark (Benchmarks/submit-bid.lua) on a demo server.

For each bid: the demo LIM creates and publishes a small project (£1 budget, so the board's allocation
covers tens of thousands), then a supplier creates a complete draft bid on it. Prints one line per bid:
its id and the bearer token of the supplier user who drafted it.

The bids are spread over SUPPLIERS supplier organisations (default 64), round robin, so that concurrent
submissions are not all one organisation's: each supplier's audited writes share one audit chain, and 32
connections submitting for one supplier measure that chain's contention, not a day of many suppliers
bidding. The first is the supplier whose token is given; the others are registered through the public
registration (run the server with LOCALITY_REGISTRATIONS_PER_HOUR of at least SUPPLIERS), apply for
admission to the LIM's authority, and are approved by the demo authority admin. SUPPLIERS=1: every bid is
the given supplier's. The LIM's and the authority admin's tokens come from LIM_TOKEN and ADMIN_TOKEN, or
else from the demo log of `../shared/bench/compare.sh` (the /tmp/lcm-compare.*/ours.log that printed the
supplier's token).

  prepare-bids.py http://127.0.0.1:18777 <supplier token> <count> >> bids.txt
"""
import datetime, glob, http.client, json, os, sys, threading, urllib.parse

url, supplier, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
parsed = urllib.parse.urlparse(url)


def demo_token(role, variable):
    if os.environ.get(variable):
        return os.environ[variable]
    for log in glob.glob("/tmp/lcm-compare.*/ours.log"):
        text = open(log).read()
        if supplier in text:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == role and parts[1].startswith("lcm_"):
                    return parts[1]
    sys.exit(f"prepare-bids: no {role} token (set {variable})")


class Client:
    def __init__(self):
        self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)

    def call(self, method, path, token, body=None):
        headers = {"Authorization": "Bearer " + token} if token else {}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        self.connection.request(method, path, body=data, headers=headers)
        response = self.connection.getresponse()
        payload = response.read()
        if response.status == 429:
            sys.exit(f"prepare-bids: {method} {path} answered 429: start the server with LOCALITY_REGISTRATIONS_PER_HOUR of at least SUPPLIERS")
        if response.status >= 300:
            sys.exit(f"prepare-bids: {method} {path} answered {response.status}: {payload[:300]!r}")
        return json.loads(payload) if payload else {}


lim = demo_token("lim", "LIM_TOKEN")
setup = Client()
me = setup.call("GET", "/v1/me", lim)
board = me["board_ids"][0]
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


def register_suppliers(count):
    """count more supplier organisations, admitted to the LIM's authority; returns their users' tokens."""
    if count == 0:
        return []
    admin = demo_token("authority_admin", "ADMIN_TOKEN")
    tag = f"{os.getpid() % 10000:04d}{datetime.datetime.now().microsecond % 10000:04d}"
    insurance = (today + datetime.timedelta(days=365)).isoformat()
    tokens = []
    for i in range(count):
        registered = setup.call("POST", "/v1/supplier-registrations", None, {
            "name": f"Bench Supplier {tag}-{i}", "companies_house_number": f"BS{(int(tag) * 100 + i) % 1_000_000:06d}",
            "address": "1 High Street, Northallerton", "contact_name": "Bench", "contact_email": f"bench{tag}{i}@example.org",
            "user_email": f"bench{tag}{i}@example.org", "user_name": f"Bench {i}"})
        token = registered["token"]["secret"]
        setup.call("POST", "/v1/supplier/admissions", token, {"authority": me["authority"]["id"], "declarations": {
            "safeguarding_policy": True, "safeguarding_lead": "S. Lead", "insurance_provider": "Mutual",
            "insurance_expires_on": insurance, "dbs_checks": True, "business_continuity_plan": True,
            "data_protection_compliance": True, "environmental_policy": True}})
        setup.call("POST", f"/v1/admissions/{registered['supplier']['id']}/decision", admin, {"decision": "approve"})
        tokens.append(token)
    return tokens


suppliers = [supplier] + register_suppliers(max(1, int(os.environ.get("SUPPLIERS", "64"))) - 1)
lock = threading.Lock()
remaining = [count]


def worker(tag):
    client = Client()
    n = 0
    while True:
        with lock:
            if remaining[0] == 0:
                return
            token = suppliers[(count - remaining[0]) % len(suppliers)]   # round robin over the suppliers
            remaining[0] -= 1
        n += 1
        created = client.call("POST", "/v1/projects", lim, dict(project, title=f"Bench {tag}-{n}-{os.getpid()}"))
        client.call("POST", f"/v1/projects/{created['id']}/publish", lim)
        draft = client.call("POST", f"/v1/projects/{created['id']}/bids", token, bid)
        with lock:
            print(draft["id"], token, flush=True)


threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
