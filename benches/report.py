#!/usr/bin/env python3
"""Prints the medians of `cargo bench --bench auth`, and their ratios, as Markdown.

    cargo bench --bench auth && python3 benches/report.py

With folders as arguments (copies of target/criterion from several runs), each figure is the
median of the runs' medians: on a shared, noisy machine one run can meet a busy neighbour.
A table whose benchmarks a filtered run left out is skipped.
"""
import json
import pathlib
import statistics
import sys

roots = [pathlib.Path(arg) for arg in sys.argv[1:]] or [
    pathlib.Path(__file__).resolve().parents[1] / "target" / "criterion"
]


def median(group, name):
    values = []
    for root in roots:
        path = root / group / name / "new" / "estimates.json"
        if not path.exists():
            return None
        values.append(json.loads(path.read_text())["median"]["point_estimate"])
    return statistics.median(values)


def medians(group, names):
    """The medians of `names` in `group`, or None when a run left one out (a filtered run)."""
    found = {name: median(group, name) for name in names}
    return None if None in found.values() else found


def show(ns):
    for unit, scale in (("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.1f} ns"


warm = medians("warm", ("inner", "static", "auth"))
if warm:
    naive = median("warm", "naive")
    print("| warm path, 1 thread | median / request | vs inner | vs static |")
    print("|---|---|---|---|")
    for name, ns in dict(warm, **({"naive": naive} if naive else {})).items():
        print(f"| {name} | {show(ns)} | {ns / warm['inner']:.2f} | {ns / warm['static']:.2f} |")
    print(f"\nauth/static = {warm['auth'] / warm['static']:.3f}\n")

names = [n for n in ("inner", "static", "auth", "naive") if median("contended", f"2 thread_{n}")]
if names and median("contended", "1 thread_inner"):
    print("| contended | 1 thread: Mreq/s | 2 threads: Mreq/s | scaling 1 -> 2 | scaling vs inner's |")
    print("|---|---|---|---|---|")
    rate = {}
    for name in names:
        rate[name] = (1e3 / median("contended", f"1 thread_{name}"),
                      1e3 / median("contended", f"2 thread_{name}"))
    inner_scaling = rate["inner"][1] / rate["inner"][0]
    for name, (one, two) in rate.items():
        print(f"| {name} | {one:.2f} | {two:.2f} | {two / one:.2f}x | {two / one / inner_scaling:.3f} |")
    print()

burst = medians("stampede", ("cold_1", "cold_10000", "401_1", "401_1000", "warm_10000"))
if burst:
    print("| burst | time until the last response | vs one request needing one login |")
    print("|---|---|---|")
    for kind, n in (("cold", 10000), ("401", 1000)):
        one, many = burst[f"{kind}_1"], burst[f"{kind}_{n}"]
        print(f"| {kind}, 1 request | {show(one)} | 1.00 |")
        print(f"| {kind}, {n} requests | {show(many)} | {many / one:.2f} |")
    print(f"| warm, 10000 requests (the harness: 10,000 tasks, no login) | {show(burst['warm_10000'])} | - |\n")

for group, title, names in (
    ("end_to_end", "end to end, one request at a time", ("static", "auth")),
    ("end_to_end_concurrent", "end to end, 32 requests in flight", ("static_32", "auth_32")),
):
    e2e = medians(group, names)
    if e2e:
        print(f"| {title} (hyper-util over loopback) | median | vs static |")
        print("|---|---|---|")
        for name, ns in e2e.items():
            print(f"| {name} | {show(ns)} | {ns / e2e[names[0]]:.3f} |")
        print()
