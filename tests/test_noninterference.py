"""Noninterference (issue 12): nothing an agent sees may depend on PHI beyond what its masks reveal.

Base and twins (tests/noninterference/twins.py) agree on everything the agent's masks reveal and differ in every
hidden character; every statement must get the same answer on all of them, over HTTP and the wire (text, binary,
simple protocol), up to a consistent renaming of pseudonyms. A control with a deliberately weakened policy shows
that the harness fires.

Environment (the CI defaults are the fixed-seed run; ``make noninterference N=50000`` is the long run):
NONINTERFERENCE_N (generated statements, default 2000), NONINTERFERENCE_HTTP_EVERY (every k-th statement also
over HTTP, default 4), NONINTERFERENCE_SEED (hypothesis seed, default fixed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.noninterference import harness, oracle, serving

pytestmark = pytest.mark.usefixtures("control_plane")

EXAMPLES = int(os.environ.get("NONINTERFERENCE_N", "2000"))
HTTP_EVERY = int(os.environ.get("NONINTERFERENCE_HTTP_EVERY", "4"))
SEED = int(os.environ.get("NONINTERFERENCE_SEED", "20261124"))


@pytest.fixture(scope="module")
def world() -> Iterator[serving.World]:
    with serving.world() as running:
        yield running


@pytest.fixture(scope="module")
def fronts(world: serving.World) -> Iterator[harness.Fronts]:
    with harness.fronts_for(world) as running:
        yield running


def test_twins_differ_in_every_phi_column(world: serving.World) -> None:
    """The build already asserted the masks agree; here: every PHI column really differs in the twins."""
    from demo.clinic import PHI_TAGS

    for twin in serving.TWINS:
        for tag in PHI_TAGS:
            assert world.differing[twin].get(f"{tag.table}.{tag.column}", 0) > 0, (twin, tag)


def test_control_weakened_policy_is_caught(fronts: harness.Fronts) -> None:
    """Allowing agents to filter on SSNs (a legitimate policy setting) must show up as a violation."""
    sql = "SELECT id FROM patients WHERE ascii(ssn) > 52 ORDER BY id"
    tally = oracle.Tally()
    found = oracle.check(
        sql,
        ordered=True,
        fronts=fronts.all(),
        base=serving.CONTROL_BASE,
        twins=serving.CONTROL_TWINS,
        tally=tally,
    )
    caught = {v.front for v in found if v.difference.kind == "rowcount"}
    assert caught == {"http", "wire-text", "wire-binary", "wire-simple"}, [v.describe() for v in found]
    # The same statement under the default policy is held everywhere, so nothing differs.
    default = oracle.check(
        sql, ordered=True, fronts=fronts.all(), base=serving.BASE, twins=serving.TWINS, tally=oracle.Tally()
    )
    assert default == [], [v.describe() for v in default]


def test_issue_attacks_reveal_nothing(fronts: harness.Fronts) -> None:
    run = harness.Run()
    harness.run_seeds(fronts, serving.BASE, serving.TWINS, run)
    print("\n" + harness.summary(run))
    assert not run.tally.violations, harness.summary(run)


@pytest.mark.timeout(max(300, EXAMPLES // 2))
def test_generated_statements_reveal_nothing(fronts: harness.Fronts) -> None:
    run = harness.Run()
    harness.run_generated(
        fronts, serving.BASE, serving.TWINS, run, examples=EXAMPLES, http_every=HTTP_EVERY, seed_value=SEED
    )
    print("\n" + harness.summary(run))
    assert not run.tally.harness_errors, harness.summary(run)
    assert run.tally.queries >= min(EXAMPLES, 2000) * 0.95, harness.summary(run)
    assert run.tally.inconclusive <= run.tally.queries // 100, harness.summary(run)  # timeouts and outages are rare
    assert not run.tally.violations, harness.summary(run)
