"""Shared fixtures: a real redis-server, in-process nodes and real `consilium serve` processes."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.redis_sentinel",
    "tests.fixtures.servers",
    "tests.fixtures.media",
    "tests.fixtures.browser",
    "tests.fixtures.firefox",
    "tests.fixtures.turnserver",
    "tests.fixtures.scim",
    "tests.fixtures.orthanc",
    "tests.fixtures.oidc_provider",
    "tests.fixtures.s3_server",
    "tests.fixtures.watchdog",
]
