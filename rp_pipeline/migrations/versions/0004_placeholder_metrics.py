"""placeholder, replaced at merge

Revision ID: 0004
Revises: 0003
"""

revision = "0004"
down_revision = "0003"


def upgrade():
    pass
