"""``manage.py verify_audit``: exit 0 when the whole audit chain verifies, nothing is left unchained past the
bound and every signed activity review matches its sign-off; 1 naming the first problem."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.activity_review import verify_signed_reviews
from audit.chain import SequencerBusy, extend_chain, verify_chain


class Command(BaseCommand):
    help = "Verify the audit hash chain, its signed checkpoints, and that no event is left unchained."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--no-extend",
            action="store_true",
            help="verify only what is already chained (by default, committed events are chained first when "
            "this process holds the signing key)",
        )
        parser.add_argument(
            "--unchained-bound",
            type=float,
            default=None,
            metavar="SECONDS",
            help="fail when the sequencer has not passed for this long while events were written "
            f"(default AUDIT_UNCHAINED_BOUND_SECONDS, {settings.AUDIT_UNCHAINED_BOUND_SECONDS})",
        )
        parser.add_argument(
            "--lock-wait",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="how long to wait for another sequencer before verifying without extending (default 30)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.AUDIT_SIGNING_KEY and not options["no_extend"]:
            try:
                extend_chain(wait=options["lock_wait"])
            except SequencerBusy as exc:
                # A stuck sequencer is exactly what the unchained bound catches: verify what is there.
                self.stderr.write(f"not extending the chain first: {exc}")
        verdict = verify_chain(unchained_bound=options["unchained_bound"])
        if not verdict.ok:
            raise CommandError(f"audit chain FAILED: {verdict.problem}", returncode=1)
        # A signed activity review must still be what its chained sign-off certified (audit.activity_review).
        changed = verify_signed_reviews()
        if changed:
            raise CommandError(f"audit chain OK but {changed[0]}", returncode=1)
        self.stdout.write(f"audit chain OK: {verdict.links} events, {verdict.checkpoints} signed checkpoints")
