#!/usr/bin/env bash
# Prints the slowest tests of the last `--profile ci` run, from nextest's JUnit report.
#   scripts/slowest.sh [COUNT]   (default 25)
set -euo pipefail
cd "$(dirname "$0")/.."
report=target/nextest/ci/junit.xml
[ -f "$report" ] || { echo "slowest: no $report (run scripts/test.sh with CI=true first)" >&2; exit 1; }
python3 - "$report" "${1:-25}" <<'PY'
import sys, xml.etree.ElementTree as ET
cases = [(float(c.get("time", 0)), c.get("name")) for c in ET.parse(sys.argv[1]).iter("testcase")]
cases.sort(reverse=True)
print(f"{len(cases)} tests, {sum(t for t, _ in cases):.0f} s in all; the slowest:")
for t, name in cases[: int(sys.argv[2])]:
    print(f"{t:8.1f} s  {name}")
PY
