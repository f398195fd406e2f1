"""How the suite is spread over pytest-xdist's workers.

Some tests must share a worker: the tests of one ComfyUI host (it boots once per worker that
uses it), and the tests of one module-scoped fixture value (it is made once per worker). Each
such set is a *group*; every other test is a group of its own. Groups are handed out heaviest
first (longest-processing-time-first: the last group to start is a short one, so the two
workers finish close together), by the durations measured in an earlier run
(``tests/durations.json``, refreshed by ``bash scripts/test.sh --record-durations``).

pytest-xdist's own ``--dist loadgroup`` reads groups from a suffix it writes into each test's
node id; pytest 9.2 builds node ids from a structured id that ignores the rewrite, so every
test became its own group without a word (both workers booted every host and built every
memorised model). Here the workers write their groups to a file that the controller's
scheduler reads, through pytest-xdist's public scheduler hook, and ``test_scheduling.py``
proves in a real two-worker run that a group stays on one worker.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

GROUPS_ENV = "PERSONA_TEST_GROUPS"
DURATIONS = Path(__file__).with_name("durations.json")
UNKNOWN_SECONDS = 1.0  # a test not in durations.json (new since the last recording)


def group_of(item) -> str:
    """The tests that must share a worker: those of one ComfyUI host, and those of one
    module-scoped fixture value (the module's tests per parameter of its module-scoped
    fixtures); every other test is its own group."""
    spec = getattr(item, "callspec", None)
    params = spec.params if spec is not None else {}
    if "comfy" in params:
        return f"host-{params['comfy']}"
    if "comfy_today" in item.fixturenames:
        return "host-today-frontend"
    defs = item._fixtureinfo.name2fixturedefs
    module_params = sorted(f"{name}={params[name]}" for name in params
                           if name in defs and defs[name][-1].scope == "module")
    uses_module_fixture = any(d[-1].scope == "module" for name, d in defs.items() if name in item.fixturenames)
    if module_params or uses_module_fixture:
        return "::".join([item.module.__name__, *module_params])
    return item.nodeid


def _durations() -> dict[str, float]:
    try:
        return json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}


def configure(config) -> None:
    """On the controller of a distributed run: a folder that the workers write their groups
    into (inherited through the environment by the workers it starts)."""
    if hasattr(config, "workerinput") or config.getoption("dist", "no") == "no":
        return
    os.environ[GROUPS_ENV] = tempfile.mkdtemp(prefix="persona-test-groups-")


def arrange(config, items) -> None:
    """Sort ``items`` heaviest group first (a group's tests keep their order) and, on a
    worker, write each test's group for the controller's scheduler."""
    known = _durations()
    groups = {item.nodeid: group_of(item) for item in items}
    cost: dict[str, float] = {}
    for item in items:
        cost[groups[item.nodeid]] = cost.get(groups[item.nodeid], 0.0) + known.get(item.nodeid, UNKNOWN_SECONDS)
    first = {}
    for i, item in enumerate(items):
        first.setdefault(groups[item.nodeid], i)
    items.sort(key=lambda it: (-cost[groups[it.nodeid]], first[groups[it.nodeid]]))
    folder = os.environ.get(GROUPS_ENV)
    if folder and hasattr(config, "workerinput"):
        target = Path(folder) / f"{config.workerinput['workerid']}.json"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(groups))
        tmp.replace(target)


def make_scheduler(config, log):
    """pytest-xdist's load-scope scheduler with the groups the workers wrote as its scopes,
    in the workers' (heaviest-first) order."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep the heaviest-first order of the collection
            self._groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:
                folder = Path(os.environ[GROUPS_ENV])
                files = sorted(folder.glob("*.json"))
                if not files:
                    raise RuntimeError(f"no worker wrote its test groups into {folder}")
                self._groups = json.loads(files[0].read_text())
            try:
                return self._groups[nodeid]
            except KeyError:
                raise RuntimeError(f"{nodeid}: no group recorded for this test") from None

    return GroupScheduling(config, log)


class DurationRecorder:
    """With ``--record-durations`` (an option of this suite's conftest, so a pytest that a test
    starts never records), each test's setup + call + teardown seconds are merged into
    tests/durations.json at the end of the run (what the ordering reads): the tests that ran
    get their new times, the others keep theirs."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report):
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session):
        if not self.seconds or hasattr(session.config, "workerinput"):
            return
        table = _durations()
        for nodeid, seconds in self.seconds.items():
            table.pop(nodeid, None)
            if seconds >= 0.5:
                table[nodeid] = round(seconds, 1)
        DURATIONS.write_text(json.dumps(dict(sorted(table.items())), indent=0) + "\n")
