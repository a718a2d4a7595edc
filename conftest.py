"""Root conftest: loads the streamparity pytest plugin for this repository's tests."""

pytest_plugins = ["streamparity.pytest_plugin"]
