"""phigate: a control surface between AI agents and PostgreSQL databases that hold PHI."""

from phigate.celery import app as celery_app

__all__ = ["celery_app"]
