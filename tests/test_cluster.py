"""Mixed clusters: the ``--gpus`` grammar, ``--nodes`` over several groups and ``--cluster`` files."""

from __future__ import annotations

import json

import pytest

from ppplan.core.errors import PpplanError
from ppplan.partitioner.cluster import MAX_GROUPS, PCIE_BW, Cluster, parse_cluster_gpus
from ppplan.partitioner.cluster_file import parse_cluster_file
from ppplan.partitioner.request import MAX_GPUS


def _shape(c: Cluster) -> list[tuple[str, int, int]]:
    return [(g.gpu.name, g.nodes, g.gpus_per_node) for g in c.groups]


@pytest.mark.parametrize(
    ("text", "nodes", "shape", "canonical"),
    [
        ("8xH100", None, [("H100-SXM-80GB", 1, 8)], "8xH100-SXM-80GB"),
        ("4xh100", None, [("H100-SXM-80GB", 1, 4)], "4xH100-SXM-80GB"),
        ("16xH200", 2, [("H200-141GB", 2, 8)], "16xH200-141GB"),
        (
            "8xH100+8xA100-80GB",
            None,
            [("H100-SXM-80GB", 1, 8), ("A100-80GB", 1, 8)],
            "8xH100-SXM-80GB+8xA100-80GB",
        ),
        (
            "8xH100 + 8xA100-80GB",
            2,
            [("H100-SXM-80GB", 1, 8), ("A100-80GB", 1, 8)],
            "8xH100-SXM-80GB+8xA100-80GB",
        ),
        (
            "2x8xH100+1x8xA100-80GB",
            None,
            [("H100-SXM-80GB", 2, 8), ("A100-80GB", 1, 8)],
            "16xH100-SXM-80GB+8xA100-80GB",
        ),
        ("16xH100+8xA100-80GB", 6, [("H100-SXM-80GB", 4, 4), ("A100-80GB", 2, 4)], "4x4xH100-SXM-80GB+2x4xA100-80GB"),
        ("12xH100", 2, [("H100-SXM-80GB", 2, 6)], "2x6xH100-SXM-80GB"),
        ("8xH100+8xH100", None, [("H100-SXM-80GB", 2, 8)], "16xH100-SXM-80GB"),
        ("８×h100＋８xa100-80gb", None, [("H100-SXM-80GB", 1, 8), ("A100-80GB", 1, 8)], "8xH100-SXM-80GB+8xA100-80GB"),
    ],
)
def test_gpus_text(text: str, nodes: int | None, shape: list[tuple[str, int, int]], canonical: str) -> None:
    c = parse_cluster_gpus(text, nodes)
    assert _shape(c) == shape
    assert c.text == canonical
    assert c.count == sum(n * g for _, n, g in shape)
    assert c.nodes == sum(n for _, n, _ in shape)
    assert c.homogeneous == (len(shape) == 1)
    again = parse_cluster_gpus(c.text)  # the canonical spelling round-trips without --nodes
    assert _shape(again) == shape and again.text == canonical


def test_group_figures() -> None:
    c = parse_cluster_gpus("2x8xH100+1x4xA100-80GB")
    h, a = c.groups
    assert (h.count, a.count) == (16, 4)
    assert [h.stages(t) for t in (1, 2, 4, 8)] == [16, 8, 4, 2]
    assert [a.stages(t) for t in (1, 2, 4, 8)] == [4, 2, 1, 0]  # a TP group never spans nodes
    assert h.link_bw == h.gpu.nvlink_bw
    # no network stated: a send between kinds runs at the slower NIC
    assert c.inter_bw == min(h.gpu.network_bw, a.gpu.network_bw) == c.cross_bw(0, 1)
    assert c.cross_bw(0, 0) == h.gpu.network_bw
    assert c.groups_json()[1] == {
        "gpu": "A100-80GB",
        "nodes": 1,
        "gpus_per_node": 4,
        "count": 4,
        "interconnect": "nvlink",
    }


@pytest.mark.parametrize(
    ("text", "nodes", "field", "words"),
    [
        ("", None, "gpus", "joined by '+'"),
        ("8xH100+", None, "gpus", "none empty"),
        ("8xH100++8xA100", None, "gpus", "none empty"),
        ("x", None, "gpus", "COUNTxKIND"),
        ("8xH999", None, "gpus", "unknown GPU kind"),
        ("0x8xH100", None, "gpus", "at least 1"),
        ("12xH100", None, "gpus", "whole 8-GPU nodes"),
        (f"{MAX_GPUS}xH100+8xA100-80GB", None, "gpus", "exceed"),
        ("600x8xH100", None, "gpus", "exceed"),
        ("+".join(["1xH100"] * (MAX_GROUPS + 1)), None, "gpus", "maximum"),
        ("8xH100+8xA100-80GB", 3, "nodes", "split evenly"),
        ("8xH100+4xA100-80GB", 2, "nodes", "whole nodes"),
        ("2x8xH100", 4, "nodes", "the text gives them 2"),
        ("8xH100", 9, "nodes", "at least one GPU per node"),
        ("8xH100", 0, "nodes", "positive integer"),
    ],
)
def test_gpus_text_errors(text: str, nodes: int | None, field: str, words: str) -> None:
    with pytest.raises(PpplanError) as err:
        parse_cluster_gpus(text, nodes)
    assert err.value.field == field
    assert words in str(err.value)


def test_cluster_file() -> None:
    text = json.dumps(
        {
            "nodes": [
                {"gpu": "H100", "count": 8, "interconnect": "nvlink", "host": "h-0"},
                {"gpu": "A100-80GB", "count": 8, "host": "a-0"},
                {"gpu": "H100", "count": 8, "host": "h-1"},
                {"gpu": "L40S", "count": 4, "nodes": 2, "intra_gbps": 20},
            ],
            "network": {"kind": "ib-400g", "gbps": 50},
        }
    )
    c = parse_cluster_file(text)
    assert _shape(c) == [("H100-SXM-80GB", 2, 8), ("A100-80GB", 1, 8), ("L40S", 2, 4)]
    assert c.groups[0].hosts == ("h-0", "h-1")  # identical nodes merge, in file order
    assert c.network == "ib-400g" and c.network_bw == 50e9 == c.cross_bw(0, 2)
    l40 = c.groups[2]
    assert l40.interconnect == "pcie" and l40.link_bw == 20e9  # the catalog's link, the file's bandwidth
    assert c.text == "16xH100-SXM-80GB+8xA100-80GB+2x4xL40S"


def test_cluster_file_defaults() -> None:
    c = parse_cluster_file(
        '{"nodes": [{"gpu": "L40S", "count": 8, "interconnect": "pcie"}], "network": {"kind": "IB-200G"}}'
    )
    assert c.network_bw == 25e9
    assert c.groups[0].link_bw == min(PCIE_BW, c.groups[0].gpu.nvlink_bw)
    c = parse_cluster_file('{"nodes": [{"gpu": "H100", "count": 8}]}')
    assert c.network_bw is None and c.inter_bw == c.groups[0].gpu.network_bw


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ("[1]", "cluster"),
        ("{", "cluster"),
        ("{}", "cluster.nodes"),
        ('{"nodes": []}', "cluster.nodes"),
        ('{"nodes": [{"gpu": "H100", "count": 8}], "extra": 1}', "cluster.extra"),
        ('{"nodes": [3]}', "cluster.nodes[0]"),
        ('{"nodes": [{"count": 8}]}', "cluster.nodes[0].gpu"),
        ('{"nodes": [{"gpu": "H999", "count": 8}]}', "cluster.nodes[0].gpu"),
        ('{"nodes": [{"gpu": "H100"}]}', "cluster.nodes[0].count"),
        ('{"nodes": [{"gpu": "H100", "count": 0}]}', "cluster.nodes[0].count"),
        ('{"nodes": [{"gpu": "H100", "count": 8.5}]}', "cluster.nodes[0].count"),
        ('{"nodes": [{"gpu": "H100", "count": true}]}', "cluster.nodes[0].count"),
        ('{"nodes": [{"gpu": "H100", "count": 8, "nodes": -1}]}', "cluster.nodes[0].nodes"),
        ('{"nodes": [{"gpu": "H100", "count": 8, "interconnect": "smoke"}]}', "cluster.nodes[0].interconnect"),
        ('{"nodes": [{"gpu": "H100", "count": 8, "intra_gbps": 0}]}', "cluster.nodes[0].intra_gbps"),
        ('{"nodes": [{"gpu": "H100", "count": 8, "nodes": 2, "host": "a"}]}', "cluster.nodes[0].host"),
        ('{"nodes": [{"gpu": "H100", "count": 8, "colour": "red"}]}', "cluster.nodes[0].colour"),
        (
            '{"nodes": [{"gpu": "H100", "count": 8, "host": "a"}, {"gpu": "H100", "count": 8, "host": "a"}]}',
            "cluster.nodes",
        ),
        ('{"nodes": [{"gpu": "H100", "count": 8, "host": "a"}, {"gpu": "H100", "count": 8}]}', "cluster.nodes"),
        ('{"nodes": [{"gpu": "H100", "count": 4096}, {"gpu": "H100", "count": 8}]}', "cluster.nodes"),
        ('{"nodes": [{"gpu": "H100", "count": 8}], "network": 5}', "cluster.network"),
        ('{"nodes": [{"gpu": "H100", "count": 8}], "network": {"kind": "carrier-pigeon"}}', "cluster.network.gbps"),
        ('{"nodes": [{"gpu": "H100", "count": 8}], "network": {"gbps": "fast"}}', "cluster.network.gbps"),
        (
            '{"nodes": [{"gpu": "H100", "count": 8}], "network": {"kind": "ib", "gbps": 1, "mtu": 9000}}',
            "cluster.network.mtu",
        ),
        ('{"nodes": [{"gpu": "H\\u0000100", "count": 8}]}', "cluster.nodes.0.gpu"),
    ],
)
def test_cluster_file_errors(data: str, field: str) -> None:
    with pytest.raises(PpplanError) as err:
        parse_cluster_file(data)
    assert err.value.field == field
