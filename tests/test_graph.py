"""The upgrade's subtask graph is the one of the spec's sample."""

import json
from pathlib import Path

import pytest

from arbup.graph import build_subtasks, plan_nodes, subtask_count

SAMPLE = Path(__file__).parent / "data" / "upgrade-group-sample.json"


def sample_subtasks() -> list[dict]:
    return json.loads(SAMPLE.read_text())["response"]["data"]["subtasks"]


def test_two_services_give_the_sample_graph_up_to_ids():
    sample = sample_subtasks()
    ours = [s.to_ocp() for s in build_subtasks(20843, [11, 12], None)]
    assert len(ours) == len(sample) == 18

    # seriesId is unique in both, so it pins the relabelling of ids.
    sample_by_series = {s["seriesId"]: s for s in sample}
    ours_by_series = {s["seriesId"]: s for s in ours}
    assert sorted(sample_by_series) == sorted(ours_by_series) == list(range(18))
    relabel = {sample_by_series[k]["id"]: ours_by_series[k]["id"] for k in range(18)}

    same_fields = [
        "name",
        "description",
        "parallelIdx",
        "timeout",
        "prohibitRollback",
        "prohibitSkip",
        "status",
        "runTime",
        "operation",
        "nodeType",
    ]
    for series_id, theirs in sample_by_series.items():
        mine = ours_by_series[series_id]
        for field in same_fields:
            assert mine[field] == theirs[field], (series_id, field)
        assert sorted(mine["upstreams"]) == sorted(relabel[i] for i in theirs["upstreams"])
        assert sorted(mine["downstreams"]) == sorted(
            relabel[i] for i in theirs["downstreams"]
        )
        assert set(mine) >= set(theirs) - {"startTime", "endTime"}


def test_edges_are_symmetric_and_acyclic_for_many_services():
    for n in (1, 3, 10, 200):
        subtasks = build_subtasks(1, list(range(1, n + 1)))
        assert len(subtasks) == subtask_count(n) == 6 * n + 6
        by_id = {s.id: s for s in subtasks}
        for s in subtasks:
            for d in s.downstreams:
                assert s.id in by_id[d].upstreams
        roots = [s for s in subtasks if not s.upstreams]
        assert [s.name for s in roots] == ["Prepare upgrade arbitration service"] * n
        assert {s.parallel_idx for s in roots} == set(range(n))

        # Kahn's algorithm visits every node only if there is no cycle.
        indegree = {s.id: len(s.upstreams) for s in subtasks}
        frontier = [i for i, d in indegree.items() if d == 0]
        seen = 0
        while frontier:
            current = frontier.pop()
            seen += 1
            for d in by_id[current].downstreams:
                indegree[d] -= 1
                if indegree[d] == 0:
                    frontier.append(d)
        assert seen == len(subtasks)


def test_real_ids_are_used_when_given():
    ids = list(range(500, 518))
    subtasks = build_subtasks(7, [1, 2], ids)
    assert sorted(s.id for s in subtasks) == ids
    assert all(u in ids for s in subtasks for u in s.upstreams)


def test_a_group_without_services_is_refused():
    with pytest.raises(ValueError, match="at least one service"):
        plan_nodes(0)
