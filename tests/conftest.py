"""Shared pytest fixtures of the hagg_tf test suite."""


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_database(tmp_path_factory):
    """Builds the ``tiny`` preset database (default HAADF tables) once per image size.

    Returns:
        A function ``image_size -> database directory``; tests must not modify the database.
    """
    built = {}

    def build(image_size):
        if image_size not in built:
            from hagg_tf import data

            output = tmp_path_factory.mktemp(f"tiny{image_size}") / "db"
            report = data.generate_dataset(output, data.preset("tiny", image_size=image_size),
                                           workers=1, progress=False)
            assert report.complete
            built[image_size] = output
        return built[image_size]

    return build


@pytest.fixture(scope="session")
def tiny_compact_cache(tiny_database, tmp_path_factory):
    """(database, pooled cache) of the tiny preset at the compact architecture's smallest size.

    Tests must not modify either.
    """
    from hagg_tf import networks
    from hagg_tf.data.pooled import build_pooled_cache

    database = tiny_database(networks.minimum_image_size("compact"))
    pooling = networks.get_architecture("compact").input_pooling
    cache = build_pooled_cache(database, tmp_path_factory.mktemp("tiny_cache") / "pool",
                               pooling, workers=1, progress=False)
    return database, cache


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def one_error_line():
    """Checks a finished CLI run (``subprocess.CompletedProcess``) failed with exit status 2 and
    one ``error:`` line on stderr, no traceback; returns that line."""
    return _one_error_line
