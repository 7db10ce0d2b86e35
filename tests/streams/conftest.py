from tests.streams.changes import decide  # noqa: F401 - the reconciler tests' fixture
