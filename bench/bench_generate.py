"""Time ``refimpl.generate`` and measure its peak memory, one subprocess per case.

Each case runs in its own Python process, so ``ru_maxrss`` (the peak resident set size)
is that case's own peak; the baseline row is the same process after importing refimpl
and running a tiny generation (interpreter, NumPy, refimpl). Wall time is noisy on a
shared machine; CPU time (user + system of the process during the call) less so. The
estimate column is ``refimpl.generator.generation_bytes`` (generation plus writing the
file), the number checked against the memory limit.

Usage: python bench/bench_generate.py [--reps R]
"""
import argparse
import json
import resource
import subprocess
import sys
import time

CASES = [  # (label, vocab_size, n_sentences, min_len, max_len, n_colloc)
    ("baseline", 20, 10, 2, 6, None),
    ("M=20 N=200", 20, 200, 2, 6, None),
    ("M=1000 N=1e5 lengths 2..16", 1000, 100_000, 2, 16, None),
    ("M=50000 N=2e5 lengths 2..6", 50_000, 200_000, 2, 6, None),
    ("M=1e8 n_colloc=1000 N=5", 10**8, 5, 2, 6, 1000),
]


def run_case(i):
    """Run case ``i`` in this process and print one JSON line."""
    import refimpl as ri
    from refimpl.generator import generation_bytes
    label, M, N, lo, hi, n_c = CASES[i]
    ri.generate(20, 10)                                # imports and first-call costs out of the timing
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    ds = ri.generate(M, N, lo, hi, 0, n_colloc=n_c, progress=False)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"label": label, "wall_s": wall, "cpu_s": cpu, "peak_mib": r1.ru_maxrss / 1024,
                      "tokens": int(ds.offsets[-1]),
                      "estimate_mib": generation_bytes(M, N, lo, hi, n_c)[0] / 2**20}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per case (the table shows the fastest)")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        run_case(args.case)
        return
    print(f"{'case':30s} {'tokens':>10s} {'wall s':>8s} {'cpu s':>8s} {'peak MiB':>9s} {'estimate MiB':>13s}")
    for i, case in enumerate(CASES):
        runs = []
        for _ in range(args.reps):
            out = subprocess.run([sys.executable, __file__, "--case", str(i)], capture_output=True, text=True,
                                 check=True)
            runs.append(json.loads(out.stdout))
        best = min(runs, key=lambda r: r["cpu_s"])
        print(f"{case[0]:30s} {best['tokens']:10d} {min(r['wall_s'] for r in runs):8.3f} {best['cpu_s']:8.3f} "
              f"{max(r['peak_mib'] for r in runs):9.1f} {best['estimate_mib']:13.1f}")


if __name__ == "__main__":
    main()
