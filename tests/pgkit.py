"""A PostgreSQL database of its own for each test (created, then dropped), so tests running
in parallel never share state. Needs the server of `RMCS_TEST_PG_ADMIN` (default: the local
one, trust auth); a test that asks for it fails when it is not answering, never skips."""

from __future__ import annotations

import os
import uuid
from typing import AsyncIterator

import asyncpg
import pytest

ADMIN_URL = os.environ.get("RMCS_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def create_database() -> str:
    name = f"rmcs_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty database, dropped after the test."""
    name = await create_database()
    try:
        yield database_url(name)
    finally:
        await drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
async def state_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The test runs twice: on SQLite (`sqlite:`), then on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield "sqlite:"
        return
    name = await create_database()
    try:
        yield database_url(name)
    finally:
        await drop_database(name)
