"""Memory under concurrency (issue 15, item 8): what a sidecar holds while
many clients use it at once, and whether it gives the memory back.

  uploads-50x1MiB   fifty concurrent 1 MiB POSTs through the mesh path;
                    before the fix the sidecar went from 9 to 83 MB. A body is
                    streamed, so what stays is per-connection buffers: hyper's
                    HTTP/1.1 read and write buffers (bounded to 64 KiB each,
                    listener.rs), the 64 KiB replay buffer (body.rs), and the
                    upstream connection's buffers.
  idle-2000         two thousand keep-alive connections, each after one
                    request, left idle, then closed. Each costs about 22 KB,
                    nearly all hyper's (read buffer 16 KiB reserved, write
                    buffer 8 KiB, connection state 5 KiB, its task 3 KiB;
                    mesh/proxy/src/memory.rs): a release sidecar went from 7
                    to 51 MB with them, and stayed at 51 MB after they
                    closed, because glibc keeps freed memory; the proxy now
                    trims its heap as a crowd leaves (malloc_trim), and went
                    back to under 10 MB. The case prints the cost per
                    connection, and the RSS after a second crowd, which must
                    not climb (fragmentation took it to 66 MB before).

Each case prints the sidecars' RSS (the larger of the two sidecars of the
mesh path) before, at its peak (VmHWM, the process's high-water mark, taken
on a mesh path started for this case alone), and a few seconds after every
client has gone; idle-2000 also the RSS while the connections are held, per
connection, and after a second crowd came and went. It reuses the data-path machinery (datapath.DataPath: the
nginx upstream with /upload, the two-sidecar mesh path).
"""

import resource
import socket
import threading
import time

PRESSURE_CASES = ["uploads-50x1MiB", "idle-2000"]
MIB = 1024 * 1024


def _rss_hwm(data, running):
    """(VmRSS, VmHWM) in kB of the sidecar that holds the most."""
    pairs = [data.b.memory_kb(p.tree()) for p in running.proxies]
    return max(r for r, _ in pairs), max(h for _, h in pairs)


def _request(port, body):
    """One keep-alive POST /upload on a new socket; returns the socket, the response read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /upload HTTP/1.1\r\nHost: upstream:8080\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("the mesh path closed a connection mid-response")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"the mesh path answered {head[:40]!r}")
    return s


def _settled(data, running, seconds=3.0):
    """RSS after the clients left, once the proxies had a moment to close their connections."""
    time.sleep(seconds)
    return _rss_hwm(data, running)[0]


def concurrent_uploads(data, clients=50, size=MIB):
    """Fifty concurrent 1 MiB uploads through the mesh path: RSS before, peak, after."""
    running = data.mesh_path(data.h1_port)
    try:
        data.wait_routed(running, lambda: _request(running.port, b"x").close() is None)
        before, _ = _rss_hwm(data, running)
        body = b"u" * size
        errors = []
        start = threading.Barrier(clients)

        def upload():
            try:
                start.wait()
                _request(running.port, body).close()
            except Exception as e:  # noqa: BLE001: reported below, with the others
                errors.append(e)
        threads = [threading.Thread(target=upload) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(f"{len(errors)} of {clients} uploads failed: {errors[0]}")
        _, peak = _rss_hwm(data, running)
        after = _settled(data, running)
    finally:
        running.stop()
    return {"case": "uploads-50x1MiB", "rss_before_kb": before, "rss_peak_kb": peak,
            "rss_after_kb": after}


def idle_connections(data, clients=2000):
    """Two thousand keep-alive connections left idle, then closed: RSS before, peak, after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < clients + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, clients + 1024), hard))
    running = data.mesh_path(data.h1_port)
    sockets = []
    try:
        data.wait_routed(running, lambda: _request(running.port, b"x").close() is None)
        before, _ = _rss_hwm(data, running)
        afters, held = [], None
        # Two crowds, one after the other: the second shows whether the
        # memory the first gave back (or kept) is reused or piles up.
        for _crowd in range(2):
            for _ in range(clients):
                sockets.append(_request(running.port, b"x"))
            time.sleep(1.0)
            rss, peak = _rss_hwm(data, running)
            held = rss if held is None else held
            for s in sockets:
                s.close()
            sockets = []
            afters.append(_settled(data, running))
    finally:
        for s in sockets:
            s.close()
        running.stop()
    return {"case": "idle-2000", "rss_before_kb": before, "rss_peak_kb": peak, "rss_after_kb": afters[0],
            "rss_held_kb": held, "per_connection_bytes": (held - before) * 1024 // clients,
            "rss_after_second_kb": afters[1]}


def run(data, cases):
    """Run each case once; print and return the results."""
    results = []
    for case in cases:
        r = concurrent_uploads(data) if case == "uploads-50x1MiB" else idle_connections(data)
        print(f"  {case:<20} sidecar RSS {r['rss_before_kb'] / 1024:.1f} MB before, "
              f"{r['rss_peak_kb'] / 1024:.1f} MB peak, {r['rss_after_kb'] / 1024:.1f} MB after"
              + _idle_detail(r), flush=True)
        results.append(r)
    return results


def _idle_detail(r):
    """idle-2000's extra numbers: held, per connection, after a second crowd ('' for other cases)."""
    if "per_connection_bytes" not in r:
        return ""
    return (f" ({r['rss_held_kb'] / 1024:.1f} MB held, {r['per_connection_bytes'] / 1000:.1f} KB per "
            f"connection; {r['rss_after_second_kb'] / 1024:.1f} MB after a second crowd)")


def print_pressure(results, out):
    """The cases' RSS as a markdown table."""
    if not results:
        return
    print("\n## Memory under concurrency (issue 15): the larger sidecar of the mesh path\n", file=out)
    print("| case | RSS before | peak (VmHWM) | after the clients left |", file=out)
    print("|---|---|---|---|", file=out)
    for r in results:
        print(f"| {r['case']} | {r['rss_before_kb'] / 1024:.1f} MB | {r['rss_peak_kb'] / 1024:.1f} MB | "
              f"{r['rss_after_kb'] / 1024:.1f} MB{_idle_detail(r)} |", file=out)
