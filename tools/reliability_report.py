"""Summarise a `make test-faults` sweep (the TDC_FAULT_SUMMARY file) into reliability.{json,md}.

    python tools/reliability_report.py benchmarks/results/faults.jsonl [--out-dir DIR]

Writes ``reliability.json`` and ``reliability.md`` into ``--out-dir`` (default: the summary's folder)
and prints the table. Besides the kill-chain, chaos and corrupt-file figures, it lists every class of
issue 21's hostile inputs (tests/probes.py) with the probes tried and held, the tracebacks seen, and
how long the slowest refusal took, in wall and in CPU seconds (measured on the machine that ran the
sweep: on a loaded machine the wall time says little); a class with no probe recorded is listed as
such, so a gap shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# issue 21's classes, numbered as in tests/probes.py (CLASSES), which names them in every record
HOSTILE_CLASSES = range(1, 10)


def hostile_table(recs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per class: probes tried and held, tracebacks seen, the refusals' exit codes, and the most wall and
    CPU seconds one refusing (exit 2) command took. A call is ``[exit code, wall s, CPU s]``."""
    out: dict[str, dict[str, Any]] = {}
    for k in HOSTILE_CLASSES:
        mine = [r for r in recs if int(r["hostile_class"]) == k]
        refusal_calls = [c for r in mine if r.get("refusal") for c in r.get("calls", [])]
        exit2 = [c for c in refusal_calls if c[0] == 2]
        out[str(k)] = {
            "name": next((r.get("class_name", "") for r in mine), ""),
            "tried": len(mine),
            "held": sum(bool(r["held"]) for r in mine),
            "tracebacks": sum(int(r.get("tracebacks", 0)) for r in mine),
            "refusals": sum(bool(r.get("refusal")) for r in mine),
            # every CLI call a refusal probe made (a probe may also run the repair that follows)
            "refusal_exit_codes": dict(sorted(Counter(str(c[0]) for c in refusal_calls).items())),
            "slowest_refusal_s": max((c[1] for c in exit2), default=None),
            "most_refusal_cpu_s": max((c[2] for c in exit2 if len(c) > 2 and c[2] >= 0), default=None),
            "slowest_probe_s": max((r.get("seconds", 0.0) for r in mine), default=None),
            "broke": [r["probe"] for r in mine if not r["held"]],
        }
    return out


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def report(recs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The figures (JSON) and the markdown lines for one sweep's records."""
    chains = [r for r in recs if "log" in r]
    kills = [x["failpoint"] for r in chains for x in r["log"] if x["killed"]]
    chaos = [r for r in recs if "injected" in r]
    injected: Counter = Counter()
    for r in chaos:
        injected.update(r["injected"])
    corrupt = [r for r in recs if "corrupt_file" in r]
    classes = hostile_table([r for r in recs if "hostile_class" in r])
    out = {
        "kill_chains": len(chains), "kills": len(kills), "kills_by_point": dict(Counter(k.split(":")[0] for k in kills)),
        "artifacts_compared_per_chain": max((r["artifacts_compared"] for r in chains), default=0),
        "chaos_runs": len(chaos), "llm_requests": sum(r["requests"] for r in chaos),
        "llm_faults_injected": sum(injected.values()), "llm_faults_by_kind": dict(injected),
        "chaos_attempts": [r["attempts"] for r in chaos],
        "corrupt_files": len(corrupt), "corrupt_exit_codes": dict(Counter(r["exit_code"] for r in corrupt)),
        "data_lost": "none: every chain ended equal to the uninterrupted run (the test fails otherwise)",
        "hostile_classes": classes,
        "hostile_totals": {k: sum(c[k] for c in classes.values()) for k in ("tried", "held", "tracebacks", "refusals")},
    }
    md = ["| measure | value |", "|---|---|",
          f"| SIGKILLs survived (kill chains) | {len(kills)} ({len(chains)} chains) |",
          f"| kills by failpoint | {', '.join(f'{k} {v}' for k, v in sorted(out['kills_by_point'].items()))} |",
          f"| artifacts compared bit for bit after each chain | {out['artifacts_compared_per_chain']} |",
          f"| LLM faults injected (chaos runs) | {out['llm_faults_injected']} in {out['llm_requests']} requests, "
          f"{len(chaos)} runs |",
          f"| LLM faults by kind | {', '.join(f'{k} {v}' for k, v in sorted(injected.items()))} |",
          f"| chaos runs: attempts until done | {out['chaos_attempts']} |",
          f"| corrupt files tried (CLI, exit 2, file named) | {len(corrupt)} |",
          "| data lost | none |",
          "", "Hostile inputs (issue 21; tests/test_hostile.py and the assemble probes of tests/test_faults.py), by "
          "class. Held: every assertion of the probe passed (a refusal: exit 2, one paragraph, no traceback, "
          "nothing written; otherwise handled as specified). Tracebacks: in anything the probe's commands "
          "printed, or an exception that escaped. Slowest refusal: the most wall-clock and the most CPU seconds "
          "one exit-2 command of the class took on the machine that ran the sweep (recorded, not asserted; an "
          "in-process command's CPU time is the test process's, so the first one pays the imports).", "",
          "| class | probes tried | held | tracebacks seen | refusal probes (their commands' exit codes) | slowest refusal: wall s "
          "| CPU s | broke |",
          "|---|---|---|---|---|---|---|---|"]
    for k, c in classes.items():
        if not c["tried"]:
            md.append(f"| {k}. (no probe recorded) | 0 | 0 | - | - | - | - | - |")
            continue
        codes = ", ".join(f"{code}: {n}" for code, n in c["refusal_exit_codes"].items()) or "-"
        md.append(f"| {k}. {c['name']} | {c['tried']} | {c['held']} | {c['tracebacks']} | {c['refusals']} ({codes}) "
                  f"| {_s(c['slowest_refusal_s'])} | {_s(c['most_refusal_cpu_s'])} | {', '.join(c['broke']) or '-'} |")
    t = out["hostile_totals"]
    def most(key: str) -> float | None:
        return max((c[key] for c in classes.values() if c[key] is not None), default=None)

    md.append(f"| all | {t['tried']} | {t['held']} | {t['tracebacks']} | {t['refusals']} | "
              f"{_s(most('slowest_refusal_s'))} | {_s(most('most_refusal_cpu_s'))} | |")
    return out, md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("summary", nargs="?", default="benchmarks/results/faults.jsonl",
                    help="the TDC_FAULT_SUMMARY file of the sweep")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where reliability.json and reliability.md go (default: the summary's folder)")
    args = ap.parse_args(argv)
    summary = Path(args.summary)
    recs = [json.loads(x) for x in summary.read_text().splitlines() if x.strip()]
    out, md = report(recs)
    out_dir = args.out_dir or summary.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "reliability.json").write_text(json.dumps(out, indent=2) + "\n")
    (out_dir / "reliability.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
