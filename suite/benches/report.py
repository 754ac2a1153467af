#!/usr/bin/env python3
"""Prints the medians of `cargo bench --bench auth`, and their ratios, as Markdown.

    cargo bench --bench auth && python3 suite/benches/report.py

With folders as arguments (copies of target/criterion from several runs), each figure is the
median of the runs' medians: on a shared, noisy machine one run can meet a busy neighbour.
"""
import json
import pathlib
import statistics
import sys

roots = [pathlib.Path(arg) for arg in sys.argv[1:]] or [
    pathlib.Path(__file__).resolve().parents[2] / "target" / "criterion"
]


def median(group, name):
    values = []
    for root in roots:
        path = root / group / name / "new" / "estimates.json"
        if not path.exists():
            sys.exit(f"no result at {path}: run `cargo bench --bench auth` first")
        values.append(json.loads(path.read_text())["median"]["point_estimate"])
    return statistics.median(values)


def show(ns):
    for unit, scale in (("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.1f} ns"


warm = {n: median("warm", n) for n in ("inner", "static", "auth", "naive")}
print("| warm path, 1 thread | median / request | vs inner | vs static |")
print("|---|---|---|---|")
for name, ns in warm.items():
    print(f"| {name} | {show(ns)} | {ns / warm['inner']:.2f} | {ns / warm['static']:.2f} |")
print(f"\nauth/static = {warm['auth'] / warm['static']:.2f}, auth/naive = {warm['auth'] / warm['naive']:.2f}\n")

print("| contended | 1 thread: Mreq/s | 2 threads: Mreq/s | scaling 1 -> 2 | vs static at 2 |")
print("|---|---|---|---|---|")
rate = {}
for name in ("inner", "static", "auth", "naive"):
    one = 1e3 / median("contended", f"1 thread_{name}")
    two = 1e3 / median("contended", f"2 thread_{name}")
    rate[name] = (one, two)
for name, (one, two) in rate.items():
    print(f"| {name} | {one:.2f} | {two:.2f} | {two / one:.2f}x | {two / rate['static'][1]:.2f} |")

print("\n| burst | time until the last response | vs one request needing one login |")
print("|---|---|---|")
for kind, n in (("cold", 10000), ("401", 1000)):
    one = median("stampede", f"{kind}_1")
    many = median("stampede", f"{kind}_{n}")
    print(f"| {kind}, 1 request | {show(one)} | 1.00 |")
    print(f"| {kind}, {n} requests | {show(many)} | {many / one:.2f} |")
warm = median("stampede", "warm_10000")
print(f"| warm, 10000 requests (the harness: 10,000 tasks, no login) | {show(warm)} | - |")

e2e = {n: median("end_to_end", n) for n in ("static", "auth")}
print("\n| end to end (hyper-util over loopback) | median / request | vs static |")
print("|---|---|---|")
for name, ns in e2e.items():
    print(f"| {name} | {show(ns)} | {ns / e2e['static']:.3f} |")
