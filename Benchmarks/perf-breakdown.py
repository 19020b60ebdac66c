#!/usr/bin/env python3
"""Server CPU per request by category, from a `perf record -g` of the server (cpu-per-request.sh with PERF=dir).

    perf script -i dir/board.data -F comm,tid,ip,sym | swift demangle --simplified > board.txt
    Benchmarks/perf-breakdown.py board.txt 142            # 142 = the run's server µs per request
    Benchmarks/perf-breakdown.py board.txt 142 accesslog  # and which frames a category's samples came through

Each sample goes to the category of its innermost frame that matches one (leaf first), so a JSON encoder called by
a handler counts as JSON, not as the handler. Async frames are often missing from the stacks (frame-pointer
unwinding stops at them): the categories undercount the middleware and handlers, and `tasks/exec` holds the rest.
"""
import collections
import re
import sys

CATS = [
    ('json-encode', r'JSONEncoder|JSONWriter|Encodable.encode|\.encode\(to:'),
    ('json/row-decode', r'JSONDecoder|Decodable|init\(from:|PGRow|decodeRow|canonical'),
    ('date', r'Date|ISO8601|InternetDateTranscoder'),
    ('accesslog', r'LogHandler|AccessLog|Logger'),
    ('auth', r'Authentication|SHA256|SHA2|Token'),
    ('metrics', r'Metrics|Prometheus|Counter|Timer'),
    ('requestid', r'RequestID'),
    ('reqcontent', r'RequestContentMiddleware|ParameterRules'),
    ('route', r'RouteTable'),
    ('problem/conv', r'ProblemMiddleware|HTTPConventions|NoStore|LocationHeader'),
    ('pg', r'PGConnection|PGIOLoop|PGPool|ScopedDatabase|\bPQ|pq[A-Z]|pqsecure|libpq|readInOneRoundTrip|Bulkhead'),
    ('openapi', r'OpenAPIRuntime|UniversalServer|Converter|RecordingTransport|APIHandlers|getBoard|getHealth'),
    ('http-parse', r'HTTPDecoder|llhttp|ByteToMessage|HTTPServerRequestDecoder|HTTPServerPipeline'),
    ('nio-write', r'writeToSocket|flush0|HTTPResponseEncoder|_doOutboundWrites'),
    ('nio-read', r'readFromSocket|readable0'),
    ('hummingbird', r'Hummingbird|Router|Middleware|HTTP1Channel|GuardedHTTP1'),
    ('tasks/exec', r'swift_task|swift_job|EventLoopTaskExecutor|TaskExecutor|Task'),
    ('eventloop-wait', r'epoll_wait|_blockingWaitForWork'),
]


def samples(path):
    thread, stack = None, []
    for line in open(path, errors='replace'):
        if not line.strip():
            if thread is not None:
                yield thread, stack
            thread, stack = None, []
        elif not line.startswith((' ', '\t')):
            thread, stack = line.split()[0], []
        else:
            parts = line.strip().split(None, 1)
            stack.append(parts[1] if len(parts) > 1 else '?')
    if thread is not None:
        yield thread, stack


def category(stack):
    for frame in stack:
        for name, pattern in CATS:
            if re.search(pattern, frame):
                return name
    return 'other:' + (stack[-1][:40] if stack else '?')


path, micros = sys.argv[1], float(sys.argv[2])
want = sys.argv[3] if len(sys.argv) > 3 else None
total, counts, via = 0, collections.Counter(), collections.Counter()
for _, stack in samples(path):
    total += 1
    name = category(stack)
    counts[name] += 1
    if name == want:
        pattern = dict(CATS)[want]
        via[next(f for f in stack if re.search(pattern, f))[:110]] += 1
print(path, 'samples', total)
for name, n in counts.most_common(30):
    print(f'{100 * n / total:5.1f}% {micros * n / total:6.1f} µs  {name}')
for frame, n in via.most_common(15):
    print(f'   via {micros * n / total:6.1f} µs  {frame}')
