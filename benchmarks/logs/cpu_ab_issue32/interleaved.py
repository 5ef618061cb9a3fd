"""The PPO loop row of benchmarks/throughput.py, before and after, interleaved: each round runs
raw dm_control, the PPO loop (64 envs, 32,768 frames, identity decoder) and the GoRL loop through
the 10-step flow decoder in one tree, then in the other, so a slow spell of this shared VM falls on
both. Run: python interleaved.py BEFORE_TREE AFTER_TREE [ROUNDS]."""

import json
import os
import subprocess
import sys

CODE = """
import json, sys
sys.path.insert(0, "benchmarks")
import throughput
from gorl.decoders import FlowDecoder, IdentityDecoder
raw = throughput.raw_rate("cheetah-run", 3.0)
ppo, _ = throughput.loop_rate("cheetah-run", 64, 32768, IdentityDecoder)
gorl, _ = throughput.loop_rate("cheetah-run", 64, 32768, FlowDecoder)
print(json.dumps({"raw": raw, "ppo": ppo / raw, "gorl_flow": gorl / raw}))
"""

before, after = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
got = {"before": [], "after": []}
for r in range(rounds):
    for name, tree in (("before", before), ("after", after)) if r % 2 == 0 else (("after", after), ("before", before)):
        out = subprocess.run([sys.executable, "-c", CODE], cwd=tree, env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        got[name].append(json.loads(out))
        print(f"round {r} {name}: {out}", flush=True)
for name, rows in got.items():
    for key in ("ppo", "gorl_flow"):
        vals = sorted(row[key] for row in rows)
        print(f"{name} {key}: ratio to raw, median {vals[len(vals) // 2]:.3f} (all {', '.join(f'{v:.3f}' for v in vals)})")
