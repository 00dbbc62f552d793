#!/usr/bin/env python3
"""Writes the Grafana dashboards of the compose demo, compose/grafana/dashboards/*.json.

The JSON files are generated from the panel lists below so that every panel
has the same datasource, legend and layout conventions; edit this file and
run it (`python3 scripts/grafana-dashboards.py`), then
`cargo test --test prometheus`, which checks that every metric a dashboard
names is one a running node exports and that every expression parses.

Conventions: the datasource is the provisioned Prometheus (uid
"prometheus"); every selector filters on the `$instance` variable (the
scrape target, one per node); counters are shown as per-second rates over
`$__rate_interval`; latencies are p50/p90/p99 from histogram buckets.
"""

import json
import pathlib

DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
OUT = pathlib.Path(__file__).resolve().parent.parent / "compose" / "grafana" / "dashboards"
RATE = "[$__rate_interval]"
# Label matchers for failed requests: TCP answers an error code, HTTP a status.
TCP_FAILED = 'status!="ok"'
HTTP_5XX = 'status=~"5.."'
HTTP_NOT_2XX = 'status!~"2.."'


def sel(metric, labels=""):
    """`metric{instance=~"$instance",labels}`."""
    extra = f",{labels}" if labels else ""
    return f'{metric}{{instance=~"$instance"{extra}}}'


def rate(metric, labels=""):
    return f"rate({sel(metric, labels)}{RATE})"


def quantile(q, metric, by, labels=""):
    """The q-quantile of a histogram's buckets, per `by` labels."""
    return f"histogram_quantile({q}, sum by (le, {by}) ({rate(metric + '_bucket', labels)}))"


def target(expr, legend="__auto"):
    return {"expr": expr, "legendFormat": legend}


def timeseries(title, description, targets, unit="short", w=12, h=8, stack=False, min_zero=True):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if min_zero:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
        "_size": (w, h),
    }


def stat(title, description, targets, unit="short", w=6, h=4, mappings=None, steps=None):
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "mappings": mappings or [],
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": steps or [{"color": "green", "value": None}],
                },
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
        },
        "targets": targets,
        "_size": (w, h),
    }


def row(title, panels, collapsed=False):
    return {"type": "row", "title": title, "collapsed": collapsed, "_children": panels}


def value_map(mapping):
    """Value mappings for a 0/1 gauge: {value: (text, color)}."""
    return [
        {
            "type": "value",
            "options": {str(v): {"text": text, "color": color, "index": i} for i, (v, (text, color)) in enumerate(mapping.items())},
        }
    ]


def layout(rows):
    """Places rows and their panels on Grafana's 24-column grid, numbering them."""
    panels = []
    next_id = 1
    y = 0

    def place(children, y):
        nonlocal next_id
        x = 0
        row_height = 0
        placed = []
        for panel in children:
            w, h = panel.pop("_size")
            if x + w > 24:
                x = 0
                y += row_height
                row_height = 0
            panel["id"] = next_id
            next_id += 1
            panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            panel["datasource"] = DATASOURCE
            for ref, t in zip("ABCDEFGH", panel["targets"]):
                t.update({"refId": ref, "datasource": DATASOURCE, "editorMode": "code", "range": True})
            placed.append(panel)
            x += w
            row_height = max(row_height, h)
        return placed, y + row_height

    for r in rows:
        children = r.pop("_children")
        r["id"] = next_id
        next_id += 1
        r["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}
        y += 1
        if r["collapsed"]:
            # A collapsed row carries its panels; they take no room until opened.
            r["panels"], _ = place(children, y)
            panels.append(r)
        else:
            r["panels"] = []
            panels.append(r)
            placed, y = place(children, y)
            panels.extend(placed)
    return panels


def dashboard(uid, title, description, rows, annotations=()):
    instance_query = "label_values(harmonydb_raft_term, instance)"
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["harmonydb"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [
            {
                "type": "dashboards",
                "title": "HarmonyDB",
                "tags": ["harmonydb"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "targetBlank": False,
                "icon": "external link",
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                *annotations,
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "instance",
                    "label": "Node",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": instance_query,
                    "query": {
                        "qryType": 1,
                        "query": instance_query,
                        "refId": "PrometheusVariableQueryEditor-VariableQuery",
                    },
                    "refresh": 2,
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "options": [],
                    "sort": 1,
                    "hide": 0,
                    "skipUrlSync": False,
                    "regex": "",
                }
            ]
        },
        "panels": layout(rows),
    }


LEADER_CHANGES = {
    "name": "Leader changes",
    "datasource": DATASOURCE,
    "enable": True,
    "hide": False,
    "iconColor": "orange",
    "expr": f"increase({sel('harmonydb_raft_leader_changes_total')}[$__rate_interval]) > 0",
    "step": "5s",
    "titleFormat": "New leader seen",
    "textFormat": "{{instance}}",
}

cluster_health = dashboard(
    "harmonydb-cluster-health",
    "HarmonyDB / Cluster health",
    "Leadership, elections, replication progress and the links between nodes.",
    [
        row("Leadership", [
            stat("Leader", "Which node leads now (harmonydb_raft_is_leader). Exactly one node should say leader.",
                 [target(sel("harmonydb_raft_is_leader"), "{{instance}}")],
                 w=8, mappings=value_map({1: ("leader", "green"), 0: ("follower", "blue")})),
            stat("Knows a leader", "Whether each node knows a leader. 'none' on a node for more than an election timeout means it is cut off or an election keeps failing.",
                 [target(sel("harmonydb_raft_has_leader"), "{{instance}}")],
                 w=8, mappings=value_map({1: ("yes", "green"), 0: ("none", "red")})),
            stat("Term", "Highest Raft term among the nodes. It grows by one per election; a term that keeps climbing means elections that do not settle.",
                 [target(f"max({sel('harmonydb_raft_term')})", "term")], w=4),
            stat("Nodes scraped", "Nodes Prometheus reaches now (up == 1).",
                 [target('sum(up{job="harmonydb", instance=~"$instance"})', "up")], w=4,
                 steps=[{"color": "red", "value": None}, {"color": "orange", "value": 2}, {"color": "green", "value": 3}]),
            timeseries("Leader by node", "1 while a node leads. A healthy cluster shows one flat line at 1.",
                       [target(sel("harmonydb_raft_is_leader"), "{{instance}}")], w=8),
            timeseries("Term by node", "Each node's current term. Nodes that agree on a leader are on the same term.",
                       [target(sel("harmonydb_raft_term"), "{{instance}}")], w=8),
            timeseries("Leader changes /s", "How often each node saw a new leader (itself included).",
                       [target(f"sum by (instance) ({rate('harmonydb_raft_leader_changes_total')})", "{{instance}}")], unit="ops", w=8),
            timeseries("Elections started and won /s", "Elections a node started as candidate, and those it won. Started without won means split votes or a node that cannot reach a majority.",
                       [target(f"sum by (instance) ({rate('harmonydb_raft_elections_started_total')})", "{{instance}} started"),
                        target(f"sum by (instance) ({rate('harmonydb_raft_elections_won_total')})", "{{instance}} won")],
                       unit="ops", w=24),
        ]),
        row("Membership", [
            timeseries("Voters and learners by node", "Members of the configuration each node has in force. Nodes disagree for a moment during a change; a learner that stays a learner has not caught up (or nobody promoted it).",
                       [target(sel("harmonydb_raft_voters"), "{{instance}} voters"),
                        target(sel("harmonydb_raft_learners"), "{{instance}} learners")], w=8),
            timeseries("Joint configuration", "1 while a change of voters is half done (old and new voters both decide). It should last a round trip or two; stuck at 1 means the new voters can't form a majority.",
                       [target(sel("harmonydb_raft_joint_configuration"), "{{instance}}")], w=8),
            timeseries("Membership changes and removed nodes", "Changes completed by the leader (per second), and nodes that know they were removed (1): stop those and delete their data.",
                       [target(f"sum by (instance) ({rate('harmonydb_raft_membership_changes_total')})", "{{instance}} changes/s"),
                        target(sel("harmonydb_raft_removed"), "{{instance}} removed")], w=8),
        ]),
        row("Replication", [
            timeseries("Commit index and applied index", "The highest index each node knows committed, and the highest it has applied to its state.",
                       [target(sel("harmonydb_raft_commit_index"), "{{instance}} commit"),
                        target(sel("harmonydb_raft_applied_index"), "{{instance}} applied")], min_zero=False),
            timeseries("Commit lag (entries)", "max(commit index) − applied index: how many committed entries a node has still to apply. A follower cut off from the leader falls behind here.",
                       [target(f"scalar(max(harmonydb_raft_commit_index)) - {sel('harmonydb_raft_applied_index')}", "{{instance}}")]),
            timeseries("Proposals pending", "Writes the leader has proposed and not yet answered.",
                       [target(sel("harmonydb_raft_proposals_pending"), "{{instance}}")], w=8),
            timeseries("Proposals committed and failed /s", "Writes committed, and proposals dropped (leadership lost, shutting down).",
                       [target(f"sum by (instance) ({rate('harmonydb_raft_proposals_committed_total')})", "{{instance}} committed"),
                        target(f"sum by (instance) ({rate('harmonydb_raft_proposals_failed_total')})", "{{instance}} failed")],
                       unit="ops", w=8),
            timeseries("Append and commit latency p99", "Raft append (leader's log write) and commit (proposal to commit) latency, p99.",
                       [target(quantile(0.99, "harmonydb_raft_append_duration_seconds", "instance"), "{{instance}} append"),
                        target(quantile(0.99, "harmonydb_raft_commit_duration_seconds", "instance"), "{{instance}} commit")],
                       unit="s", w=8),
        ]),
        row("Links between nodes", [
            timeseries("Peer round trip p99", "Leader to follower round trip of an AppendEntries, p99, per follower.",
                       [target(quantile(0.99, "harmonydb_raft_peer_round_trip_seconds", "instance, peer"), "{{instance}} → {{peer}}")],
                       unit="s", w=8),
            timeseries("Transport messages dropped /s", "Raft messages a node could not deliver to a peer (link down, queue full, fault injection).",
                       [target(f"sum by (instance, peer) ({rate('harmonydb_transport_messages_dropped_total')})", "{{instance}} → {{peer}}")],
                       unit="ops", w=8),
            timeseries("Transport messages sent and received /s", "Raft messages per peer in each direction.",
                       [target(f"sum by (instance, peer) ({rate('harmonydb_transport_messages_sent_total')})", "{{instance}} → {{peer}} sent"),
                        target(f"sum by (instance, peer) ({rate('harmonydb_transport_messages_received_total')})", "{{instance}} ← {{peer}} received")],
                       unit="ops", w=8),
        ]),
    ],
    annotations=[LEADER_CHANGES],
)

performance = dashboard(
    "harmonydb-performance",
    "HarmonyDB / Performance",
    "Throughput, latency quantiles, in-flight requests and bytes, by operation (TCP) and route (HTTP); the WAL's sync latency and group commit.",
    [
        row("Throughput", [
            stat("Client requests /s", "HTTP and TCP requests answered per second, all nodes.",
                 [target(f"(sum({rate('harmonydb_http_requests_total')}) or vector(0)) + (sum({rate('harmonydb_tcp_requests_total')}) or vector(0))", "requests/s")],
                 unit="reqps", w=6),
            stat("Errors /s", "Requests answered with an error (TCP status other than ok, HTTP 5xx).",
                 [target(f"(sum({rate('harmonydb_tcp_requests_total', TCP_FAILED)}) or vector(0)) + (sum({rate('harmonydb_http_requests_total', HTTP_5XX)}) or vector(0))", "errors/s")],
                 unit="reqps", w=6, steps=[{"color": "green", "value": None}, {"color": "red", "value": 0.1}]),
            stat("Writes forwarded to the leader /s", "Client requests followers forwarded to the leader.",
                 [target(f"sum({rate('harmonydb_api_forwarded_total')}) or vector(0)", "forwarded/s")], unit="reqps", w=6),
            stat("Open TCP connections", "Client and peer connections open now, all nodes.",
                 [target(f"sum({sel('harmonydb_tcp_connections')})", "connections")], w=6),
            timeseries("TCP requests /s by operation", "TCP requests answered per second, by operation (get, put, delete, scan, ...).",
                       [target(f"sum by (op) ({rate('harmonydb_tcp_requests_total')})", "{{op}}")], unit="reqps"),
            timeseries("HTTP requests /s by route", "HTTP requests answered per second, by route pattern and method.",
                       [target(f"sum by (route, method) ({rate('harmonydb_http_requests_total')})", "{{method}} {{route}}")], unit="reqps"),
            timeseries("Errors /s by operation and status", "Requests answered with an error, by operation or route and error code or HTTP status.",
                       [target(f"sum by (op, status) ({rate('harmonydb_tcp_requests_total', TCP_FAILED)})", "tcp {{op}} {{status}}"),
                        target(f"sum by (route, status) ({rate('harmonydb_http_requests_total', HTTP_NOT_2XX)})", "http {{route}} {{status}}")],
                       unit="reqps", w=24),
        ]),
        row("Latency", [
            timeseries("TCP latency by operation", "Time from a request's decoding to its answer, p50, p90 and p99, by operation.",
                       [target(quantile(0.5, "harmonydb_tcp_request_duration_seconds", "op"), "{{op}} p50"),
                        target(quantile(0.9, "harmonydb_tcp_request_duration_seconds", "op"), "{{op}} p90"),
                        target(quantile(0.99, "harmonydb_tcp_request_duration_seconds", "op"), "{{op}} p99")], unit="s"),
            timeseries("HTTP latency by route", "Time from a request's arrival to its answer, p50, p90 and p99, by route and method.",
                       [target(quantile(0.5, "harmonydb_http_request_duration_seconds", "route, method"), "{{method}} {{route}} p50"),
                        target(quantile(0.9, "harmonydb_http_request_duration_seconds", "route, method"), "{{method}} {{route}} p90"),
                        target(quantile(0.99, "harmonydb_http_request_duration_seconds", "route, method"), "{{method}} {{route}} p99")], unit="s"),
            timeseries("Requests in flight", "Requests being handled now, by node and API, and the open TCP connections.",
                       [target(sel("harmonydb_http_requests_in_flight"), "{{instance}} http"),
                        target(sel("harmonydb_tcp_requests_in_flight"), "{{instance}} tcp"),
                        target(sel("harmonydb_tcp_connections"), "{{instance}} tcp connections")]),
            timeseries("Bytes in and out /s", "Request and answer bytes, by API.",
                       [target(f"sum by (instance) ({rate('harmonydb_http_received_bytes_total')})", "{{instance}} http in"),
                        target(f"sum by (instance) ({rate('harmonydb_http_sent_bytes_total')})", "{{instance}} http out"),
                        target(f"sum by (instance) ({rate('harmonydb_tcp_received_bytes_total')})", "{{instance}} tcp in"),
                        target(f"sum by (instance) ({rate('harmonydb_tcp_sent_bytes_total')})", "{{instance}} tcp out")],
                       unit="Bps"),
        ]),
        row("Write path", [
            timeseries("WAL fsync latency", "Time one WAL sync takes, p50 and p99. Every acknowledged write waits for one.",
                       [target(quantile(0.5, "harmonydb_wal_fsync_duration_seconds", "instance"), "{{instance}} p50"),
                        target(quantile(0.99, "harmonydb_wal_fsync_duration_seconds", "instance"), "{{instance}} p99")],
                       unit="s", w=8),
            timeseries("WAL group commit batch size", "Records made durable by one sync: mean and p99. Larger batches under load are group commit at work.",
                       [target(f"sum by (instance) ({rate('harmonydb_wal_batch_size_records_sum')}) / sum by (instance) ({rate('harmonydb_wal_batch_size_records_count')})", "{{instance}} mean"),
                        target(quantile(0.99, "harmonydb_wal_batch_size_records", "instance"), "{{instance}} p99")],
                       w=8),
            timeseries("Refused for load /s", "Requests refused because too many were in the replica, and TCP connections refused over the limit.",
                       [target(f"sum by (instance) ({rate('harmonydb_kv_overloaded_total')})", "{{instance}} overloaded"),
                        target(f"sum by (instance) ({rate('harmonydb_tcp_connections_refused_total')})", "{{instance}} connections refused"),
                        target(f"sum by (instance, code) ({rate('harmonydb_tcp_protocol_errors_total')})", "{{instance}} protocol error {{code}}")],
                       unit="ops", w=8),
        ]),
    ],
)

storage = dashboard(
    "harmonydb-storage",
    "HarmonyDB / Storage",
    "Buffer pool, checkpoints, the B+ tree, the WAL and Raft snapshots.",
    [
        row("Buffer pool", [
            stat("Hit ratio", "Page fetches served from a frame, over the last interval, all nodes.",
                 [target(f"sum({rate('harmonydb_storage_buffer_pool_hits_total')}) / (sum({rate('harmonydb_storage_buffer_pool_hits_total')}) + sum({rate('harmonydb_storage_buffer_pool_misses_total')}))", "hit ratio")],
                 unit="percentunit", w=6, h=8,
                 steps=[{"color": "red", "value": None}, {"color": "orange", "value": 0.8}, {"color": "green", "value": 0.95}]),
            timeseries("Hits, misses and evictions /s", "Page fetches served from memory (hits), read from the page file (misses), and frames given to another page (evictions).",
                       [target(f"sum by (instance) ({rate('harmonydb_storage_buffer_pool_hits_total')})", "{{instance}} hits"),
                        target(f"sum by (instance) ({rate('harmonydb_storage_buffer_pool_misses_total')})", "{{instance}} misses"),
                        target(f"sum by (instance) ({rate('harmonydb_storage_buffer_pool_evictions_total')})", "{{instance}} evictions")],
                       unit="ops", w=9),
            timeseries("Hit ratio by node", "hits / (hits + misses) per node.",
                       [target(f"sum by (instance) ({rate('harmonydb_storage_buffer_pool_hits_total')}) / (sum by (instance) ({rate('harmonydb_storage_buffer_pool_hits_total')}) + sum by (instance) ({rate('harmonydb_storage_buffer_pool_misses_total')}))", "{{instance}}")],
                       unit="percentunit", w=9),
            timeseries("Frames: total, dirty, pinned", "Frames in the pool, frames holding changes not yet checkpointed (never evicted), and frames in use now.",
                       [target(sel("harmonydb_storage_buffer_pool_frames"), "{{instance}} frames"),
                        target(sel("harmonydb_storage_buffer_pool_dirty_frames"), "{{instance}} dirty"),
                        target(sel("harmonydb_storage_buffer_pool_pinned_frames"), "{{instance}} pinned")]),
            timeseries("Memory pressure /s", "Times the pool ran short of clean frames and asked for an early checkpoint.",
                       [target(f"sum by (instance) ({rate('harmonydb_storage_memory_pressure_total')})", "{{instance}}")], unit="ops"),
        ]),
        row("Checkpoints", [
            timeseries("Checkpoint duration", "Time a checkpoint takes (double-write file, pages in place, meta page), p50 and p99.",
                       [target(quantile(0.5, "harmonydb_storage_checkpoint_duration_seconds", "instance"), "{{instance}} p50"),
                        target(quantile(0.99, "harmonydb_storage_checkpoint_duration_seconds", "instance"), "{{instance}} p99")],
                       unit="s", w=8),
            timeseries("Checkpoints and pages written /s", "Checkpoints finished, and pages they wrote.",
                       [target(f"sum by (instance) ({rate('harmonydb_storage_checkpoints_total')})", "{{instance}} checkpoints"),
                        target(f"sum by (instance) ({rate('harmonydb_storage_checkpoint_pages_total')})", "{{instance}} pages")],
                       unit="ops", w=8),
            timeseries("Checkpoint failures", "Checkpoints that failed since the node started; their pages stay dirty for the next one.",
                       [target(sel("harmonydb_storage_checkpoint_failures_total"), "{{instance}}")], w=8),
        ]),
        row("B+ tree", [
            timeseries("Height", "Levels of the B+ tree, leaves included.",
                       [target(sel("harmonydb_storage_btree_height"), "{{instance}}")], w=8),
            timeseries("Splits, merges and redistributions /s", "Structure changes: node splits on insert, merges and redistributions on delete.",
                       [target(f"sum by (instance) ({rate('harmonydb_storage_btree_splits_total')})", "{{instance}} splits"),
                        target(f"sum by (instance) ({rate('harmonydb_storage_btree_merges_total')})", "{{instance}} merges"),
                        target(f"sum by (instance) ({rate('harmonydb_storage_btree_redistributions_total')})", "{{instance}} redistributions")],
                       unit="ops", w=8),
            timeseries("Keys", "Keys in each node's state.",
                       [target(sel("harmonydb_kv_keys"), "{{instance}}")], w=8),
        ]),
        row("WAL", [
            timeseries("WAL bytes written /s", "Bytes appended to the write-ahead log (also the Raft log).",
                       [target(f"sum by (instance) ({rate('harmonydb_wal_write_bytes_total')})", "{{instance}}")], unit="Bps", w=8),
            timeseries("WAL segments", "Segment files on disk, and new ones created by roll-over. Compaction deletes segments below the last checkpoint, so this stays bounded.",
                       [target(sel("harmonydb_wal_segments"), "{{instance}} on disk"),
                        target(f"sum by (instance) (increase({sel('harmonydb_wal_segments_created_total')}[$__rate_interval]))", "{{instance}} created")],
                       w=8),
            timeseries("WAL failures", "WAL write or sync failures since start; after one the node refuses writes until restarted.",
                       [target(sel("harmonydb_wal_failures_total"), "{{instance}}")], w=8),
        ]),
        row("Snapshots", [
            timeseries("Snapshots sent and received", "Raft snapshots a leader streamed to followers too far behind, and those a follower installed.",
                       [target(f"sum by (instance) (increase({sel('harmonydb_raft_snapshots_sent_total')}[$__rate_interval]))", "{{instance}} sent"),
                        target(f"sum by (instance) (increase({sel('harmonydb_raft_snapshots_received_total')}[$__rate_interval]))", "{{instance}} received")],
                       w=8),
            timeseries("Snapshot bytes received /s", "Snapshot data a follower is receiving.",
                       [target(f"sum by (instance) ({rate('harmonydb_raft_snapshot_bytes_received_total')})", "{{instance}}")], unit="Bps", w=8),
            timeseries("Snapshot index and applied index", "The log index of the last snapshot (the log is compacted below it), beside the applied index.",
                       [target(sel("harmonydb_raft_snapshot_index"), "{{instance}} snapshot"),
                        target(sel("harmonydb_raft_applied_index"), "{{instance}} applied")], w=8),
        ]),
    ],
)

system = dashboard(
    "harmonydb-system",
    "HarmonyDB / System",
    "The node process (CPU, memory, files, threads) and its actors (mailbox depth and handling time).",
    [
        row("Process", [
            stat("Uptime", "Time since each node's process started.",
                 [target(f"time() - {sel('harmonydb_process_start_time_seconds')}", "{{instance}}")], unit="s", w=12),
            stat("File descriptors used", "Open file descriptors as a share of the limit, highest node.",
                 [target(f"max({sel('harmonydb_process_open_fds')} / {sel('harmonydb_process_max_fds')})", "used")],
                 unit="percentunit", w=12,
                 steps=[{"color": "green", "value": None}, {"color": "orange", "value": 0.7}, {"color": "red", "value": 0.9}]),
            timeseries("CPU", "CPU time used per second, user and system together (1 = one core busy).",
                       [target(rate("harmonydb_process_cpu_seconds_total"), "{{instance}}")], unit="short"),
            timeseries("Memory", "Resident set size and virtual memory of each node.",
                       [target(sel("harmonydb_process_resident_memory_bytes"), "{{instance}} resident"),
                        target(sel("harmonydb_process_virtual_memory_bytes"), "{{instance}} virtual")], unit="bytes"),
            timeseries("Open files vs limit", "Open file descriptors (WAL segments, page file, sockets) and the process limit.",
                       [target(sel("harmonydb_process_open_fds"), "{{instance}} open"),
                        target(sel("harmonydb_process_max_fds"), "{{instance}} max")]),
            timeseries("Threads", "OS threads of each node process.",
                       [target(sel("harmonydb_process_threads"), "{{instance}}")]),
        ]),
        row("Actors", [
            timeseries("Mailbox depth by actor", "Messages waiting in each actor's mailbox. A depth that keeps growing is an actor that cannot keep up.",
                       [target(f"sum by (instance, actor) ({sel('harmonydb_actor_mailbox_depth')})", "{{instance}} {{actor}}")]),
            timeseries("Messages handled /s by actor", "Messages each actor handled per second.",
                       [target(f"sum by (actor) ({rate('harmonydb_actor_handling_duration_seconds_count')})", "{{actor}}")], unit="ops"),
            timeseries("Handling time p99 by actor and message", "Time an actor spends handling one message, p99, by actor and message type.",
                       [target(quantile(0.99, "harmonydb_actor_handling_duration_seconds", "actor, message"), "{{actor}} {{message}}")],
                       unit="s", w=24, h=10),
        ]),
        row("Actors by message type", [
            timeseries("Mailbox depth by actor and message", "Messages waiting, by actor and message type.",
                       [target(f"sum by (actor, message) ({sel('harmonydb_actor_mailbox_depth')})", "{{actor}} {{message}}")]),
            timeseries("Handling time p50 by actor and message", "Time an actor spends handling one message, median.",
                       [target(quantile(0.5, "harmonydb_actor_handling_duration_seconds", "actor, message"), "{{actor}} {{message}}")], unit="s"),
        ], collapsed=True),
    ],
)


def main():
    for name, board in [
        ("cluster-health", cluster_health),
        ("performance", performance),
        ("storage", storage),
        ("system", system),
    ]:
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
