"""Policy rules on real runs: mask, block and quarantine, across crashes, in audits and gate summaries."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import textwrap

import pytest

import ledgerflow as lf
from ledgerflow.actors import load_pipeline
from ledgerflow.actors._checkpoints import read_checkpoint
from ledgerflow.events import open_store
from ledgerflow.projections import audit_run


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _run(home, helpers, tmp_path, attribute, run_id, **options):
    locator = helpers.pipeline_locator("policed.py", attribute)
    return lf.start_run(locator, params={"trace": str(tmp_path / "trace.txt")}, run_id=run_id,
                        settings=home.settings, max_in_flight=1, **options)


def _audit(home, run_id):
    async def collect():
        store = await open_store(home.settings.store_url, create=False)
        try:
            return await audit_run(store, run_id)
        finally:
            await store.close()

    return asyncio.run(collect())


def test_mask_hashes_personal_columns(home, helpers, tmp_path):
    result = _run(home, helpers, tmp_path, "masking", "masked")

    assert result.status == "completed", result.message
    columns = [row[1] for row in home.rows("customers", order_by="customer_id")]
    # The emails of customers 1 to 7 in pipelines/policed.py; customer 5 has none.
    emails = ["ann@example.org", "bo@example.org", "cy@example.org", "di@example.org", None,
              "ed@example.org", "fi@example.org"]
    assert columns == [None if email is None else _sha256(email) for email in emails]


def test_mask_drops_forbidden_columns(home, helpers, tmp_path):
    _run(home, helpers, tmp_path, "masking", "dropped")

    with sqlite3.connect(home.settings.warehouse) as conn:
        names = [row[1] for row in conn.execute("PRAGMA table_info(customers)")]
    assert "ssn" not in names
    assert "email" in names


def test_mask_findings_recorded_per_partition(home, helpers, tmp_path):
    _run(home, helpers, tmp_path, "masking", "findings")

    findings = home.of_type("findings", "PolicyViolated")
    by_rule = {(finding.rule, finding.partition): finding for finding in findings}
    assert sorted(by_rule) == [("drop-ssn", "north"), ("drop-ssn", "south"),
                               ("hash-email", "north"), ("hash-email", "south")]
    assert by_rule[("hash-email", "north")].rows == 3
    assert by_rule[("hash-email", "south")].rows == 3  # one email is null
    assert by_rule[("hash-email", "south")].action == "mask"
    assert by_rule[("hash-email", "south")].node == "cleaned"
    assert by_rule[("drop-ssn", "south")].columns == ("ssn",)


def test_block_fails_run_naming_rule(home, helpers, tmp_path):
    result = _run(home, helpers, tmp_path, "blocking", "blocked")

    assert result.status == "failed"
    assert "no-ssn-in-warehouse" in result.message
    state = home.state("blocked")
    assert state.status == "failed"
    assert state.failure.error_type == "PolicyBlocked"
    assert "no-ssn-in-warehouse" in state.failure.message
    blocks = [finding for finding in home.of_type("blocked", "PolicyViolated") if finding.action == "block"]
    assert len(blocks) == 1
    assert blocks[0].rule == "no-ssn-in-warehouse"
    assert blocks[0].rows == 3
    assert home.rows("customers") == []


def test_block_not_retried(home, helpers, tmp_path):
    _run(home, helpers, tmp_path, "blocking", "blocked-once")

    assert home.types("blocked-once").count("NodeAttemptFailed") == 0
    assert helpers.read_trace(tmp_path / "trace.txt")["cleaned[north]"] == 1


def test_quarantine_moves_offending_rows(home, helpers, tmp_path):
    result = _run(home, helpers, tmp_path, "quarantining", "quarantining")

    assert result.status == "completed", result.message
    loaded = home.rows("customers", order_by="customer_id")
    assert [row[0] for row in loaded] == [1, 2, 4, 7]
    findings = {finding.partition: finding for finding in home.of_type("quarantining", "PolicyViolated")
                if finding.rule == "allowed-countries"}
    assert findings["north"].rows == 1
    assert findings["south"].rows == 2
    assert findings["south"].action == "quarantine"


def test_quarantine_rows_checkpointed(home, helpers, tmp_path):
    _run(home, helpers, tmp_path, "quarantining", "quarantine-port")

    part = home.state("quarantine-port").nodes["cleaned"].partitions["south"]
    quarantined = read_checkpoint(part.extra["policy_quarantine"])
    assert sorted(quarantined["customer_id"].to_pylist()) == [5, 6]
    assert set(quarantined["reason"].to_pylist()) == {"policy allowed-countries"}


def test_findings_shown_in_audit(home, helpers, tmp_path):
    _run(home, helpers, tmp_path, "quarantining", "audited")

    findings = _audit(home, "audited")["findings"]
    kinds = sorted(finding["kind"] for finding in findings)
    assert kinds == ["policy allowed-countries: quarantine"] * 2 + ["policy drop-ssn: mask"] * 2
    assert any("2 rows" in finding["detail"] for finding in findings)


def test_findings_in_approval_summary(home, helpers, tmp_path):
    result = _run(home, helpers, tmp_path, "gated", "gated-summary")

    assert result.status == "waiting_for_approval"
    request = home.of_type("gated-summary", "ApprovalRequested")[0]
    findings = request.summary["policy_findings"]
    assert {(finding["rule"], finding["partition"]) for finding in findings} == {
        ("hash-email", "north"), ("hash-email", "south"), ("drop-ssn", "north"), ("drop-ssn", "south")}
    sample = read_checkpoint(request.sample)
    assert "ssn" not in sample.column_names
    assert _sha256("ann@example.org") in sample["email"].to_pylist()


@pytest.mark.slow
@pytest.mark.parametrize("attribute", ["masking", "blocking", "quarantining"])
def test_finding_recorded_once_across_crash(make_home, helpers, tmp_path, attribute):
    reference_home = make_home("reference")
    reference = _run(reference_home, helpers, tmp_path, attribute, "reference")
    reference_events = reference_home.events("reference")
    reference_findings = [(logged.event.rule, logged.event.partition, logged.event.rows)
                          for logged in reference_events if logged.type == "PolicyViolated"]
    finding_seqs = sorted({logged.seq for logged in reference_events if logged.type == "PolicyViolated"})
    assert reference_findings

    for k in finding_seqs:
        home = make_home(f"home-{k}")
        run_id = f"{attribute}-crash-{k}"
        trace = str(tmp_path / f"trace-{k}.txt")

        drive = helpers.drive_to_end(home, helpers.pipeline_locator("policed.py", attribute), run_id=run_id,
                                     params={"trace": trace}, fault_exit_after_seq=k, trace=trace)

        assert drive.crashes == 1, f"k={k}"
        assert drive.result.status == reference.status, f"k={k}: {drive.result.message}"
        findings = [(event.rule, event.partition, event.rows) for event in home.of_type(run_id, "PolicyViolated")]
        assert findings == reference_findings, f"k={k}: a decision was made again after the resume"
        assert home.rows("customers", order_by="customer_id") == \
            reference_home.rows("customers", order_by="customer_id"), f"k={k}"
        for node, partition in drive.completed_at_crash:
            label = f"{node}[{partition}]"
            assert helpers.read_trace(trace)[label] == drive.trace_at_crash[label], f"k={k}: {label} ran again"


def test_rule_for_missing_node_rejected(tmp_path):
    rule = lf.PolicyRule(name="elsewhere", kind="personal", columns=("email",), action="mask", nodes=("nope",))
    pipeline = lf.Pipeline("p", policies=[rule])

    @pipeline.extract
    def source() -> None: ...

    with pytest.raises(lf.PipelineDefinitionError, match="policy rule 'elsewhere' checks node 'nope'"):
        pipeline.check()


# Rule files


def _write(tmp_path, text):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_rule_file_loads(tmp_path):
    path = _write(tmp_path, """
        rules:
          - name: hash-email
            kind: personal
            columns: [email]
            action: mask
          - name: allowed-countries
            kind: allowed_values
            column: country
            allowed: [US, CA]
            action: quarantine
    """)

    rules = lf.load_policy(path)

    assert [rule.name for rule in rules] == ["hash-email", "allowed-countries"]
    assert rules[1].allowed == ("US", "CA")


def test_rule_file_relative_to_pipeline_file(tmp_path, monkeypatch):
    _write(tmp_path, """
        rules:
          - {name: hash-email, kind: personal, columns: [email], action: mask}
    """)
    module = tmp_path / "pipeline_with_rules.py"
    module.write_text('import ledgerflow as lf\npipeline = lf.Pipeline("p", policies="rules.yaml")\n')
    monkeypatch.chdir("/")

    pipeline = load_pipeline(f"{module}:pipeline")

    assert [rule.name for rule in pipeline.policies] == ["hash-email"]


def test_rule_file_pipeline_accepts_path(tmp_path):
    path = _write(tmp_path, """
        rules:
          - {name: hash-email, kind: personal, columns: [email], action: mask}
    """)

    pipeline = lf.Pipeline("p", policies=str(path))

    assert [rule.name for rule in pipeline.policies] == ["hash-email"]


@pytest.mark.parametrize(("text", "message"), [
    ("""
        rules:
          - {name: hash-email, kind: personal, columns: [email], action: erase}
     """, r"rule 'hash-email' \(rules\[0\]\) in .*rules.yaml: field 'action': Input should be"),
    ("""
        rules:
          - {name: ok, kind: personal, columns: [a], action: mask}
          - {name: countries, kind: allowed_values, column: country, action: quarantine}
     """, r"rule 'countries' \(rules\[1\]\).*needs column: NAME and allowed"),
    ("""
        rules:
          - {kind: personal, columns: [a], action: mask}
     """, r"rules\[0\] in .*: field 'name': Field required"),
    ("""
        rules:
          - {name: typo, kind: personal, colums: [a], action: mask}
     """, r"rule 'typo' .*field 'colums': Extra inputs are not permitted"),
    ("""
        rules:
          - {name: wrong, kind: forbidden, columns: [a], action: quarantine}
     """, r"rule 'wrong' .*a forbidden rule takes action mask or block, not 'quarantine'"),
    ("""
        rules:
          - {name: twice, kind: forbidden, columns: [a], action: block}
          - {name: twice, kind: forbidden, columns: [b], action: block}
     """, r"duplicate policy rule name 'twice'"),
    ("rules: {name: x}\n", r"invalid policy file .*field 'rules': Input should be a valid list"),
    ("rules: [unclosed\n", r"invalid policy file .*not valid YAML"),
])
def test_rule_file_malformed(tmp_path, text, message):
    path = _write(tmp_path, text)

    with pytest.raises(lf.PolicyConfigurationError, match=message):
        lf.load_policy(path)


def test_rule_file_missing(tmp_path):
    with pytest.raises(lf.PolicyConfigurationError, match="cannot read policy file .*absent.yaml"):
        lf.load_policy(tmp_path / "absent.yaml")
