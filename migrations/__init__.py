"""Alembic migrations: the only thing that creates or changes the controller's tables.

``controller.database.migrate`` runs them programmatically at start; ``alembic -c
migrations/alembic.ini upgrade head`` works too.
"""
