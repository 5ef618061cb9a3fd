"""Compare two metrics.csv files cell by cell, leaving out wall-clock columns (perf/*)."""
import csv, sys
a = list(csv.DictReader(open(sys.argv[1]))); b = list(csv.DictReader(open(sys.argv[2])))
cols = sorted((set(a[0]) | set(b[0])) - {c for c in set(a[0]) | set(b[0]) if c.startswith("perf/")})
only = sorted(set(a[0]) ^ set(b[0]))
diff = [(i, c, ra.get(c), rb.get(c)) for i, (ra, rb) in enumerate(zip(a, b)) for c in cols if ra.get(c) != rb.get(c)]
print(f"rows {len(a)} vs {len(b)}; columns compared {len(cols)} (perf/* left out); columns in one only: {only}; cells differing: {len(diff)}")
for d in diff[:10]:
    print("  ", d)
