"""Alembic migrations for the predictd database."""
