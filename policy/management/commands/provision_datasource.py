"""``manage.py provision_datasource --name N --owner-url URL --read-role R --write-role W [--transfer-ownership]``.

Creates (or re-keys) the two roles, grants, the ledger, registers the data source, and prints one JSON object
``{"read_url": ..., "write_url": ...}``: hand the first to the gateway only and the second to the executor only.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from policy.models import DataSource
from policy.provisioning import provision


class Command(BaseCommand):
    help = "Prepare a target database (roles, grants, ledger) and register it as a data source."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--owner-url", required=True)
        parser.add_argument("--read-role", required=True)
        parser.add_argument("--write-role", required=True)
        parser.add_argument("--transfer-ownership", action="store_true", help="make the write role own the tables")

    def handle(self, *args: Any, **options: Any) -> None:
        datasource = DataSource(name=options["name"])
        datasource.full_clean(validate_unique=False)
        urls = provision(
            options["owner_url"],
            read_role=options["read_role"],
            write_role=options["write_role"],
            transfer_ownership=options["transfer_ownership"],
        )
        DataSource.objects.update_or_create(name=options["name"], defaults={"is_active": True})
        self.stdout.write(json.dumps({"read_url": urls.read_url, "write_url": urls.write_url}))
