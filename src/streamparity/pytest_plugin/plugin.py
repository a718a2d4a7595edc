"""The pytest plugin (entry point ``pytest11: streamparity``): hooks only, each one call into
:class:`~streamparity.pytest_plugin.session.PluginSession`.  Options are in ``options``, the session object in
``session``, test bodies in ``outcomes``, fixtures in ``fixtures``, extension hooks in ``hookspec``."""

from __future__ import annotations

from typing import Any

import pytest

from streamparity.pytest_plugin import hookspec, options, release_gate
from streamparity.pytest_plugin.fixtures import ort_fp32, parity, trt_fp16, trt_fp32
from streamparity.pytest_plugin.session import PluginSession, plugin_session

__all__ = ["ort_fp32", "parity", "trt_fp16", "trt_fp32"]  # fixtures, registered with this plugin


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspec)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    PluginSession.configure(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    plugin_session(node.config).configure_node(node)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    plugin_session(metafunc.config).parametrize(metafunc)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return plugin_session(config).report_header()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    plugin_session(config).terminal_summary(terminalreporter, release_gate.summary_lines(config))


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    release_gate.machine_info(machine_info)


@pytest.hookimpl(optionalhook=True, wrapper=True)
def pytest_benchmark_compare_machine_info(benchmarksession: Any, machine_info: dict[str, Any],
                                          compared_benchmark: dict[str, Any]) -> Any:
    return (yield from release_gate.compare_machine_info(benchmarksession, machine_info, compared_benchmark))


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    release_gate.start(session)


def pytest_sessionfinish(session: pytest.Session) -> None:
    release_gate.finish(session)
