"""Driving a run: fronts for one agent, the seed set, the generated statements, and the figures."""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, seed, settings

from tests.noninterference import attacks, oracle, serving
from tests.noninterference.grammar import Generated, statements

WIRE_MODES = ("text", "binary", "simple")


@dataclass
class Fronts:
    http: oracle.HttpFront
    wire: dict[str, oracle.WireFront]

    def all(self) -> list[oracle.HttpFront | oracle.WireFront]:
        return [self.http, *self.wire.values()]


@contextmanager
def fronts_for(world: serving.World) -> Iterator[Fronts]:
    """One agent (owned by an engineer) on every front; the HTTP front talks to the harness's own gateway."""
    from django.test.utils import override_settings

    from identity.roles import Role
    from tests.factories import api_client, make_agent, make_user

    agent, token = make_agent(make_user(Role.ENGINEER))
    requests_log = logging.getLogger("django.request")  # 400/403 answers are expected here by the thousand
    level = requests_log.level
    requests_log.setLevel(logging.ERROR)
    names = list(world.db_of) + list(world.db_of.values())
    norm = oracle.Normalizer(names)
    from approvals.notify import redis_client

    # The web side's Redis client is made once per process (functools.cache): an earlier test may have made it
    # for the suite's own Redis, so it is made again for the harness's, and again for the suite's after.
    redis_client.cache_clear()
    with override_settings(REDIS_URL=world.redis_url):
        fronts = Fronts(
            http=oracle.HttpFront(api_client(token), norm),
            wire={mode: oracle.WireFront(world.gateway_port, agent.name, token, mode, norm) for mode in WIRE_MODES},
        )
        try:
            yield fronts
        finally:
            for front in fronts.wire.values():
                front.close()
            requests_log.setLevel(level)
            redis_client.cache_clear()


@dataclass
class Run:
    """A run's figures, plus per-feature counts (which constructs the violating statements use)."""

    tally: oracle.Tally = field(default_factory=oracle.Tally)
    features: Counter[str] = field(default_factory=Counter)
    violating_features: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    http_queries: int = 0

    def record(self, generated: Generated, found: list[oracle.Violation]) -> None:
        self.features.update(generated.features)
        if found:
            self.violating_features.update(generated.features)


def run_seeds(fronts: Fronts, base: str, twins: tuple[str, ...], run: Run) -> None:
    started = time.monotonic()
    for sql, fresh in attacks.SEEDS:
        oracle.check(
            sql,
            ordered=oracle.is_ordered(sql),
            fronts=fronts.all(),
            base=base,
            twins=twins,
            tally=run.tally,
            features=("seed",),
            fresh=fresh,
        )
        run.http_queries += 1
    run.seconds += time.monotonic() - started


def run_generated(
    fronts: Fronts,
    base: str,
    twins: tuple[str, ...],
    run: Run,
    *,
    examples: int,
    http_every: int,
    seed_value: int,
) -> None:
    """``examples`` distinct generated statements on the wire (modes in rotation), every ``http_every``-th also
    over HTTP. Hypothesis with an explicit seed, no deadline, no example database (it writes no files)."""
    seen: set[str] = set()
    started = time.monotonic()

    @seed(seed_value)
    @settings(
        max_examples=examples * 2,  # room for repeats, which are skipped (see below)
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(generated=statements())
    def body(generated: Generated) -> None:
        # A repeat (or anything past the target count) is a no-op that passes, never an assume(): hypothesis may
        # run one input twice, and an answer that depends on ``seen`` would make it report a flaky test.
        if generated.sql in seen or len(seen) >= examples:
            return
        seen.add(generated.sql)
        index = len(seen)
        chosen: list[oracle.HttpFront | oracle.WireFront] = [fronts.wire[WIRE_MODES[index % len(WIRE_MODES)]]]
        if index % http_every == 0:
            chosen.append(fronts.http)
            run.http_queries += 1
        try:
            found = oracle.check(
                generated.sql,
                ordered=oracle.is_ordered(generated.sql),
                fronts=chosen,
                base=base,
                twins=twins,
                tally=run.tally,
                features=generated.features,
            )
        except Exception:  # reported with the statement; never left to hypothesis, which would replay it
            run.tally.harness_errors.append(f"{generated.sql}\n{traceback.format_exc(limit=4)}")
            return
        run.record(generated, found)

    body()
    run.seconds += time.monotonic() - started


def summary(run: Run, limit: int = 40) -> str:
    tally = run.tally
    lines = [
        f"statements: {tally.queries} ({run.http_queries} also over HTTP), executions: {tally.runs}, "
        f"{run.seconds:.1f} s, {tally.queries / max(run.seconds, 1e-9):.1f} statements/s, "
        f"{tally.runs / max(run.seconds, 1e-9):.1f} executions/s",
        "base answers by front and status: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.by_status.items())),
        f"inconclusive (statement timeout or control-plane outage): {tally.inconclusive}",
        f"violations: {len(tally.violations)} in {len(tally.violating_queries)} statements",
    ]
    if tally.harness_errors:
        lines.append(f"harness errors: {len(tally.harness_errors)}; first: {tally.harness_errors[0]}")
    kinds = Counter(v.difference.kind for v in tally.violations)
    if kinds:
        lines.append("by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
        fronts = Counter(f"{v.front}/{v.twin}" for v in tally.violations)
        lines.append("by front/twin: " + ", ".join(f"{k} {n}" for k, n in fronts.most_common()))
    if run.violating_features:
        rates = sorted(
            ((run.violating_features[f] / run.features[f], f) for f in run.features if run.violating_features[f]),
            reverse=True,
        )
        lines.append(
            "features of violating statements (violating/generated): "
            + ", ".join(f"{f} {run.violating_features[f]}/{run.features[f]}" for _, f in rates[:30])
        )
    shown: set[str] = set()
    examples = sorted(tally.violations, key=lambda v: (len(v.sql), v.front))
    for violation in examples:
        if violation.sql in shown or len(shown) >= limit:
            continue
        shown.add(violation.sql)
        lines.append(violation.describe())
    return "\n".join(lines)
