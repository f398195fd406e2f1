"""The suite's spread over two workers (scheduling.py), proven in a real two-worker pytest-xdist
run of a small generated suite wired as conftest.py wires the real one: the tests of one host
and of one module-scoped fixture value run on one worker, so the fixture is made once; the
heaviest group is handed out first."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

CONFTEST = '''
import os, json, pytest
import scheduling

def pytest_configure(config):
    scheduling.configure(config)

def pytest_collection_modifyitems(config, items):
    scheduling.arrange(config, items)

@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return scheduling.make_scheduler(config, log)

def made(what):
    with open(os.environ["MADE_LOG"], "a") as f:
        f.write(json.dumps([what, os.environ.get("PYTEST_XDIST_WORKER")]) + "\\n")

@pytest.fixture(scope="session", params=["old", "new"])
def comfy(request):
    made("host-" + request.param)
    return request.param

@pytest.fixture
def ran(request):
    yield
    made("ran:" + request.node.nodeid)
'''

HOST_TESTS = '''
import time
def test_one(comfy, ran): time.sleep(0.2)
def test_two(comfy, ran): time.sleep(0.2)
def test_three(comfy, ran): time.sleep(0.2)
'''

MODULE_TESTS = '''
import time, pytest
from conftest import made

@pytest.fixture(scope="module", params=["x", "y"])
def trained(request):
    made("trained-" + request.param)
    return request.param

def test_a(trained, ran): time.sleep(0.2)
def test_b(trained, ran): time.sleep(0.2)
def test_c(ran): time.sleep(0.2)
'''

ALONE_TESTS = "\n".join(f"def test_alone_{i}(ran): __import__('time').sleep(0.3)" for i in range(6)) + "\n"


def test_a_group_runs_on_one_worker_and_its_fixture_is_made_once(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_host.py").write_text(HOST_TESTS)
    (suite / "test_module.py").write_text(MODULE_TESTS)
    (suite / "test_alone.py").write_text(ALONE_TESTS)
    log = tmp_path / "made.jsonl"
    env = {**__import__("os").environ, "MADE_LOG": str(log), "PYTHONPATH": str(TESTS)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
                          "-q", str(suite)], cwd=suite, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    made = [what for what, _ in events if not what.startswith("ran:")]
    # each host and each module fixture value made once: its tests never spread over workers
    assert sorted(made) == ["host-new", "host-old", "trained-x", "trained-y"], events
    workers = {}  # (file, parameter) -> the workers that ran its tests
    for what, worker in events:
        if what.startswith("ran:") and "[" in what:
            workers.setdefault((what[4:].split("::")[0], what.split("[")[-1]), set()).add(worker)
    assert len(workers) == 4 and all(len(w) == 1 for w in workers.values()), workers
    assert len({worker for _, worker in events}) == 2, "both workers ran tests"


def test_groups_are_ordered_heaviest_first_by_recorded_durations():
    """The ordering reads tests/durations.json: the recorded groups that cost most (the memorised
    models, the host groups) come before single short tests."""
    from types import SimpleNamespace

    import scheduling

    known = json.loads(scheduling.DURATIONS.read_text())
    assert known and all(isinstance(v, (int, float)) and v >= 0 for v in known.values())

    class Item(SimpleNamespace):
        pass

    def item(nodeid, module, params=None):
        fixturedefs = {"f": [SimpleNamespace(scope="function")]}
        return Item(nodeid=nodeid, callspec=SimpleNamespace(params=params or {}), fixturenames=["f"],
                    _fixtureinfo=SimpleNamespace(name2fixturedefs=fixturedefs),
                    module=SimpleNamespace(__name__=module))

    heavy = max(known, key=known.get)
    light = [item(f"test_new.py::test_{i}", "test_new") for i in range(3)]
    items = [*light, item(heavy, heavy.split(".py")[0])]
    scheduling.arrange(SimpleNamespace(), items)
    assert items[0].nodeid == heavy
    assert [i.nodeid for i in items[1:]] == [i.nodeid for i in light]  # unknown tests keep their order
