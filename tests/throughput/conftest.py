from tests.campaign_writer.conftest import commands, writer  # noqa: F401 - the Campaign writer fixtures
