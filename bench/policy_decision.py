"""Decision time for a statement: cold (parse and classify) and warm (decision cache), simple and complex.

Run: ``.venv/bin/python bench/policy_decision.py``. No database: the function catalog is a snapshot dict, as
in the gateway. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "phigate.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-a-secret-" + "x" * 20)
os.environ.setdefault("DATABASE_URL", "postgresql://bench@127.0.0.1/unused")  # no query is made

import django

django.setup()

from gateway.decision_cache import DecisionCache  # noqa: E402
from gateway.pipeline import Decision  # noqa: E402
from policy.classifier import classify  # noqa: E402
from policy.defaults import DEFAULT_INFERENCE, DEFAULT_MASKS  # noqa: E402
from policy.function_catalog import SnapshotFunctionCatalog  # noqa: E402
from policy.lineage import analyze  # noqa: E402
from policy.lineage_masking import inference_verdict  # noqa: E402
from policy.target_catalog import Tag, TargetCatalog  # noqa: E402
from policy.withholding import withheld_statement  # noqa: E402

FUNCTIONS = SnapshotFunctionCatalog(
    by_qualified_name={("pg_catalog", name): "i" for name in ("count", "upper", "lower", "coalesce", "sum", "max")},
    search_path=("pg_catalog", "public"),
)
COLUMNS = {
    ("public", "pgbench_accounts"): ("aid", "bid", "abalance", "filler"),
    ("public", "patients"): ("id", "mrn", "full_name", "date_of_birth", "ssn", "phone", "email", "address", "zip"),
    ("public", "encounters"): ("id", "patient_id", "admitted_at", "diagnosis_code", "notes"),
    ("public", "prescriptions"): ("id", "encounter_id", "drug", "dose"),
    ("public", "diagnosis_codes"): ("code", "description"),
}
OIDS = {f"{schema}.{name}": oid for oid, (schema, name) in enumerate(COLUMNS, start=16384)}
_PATIENTS = OIDS["public.patients"]
TAGS = {
    (_PATIENTS, 2): Tag("public", "patients", "mrn", "mrn"),
    (_PATIENTS, 3): Tag("public", "patients", "full_name", "name"),
    (_PATIENTS, 4): Tag("public", "patients", "date_of_birth", "birth_date"),
    (_PATIENTS, 5): Tag("public", "patients", "ssn", "ssn"),
    (OIDS["public.encounters"], 5): Tag("public", "encounters", "notes", "clinical_notes"),
}
# The clinic's PHI tags with the default masks and inference rules, so a cold decision does all the read guard
# does (lineage, the guard, and the rewrite that withholds computed PHI).
CATALOG = TargetCatalog(
    relkinds={oid: "r" for oid in OIDS.values()},
    relation_oids=OIDS,
    tagged_columns=TAGS,
    tagged_relations=frozenset(oid for oid, _ in TAGS),
    functions=FUNCTIONS,
    masks={(str(t), str(k)): str(m) for t, row in DEFAULT_MASKS.items() for k, m in row.items()},
    inference={(str(t), str(k)): str(DEFAULT_INFERENCE[k]) for t in DEFAULT_MASKS for k in DEFAULT_INFERENCE},
    relation_columns=COLUMNS,
)


def cold_decision(sql: str) -> None:
    """What the gateway does on a cache miss for a read: classify (views through the catalog), column lineage,
    the read guard for an agent, and the rewrite when computed PHI is withheld."""
    classify(sql, FUNCTIONS, relations=CATALOG)
    guard = inference_verdict(analyze(sql, CATALOG), CATALOG, "agent")
    if guard.action == "allow" and guard.withheld:
        withheld_statement(sql, [(column.target, column.name) for column in guard.withheld])


STATEMENTS = {
    "simple (pgbench -S)": "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
    "5-way join": (
        "SELECT p.id, upper(p.full_name), e.admitted_at, d.description, rx.drug, count(*) AS n "
        "FROM patients p JOIN encounters e ON e.patient_id = p.id "
        "JOIN diagnosis_codes d ON d.code = e.diagnosis_code "
        "JOIN prescriptions rx ON rx.encounter_id = e.id "
        "LEFT JOIN encounters prior ON prior.patient_id = p.id AND prior.admitted_at < e.admitted_at "
        "WHERE e.admitted_at > '2025-01-01' AND d.code LIKE 'E11%' "
        "GROUP BY p.id, p.full_name, e.admitted_at, d.description, rx.drug ORDER BY n DESC LIMIT 50"
    ),
    "masked read, computed PHI withheld": (
        "SELECT p.id, p.ssn, upper(p.full_name) AS shout, p.date_of_birth FROM patients p WHERE p.id = 48213"
    ),
}


def timed(function, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        function()
        samples.append(time.perf_counter_ns() - started)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99) - 1] / 1000


def main() -> None:
    print(
        "| statement | cold median µs | cold p99 µs | warm, new literals: median µs | p99 µs "
        "| warm, exact repeat: median µs | p99 µs |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, sql in STATEMENTS.items():
        # Cold means never seen: a new literal each time, so neither the decision cache nor the parse memo helps
        # (within one decision, the classifier and lineage share one parse).
        fresh = iter([sql.replace("48213", str(n)).replace("'E11%'", f"'C{n}%'") for n in range(100_000, 104_000)])
        cold = timed(lambda fresh=fresh: cold_decision(next(fresh)), 2000)
        cache = DecisionCache()
        classification = classify(sql, FUNCTIONS)
        decision = Decision(verdict="allowed", classification=classification, catalog=CATALOG)
        _, shape = cache.lookup("bench", sql, CATALOG)
        cache.store("bench", shape, decision)
        varied = sql.replace("48213", "913").replace("'E11%'", "'I10%'")
        assert cache.lookup("bench", varied, CATALOG)[0] is decision  # warm: other literals, same shape
        # Each call sees a text it has never seen (a new literal), so only the shape level can answer.
        variants = iter([sql.replace("48213", str(n)).replace("'E11%'", f"'E{n}%'") for n in range(100_000)])
        warm_shape = timed(lambda c=cache, v=variants: c.lookup("bench", next(v), CATALOG), 5000)
        warm_exact = timed(lambda c=cache, v=varied: c.lookup("bench", v, CATALOG), 20000)
        print(
            f"| {label} | {cold[0]:.0f} | {cold[1]:.0f} | {warm_shape[0]:.1f} | {warm_shape[1]:.1f} | "
            f"{warm_exact[0]:.1f} | {warm_exact[1]:.1f} |"
        )


if __name__ == "__main__":
    main()
