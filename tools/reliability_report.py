"""Summarise a `make test-faults` sweep (the TDC_FAULT_SUMMARY file) into reliability.{json,md}.

    python tools/reliability_report.py benchmarks/results/faults.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def main(path: str) -> int:
    recs = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    chains = [r for r in recs if "log" in r]
    kills = [x["failpoint"] for r in chains for x in r["log"] if x["killed"]]
    chaos = [r for r in recs if "injected" in r]
    injected: Counter = Counter()
    for r in chaos:
        injected.update(r["injected"])
    corrupt = [r for r in recs if "corrupt_file" in r]
    hostile = [r for r in recs if "hostile_class" in r]
    classes: dict[int, dict] = {}
    for r in hostile:
        c = classes.setdefault(int(r["hostile_class"]), {"name": r.get("class_name", ""), "tried": 0, "held": 0,
                                                         "broke": []})
        c["tried"] += 1
        c["held"] += bool(r["held"])
        if not r["held"]:
            c["broke"].append(r["probe"])
    out = {
        "kill_chains": len(chains), "kills": len(kills), "kills_by_point": dict(Counter(k.split(":")[0] for k in kills)),
        "artifacts_compared_per_chain": max((r["artifacts_compared"] for r in chains), default=0),
        "chaos_runs": len(chaos), "llm_requests": sum(r["requests"] for r in chaos),
        "llm_faults_injected": sum(injected.values()), "llm_faults_by_kind": dict(injected),
        "chaos_attempts": [r["attempts"] for r in chaos],
        "corrupt_files": len(corrupt), "corrupt_exit_codes": dict(Counter(r["exit_code"] for r in corrupt)),
        "data_lost": "none: every chain ended equal to the uninterrupted run (the test fails otherwise)",
        "hostile_classes": {str(k): v for k, v in sorted(classes.items())},
    }
    Path(path).with_name("reliability.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["| measure | value |", "|---|---|",
          f"| SIGKILLs survived (kill chains) | {len(kills)} ({len(chains)} chains) |",
          f"| kills by failpoint | {', '.join(f'{k} {v}' for k, v in sorted(out['kills_by_point'].items()))} |",
          f"| artifacts compared bit for bit after each chain | {out['artifacts_compared_per_chain']} |",
          f"| LLM faults injected (chaos runs) | {out['llm_faults_injected']} in {out['llm_requests']} requests, "
          f"{len(chaos)} runs |",
          f"| LLM faults by kind | {', '.join(f'{k} {v}' for k, v in sorted(injected.items()))} |",
          f"| chaos runs: attempts until done | {out['chaos_attempts']} |",
          f"| corrupt files tried (CLI, exit 2, file named) | {len(corrupt)} |",
          "| data lost | none |"]
    if classes:
        md += ["", "Hostile inputs (tests/test_hostile.py), by class: probes tried and held (refused with one "
               "paragraph, exit 2, nothing written; or handled):", "",
               "| class | probes tried | held | broke |", "|---|---|---|---|"]
        md += [f"| {k}. {c['name']} | {c['tried']} | {c['held']} | {', '.join(c['broke']) or '-'} |"
               for k, c in sorted(classes.items())]
    Path(path).with_name("reliability.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/faults.jsonl"))
